"""The resource of a job: where and how it runs, chosen environment variables, secrets redacted.

Attributes (OpenTelemetry semantic conventions): ``host.name``, ``process.pid``,
``process.parent_pid``, ``process.executable.path``, ``process.command_line`` (secret-looking
option values and URL passwords masked), ``process.runtime.name`` /
``version`` / ``description``, ``process.owner``, ``container.id`` (only inside a container) and
``process.environment_variable.<NAME>`` for each name matching ``TASKTREE_CAPTURE_ENV``.
Resolution: explicit arguments beat ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, which beat
what is detected here.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import platform
import re
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from tasktree.instrumentation import _settings
from tasktree.instrumentation.environment_variables import (
    TASKTREE_CAPTURE_ENV,
    TASKTREE_REDACT_ENV,
)

REDACTED = "[redacted]"
ENV_ATTRIBUTE_PREFIX = "process.environment_variable."

# A name containing any of these words (case-insensitive) has its value redacted: PASS covers
# PASSWORD, PASSWD and PASSPHRASE; HEADERS is OTEL_EXPORTER_OTLP_HEADERS, where an ingest token
# goes; a webhook URL is its own secret.
SECRET_WORDS = (
    "TOKEN", "SECRET", "PASS", "PWD", "KEY", "CREDENTIAL", "AUTH", "COOKIE", "SESSION",
    "PRIVATE", "SIGNATURE", "DSN", "CERT", "HEADERS", "WEBHOOK", "BEARER", "JWT",
)  # fmt: skip
# Secret only as a whole word of the name (GITHUB_PAT, not PATH).
SECRET_NAME_PARTS = ("PAT", "SIG")
# Holding a directory, not a password.
_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
_SECRET_WORD = "|".join(SECRET_WORDS)
_SECRET_NAME = re.compile(
    rf"{_SECRET_WORD}|(?:^|_)(?:{'|'.join(SECRET_NAME_PARTS)})(?:_|$)", re.IGNORECASE
)
# scheme://user:password@host (the password may hold '@': the host follows the last one)
_URL_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#\s]*)")
# ?password=xyz&token=xyz (URL query parameters)
_SECRET_QUERY = re.compile(
    rf"(?P<key>[?&;][^=&#\s]*(?:{_SECRET_WORD}|SIG)[^=&#\s]*=)[^&#\s]*", re.IGNORECASE
)
# A secret-looking option's name: --password, -api-key; never --no-auth (a flag, no value).
_SECRET_OPTION_NAME = rf"(?:--|-(?!-))(?!no-)[\w-]*(?:{_SECRET_WORD})[\w-]*"
# --password=xyz or --api-key xyz (then the next argument is the value).
_SECRET_OPTION = re.compile(rf"^(?P<opt>{_SECRET_OPTION_NAME})(?P<eq>=)?", re.IGNORECASE)
# PASSWORD=xyz as an argument (env, make, docker -e)
_SECRET_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=")
# Inside a script (sh -c '...'): an option or assignment with its value, to the next space.
_SECRET_IN_SCRIPT = re.compile(
    rf"(?P<head>(?<![\w-]){_SECRET_OPTION_NAME}(?:=|\s+)"
    rf"|\b\w*(?:{_SECRET_WORD})\w*=)(?P<value>[^\s;&|]+)",
    re.IGNORECASE,
)
# An HTTP credential in a script (curl -H "Authorization: Bearer xyz").
_AUTHORIZATION = re.compile(r"\b(?P<head>(?:Bearer|Basic|Token)\s+)[\w.~+/=-]+", re.IGNORECASE)
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_MOUNTINFO_CONTAINER_ID = re.compile(r"/(?:docker|containers|sandboxes)/([0-9a-f]{64})/")


def is_secret_name(name: str, extra_patterns: Sequence[str] = ()) -> bool:
    """True when the variable ``name`` looks like it holds a secret (or matches an extra glob,
    case-insensitively: a redaction that misses for a letter's case fails open)."""
    if name.upper() in _NOT_SECRET:
        return False
    return bool(_SECRET_NAME.search(name)) or any(
        fnmatch.fnmatch(name.upper(), p.upper()) for p in extra_patterns
    )


def mask_url_passwords(value: str) -> str:
    """``postgresql://user:secret@db/x`` → ``postgresql://user:[redacted]@db/x``, and the values
    of secret-looking query parameters (``?password=``, ``&token=``, ``&sig=``) likewise."""
    return _SECRET_QUERY.sub(
        lambda m: m.group("key") + REDACTED, _URL_AUTHORITY.sub(_mask_userinfo, value)
    )


def _mask_userinfo(match: re.Match) -> str:
    authority = match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return match.group(0)
    return f"{match.group('scheme')}{user}:{REDACTED}@{host}"


def captured_environment(
    patterns: str | list[str] | None = None,
    redact: str | list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Resource attributes for the environment variables whose names match ``patterns``.

    ``patterns`` / ``redact`` default to ``TASKTREE_CAPTURE_ENV`` / ``TASKTREE_REDACT_ENV``
    (comma-separated globs).  Secret-looking values are replaced by ``[redacted]``.
    """
    wanted = _settings.patterns(patterns, TASKTREE_CAPTURE_ENV)
    if not wanted:
        return {}
    extra = _settings.patterns(redact, TASKTREE_REDACT_ENV)
    environ = os.environ if environ is None else environ
    captured = {}
    for name in sorted(environ):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted):
            value = environ[name]
            value = REDACTED if is_secret_name(name, extra) else mask_url_passwords(value)
            captured[ENV_ATTRIBUTE_PREFIX + name] = value
    return captured


def redacted_args(args: list[str]) -> list[str]:
    """Command arguments with secrets masked: the values of secret-looking options
    (``--password=x``, ``--api-key x``) and assignments (``DB_PASSWORD=x``), URL passwords and
    secret query parameters, and the same inside scripts (``sh -c '...'``)."""
    result, hide_next = [], False
    for arg in args:
        if hide_next:
            result.append(REDACTED)
            hide_next = False
            continue
        option = _SECRET_OPTION.match(arg)
        assignment = _SECRET_ASSIGNMENT.match(arg)
        if option and option.group("eq"):
            result.append(option.group("opt") + "=" + REDACTED)
        elif option:
            hide_next = True
            result.append(arg)
        elif assignment and is_secret_name(assignment.group("name")):
            result.append(assignment.group(0) + REDACTED)
        elif any(space in arg for space in " \t\n"):  # a script: sh -c, python -c, ssh host '...'
            masked = _SECRET_IN_SCRIPT.sub(lambda m: m.group("head") + REDACTED, arg)
            masked = _AUTHORIZATION.sub(lambda m: m.group("head") + REDACTED, masked)
            result.append(mask_url_passwords(masked))
        else:
            result.append(mask_url_passwords(arg))
    return result


def container_id(
    cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> str | None:
    """The id of the container this process runs in (cgroup v1, else v2 mountinfo), or None."""
    try:
        for line in Path(cgroup).read_text().splitlines():
            found = _CONTAINER_ID.findall(line.rsplit(":", 1)[-1])
            if found:
                return found[-1]
    except OSError:
        pass
    try:
        for line in Path(mountinfo).read_text().splitlines():
            match = _MOUNTINFO_CONTAINER_ID.search(line)
            if match:
                return match.group(1)
    except OSError:
        pass
    return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in many containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def default_service_name() -> str:
    """The job name when nothing else names it: the main module or script name."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name not in ("__main__", "__mp_main__"):
        return spec.name.removesuffix(".__main__")
    arg0 = sys.argv[0] if sys.argv else ""
    if arg0 and arg0 not in ("-c", "-"):
        return Path(arg0).stem or "unknown_service:python"
    return "unknown_service:python"


def process_attributes() -> dict:
    """What is detected about this process and its host."""
    args = redacted_args(list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]))
    attributes = {
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "process.parent_pid": os.getppid(),
        "process.executable.path": sys.executable,
        "process.command_line": shlex.join(args),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "process.runtime.description": sys.version,
        "process.owner": _user(),
    }
    cid = container_id()
    if cid:
        attributes["container.id"] = cid
    return attributes


def build_resource(
    service_name: str | None = None,
    attributes: Mapping | None = None,
    capture_env: str | list[str] | None = None,
) -> Resource:
    """The job's resource: detected attributes < ``OTEL_*`` variables < explicit arguments."""
    detected = {**process_attributes(), **captured_environment(capture_env)}
    from_env = dict(OTELResourceDetector().detect().attributes)
    explicit = dict(attributes or {})
    if service_name:
        explicit["service.name"] = service_name
    merged = {**detected, **from_env, **explicit}
    if not merged.get("service.name"):
        merged["service.name"] = default_service_name()
    return Resource.create(merged)
