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

# A name containing any of these words (case-insensitive) has its value redacted.
SECRET_WORDS = (
    "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "KEY", "CREDENTIAL", "AUTH",
    "COOKIE", "SESSION", "PRIVATE", "SIGNATURE", "DSN", "CERT",
)  # fmt: skip
_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# scheme://user:password@host → scheme://user:[redacted]@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+(?=@)")
# --password=xyz or --api-key xyz (then the next argument is the value); a narrower word list than
# for names, because a flag like --no-auth takes no value and would hide the next argument.
_SECRET_OPTION = re.compile(
    r"^(?P<opt>--?(?!no-)[A-Za-z0-9_\-]*(?:PASSWORD|PASSWD|PASSPHRASE|TOKEN|SECRET|API[_-]?KEY|CREDENTIAL)"
    r"[A-Za-z0-9_\-]*)(?P<eq>=)?",
    re.IGNORECASE,
)
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_MOUNTINFO_CONTAINER_ID = re.compile(r"/(?:docker|containers|sandboxes)/([0-9a-f]{64})/")


def is_secret_name(name: str, extra_patterns: Sequence[str] = ()) -> bool:
    """True when the variable ``name`` looks like it holds a secret (or matches an extra glob)."""
    return bool(_SECRET_NAME.search(name)) or any(
        fnmatch.fnmatchcase(name, p) for p in extra_patterns
    )


def mask_url_passwords(value: str) -> str:
    """``postgresql://user:secret@db/x`` → ``postgresql://user:[redacted]@db/x``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, value)


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
    """Command arguments with the values of secret-looking options and URL passwords masked."""
    result, hide_next = [], False
    for arg in args:
        if hide_next:
            result.append(REDACTED)
            hide_next = False
            continue
        match = _SECRET_OPTION.match(arg)
        if match and match.group("eq"):
            result.append(match.group("opt") + "=" + REDACTED)
        else:
            hide_next = bool(match)
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
