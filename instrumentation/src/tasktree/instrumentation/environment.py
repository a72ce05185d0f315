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
import functools
import getpass
import os
import platform
import re
import shlex
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from tasktree.instrumentation import _settings
from tasktree.instrumentation.environment_variables import (
    TASKTREE_CAPTURE_ENV,
    TASKTREE_REDACT_ENV,
)

REDACTED = "[redacted]"
ENV_ATTRIBUTE_PREFIX = "process.environment_variable."

# A name containing one of these words (any case, anywhere) holds a secret: no harmless name is
# spelled with them.  A webhook URL is its own secret; AUTHORIZATION is the HTTP header.
SECRET_WORDS = (
    "PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "CREDENTIAL", "SIGNATURE", "COOKIE", "WEBHOOK",
    "BEARER", "JWT", "DSN", "AUTHORIZATION", "APIKEY", "ACCESSKEY", "PRIVATEKEY", "SESSIONID",
)  # fmt: skip
# Secret only as a whole part of the name, split at _ - . and case changes (apiKey): TOKENIZER,
# KEYBOARD, PATH, SIGNAL are no secrets.  A part ending in TOKEN or PWD is one too (GHTOKEN,
# DBPWD).  HEADERS is OTEL_EXPORTER_OTLP_HEADERS, where an ingest token goes.
SECRET_NAME_PARTS = (
    "TOKEN", "TOKENS", "PASS", "PWD", "KEY", "CERT", "CRED", "CREDS", "HEADERS", "PAT", "SIG",
)  # fmt: skip
# Secret as the last part (--auth, HTTP_AUTH, BW_SESSION) or before ID or HEADER (SESSION_ID),
# not before anything else (AUTH_DOMAIN, SESSION_DATE).
SECRET_LAST_PARTS = ("AUTH", "SESSION")
# KEY after these is a key into data, not a secret (SORT_KEY, --primary-key).
_DATA_KEYS = frozenset(
    {"SORT", "PRIMARY", "PARTITION", "FOREIGN", "UNIQUE", "CACHE", "GROUP", "ROW", "RANGE",
     "SHARD", "JOIN", "MERGE", "LOOKUP"}
)  # fmt: skip
# A name beginning with one of these is a switch or a count, never a secret (--no-password,
# --use-auth, MAX_TOKENS, NUM_PASSES): a switch takes no value, so the next argument is shown.
_SWITCH_OR_COUNT = frozenset(
    {"NO", "USE", "WITH", "WITHOUT", "ENABLE", "DISABLE", "SKIP", "REQUIRE", "ALLOW", "MAX",
     "MIN", "NUM"}
)  # fmt: skip
# Holding a directory, not a password.
_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
_NAME_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+[A-Za-z]*")
_SECRET_WORD = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# A secret-looking name's value shown all the same: an absolute path, when the name says it is a
# file or the path ends in a file's extension (SSL_CERT_FILE=/etc/ssl/c.pem,
# GOOGLE_APPLICATION_CREDENTIALS=/run/key.json): the file is the secret, not its name.
_FILE_PARTS = frozenset({"FILE", "PATH", "DIR", "FILENAME", "FOLDER"})
_ABSOLUTE_PATH = re.compile(r"~?/[^\s:@=;,'\"]+")
_FILE_EXTENSION = re.compile(r"/[^/]*\.[A-Za-z][A-Za-z0-9]{0,4}")

# A value in text: quoted whole ('pw with space', "pw"), else to the next space or separator.
_VALUE = r"""(?P<value>'[^'\n]*'|"(?:[^"\\\n]|\\.)*"|[^\s;&|'"}]+)"""
# scheme://user:password@host: the host follows the last '@' of the word, so the password may
# hold '@', '/', '?' or '#' when unencoded (checked in _mask_userinfo).
_URL_AUTHORITY = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s'\"<>]*@|[^/?#\s'\"<>]*)"
)
# A userinfo without password that is a token (https://ghp_xyz@github.com, git's documented form):
# a known token prefix, or a long run of letters and digits with both (not git@, not alice@).
_TOKEN_USERINFO = re.compile(
    r"(?:gh[pousr]_|github_pat_|glpat-|xox[abpors]-)\S+"
    r"|(?=[\w-]{20,}$)(?=.*\d)(?=.*[A-Za-z])[\w-]+"
)
# URLs whose path is the secret (Slack and Discord webhooks).
_SECRET_URL_PATH = re.compile(
    r"(?P<head>https?://(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
    r"|(?:\w+\.)?discord(?:app)?\.com/api/webhooks/\d+/))[^\s'\"<>?#]+"
)
# ?password=xyz&token=xyz (URL query parameters)
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&;](?P<name>[^=&#\s]+)=)(?P<value>[^&#\s'\"]*)")
# --password=xyz, --api-key xyz (a value starting with '-' is another option)
_OPTION_IN_TEXT = re.compile(
    r"(?<![\w-])(?P<head>(?P<name>--?[A-Za-z][\w.-]*)(?:=|[ \t]+(?!-)))" + _VALUE
)
# DB_PASSWORD=xyz, password='xyz' (libpq, JAAS), spark.hadoop.fs.s3a.secret.key=xyz
_ASSIGNMENT_IN_TEXT = re.compile(r"(?<![\w.\-/])(?P<head>(?P<name>[A-Za-z_][\w.-]*)=)" + _VALUE)
# X-Api-Key: xyz (a header), "password": "xyz" (JSON, a Python dict), token: xyz (YAML);
# a scheme stays (Authorization: Bearer [redacted])
_COLON_IN_TEXT = re.compile(
    r"""(?<![\w.-])(?P<head>(?P<q>["']?)(?P<name>[A-Za-z_][\w.-]*)(?P=q)[ \t]*:[ \t]*"""
    r"(?:(?:Bearer|Basic|Token|Digest)[ \t]+)?)(?!//)" + _VALUE,
    re.IGNORECASE,
)
# Exception names are no header: KeyError: 'x', TokenError: expired.
_EXCEPTION_NAME = re.compile(r"(?:Error|Exception|Warning)$", re.IGNORECASE)
# An HTTP credential (curl -H "Authorization: Bearer xyz"): one with a digit or a sign, or long,
# so that "basic authentication failed" stays.
_AUTHORIZATION = re.compile(
    r"\b(?P<head>(?:Bearer|Basic|Token)[ \t]+)(?=[\w.~+/=-]*[\d+/=_.~-]|[\w.~+/=-]{16})"
    r"[\w.~+/=-]+",
    re.IGNORECASE,
)
# `aws configure set aws_secret_access_key xyz`, `npm config set _authToken xyz`
_SET_IN_TEXT = re.compile(r"(?<![\w-])(?P<head>set[ \t]+(?P<name>[A-Za-z_][\w.-]*)[ \t]+)" + _VALUE)
# Options that take a password in these programs (elsewhere -p is a port: ssh -p 22, psql -p 5432,
# docker run -p 8080:80), and how: "value" attached or as the next argument (sshpass -p pw),
# "attached" only (mysql -ppw; mysql -p db asks and db is a database), "user:password" (curl -u).
PASSWORD_OPTIONS = {
    "sshpass": {"-p": "value"},
    "redis-cli": {"-a": "value"},
    "docker login": {"-p": "value"},
    "podman login": {"-p": "value"},
    "nerdctl login": {"-p": "value"},
    "gh secret set": {"-b": "value", "--body": "value"},
    "mysql": {"-p": "attached"},
    "mysqldump": {"-p": "attached"},
    "mysqladmin": {"-p": "attached"},
    "mariadb": {"-p": "attached"},
    "mariadb-dump": {"-p": "attached"},
    "curl": {"-u": "user:password", "--user": "user:password", "-U": "user:password",
             "--proxy-user": "user:password"},
}  # fmt: skip
# How each form's value follows its option in text.
_PROGRAM_VALUE = {
    "value": r"(?:=|[ \t]+)?",
    "attached": "",
    "user:password": r"(?:=|[ \t]+)?(?P<user>[^\s:;&|]*):",
}


def _program_option_in_text(program: str, option: str, form: str) -> re.Pattern:
    """``sshpass -p pw`` in text: the program, its arguments before the option, the value."""
    words = r"[ \t]+".join(map(re.escape, program.split()))
    return re.compile(
        rf"(?<![\w./-])(?P<head>{words}(?:[ \t]+[^\s;&|]+)*?[ \t]+"
        rf"{re.escape(option)}{_PROGRAM_VALUE[form]}){_VALUE}"
    )


_PROGRAM_OPTIONS_IN_TEXT = [
    _program_option_in_text(program, option, form)
    for program, options in PASSWORD_OPTIONS.items()
    for option, form in options.items()
]
_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_MOUNTINFO_CONTAINER_ID = re.compile(r"/(?:docker|containers|sandboxes)/([0-9a-f]{64})/")


def _name_parts(name: str) -> list[str]:
    """``spring.datasource.password`` → SPRING, DATASOURCE, PASSWORD; ``apiKey`` → API, KEY."""
    return [part.upper() for part in _NAME_PART.findall(name)]


def is_secret_name(name: str, extra_patterns: Sequence[str] = ()) -> bool:
    """True when the variable or option ``name`` looks like it holds a secret (or matches an
    extra glob, case-insensitively: a redaction that misses for a letter's case fails open)."""
    if any(fnmatch.fnmatch(name.upper(), p.upper()) for p in extra_patterns):
        return True
    parts = _name_parts(name)
    if name.upper() in _NOT_SECRET or not parts or parts[0] in _SWITCH_OR_COUNT:
        return False
    if _SECRET_WORD.search(name):
        return True
    for i, part in enumerate(parts):
        after = parts[i + 1] if i + 1 < len(parts) else None
        if part == "KEY" and i and parts[i - 1] in _DATA_KEYS:
            continue
        if part in SECRET_NAME_PARTS or part.endswith(("TOKEN", "PWD")):
            return True
        if part in SECRET_LAST_PARTS and after in (None, "ID", "HEADER"):
            return True
    return False


def _shown_all_the_same(name: str, value: str) -> bool:
    """True when ``value`` is an absolute path to a file, which is no secret itself."""
    path = value.strip("'\"")
    return bool(_ABSOLUTE_PATH.fullmatch(path)) and (
        not _FILE_PARTS.isdisjoint(_name_parts(name)) or bool(_FILE_EXTENSION.search(path))
    )


def masked_value(name: str, value: str, extra_patterns: Sequence[str] = ()) -> str:
    """``value`` as it may be shown when it is ``name``'s: ``[redacted]`` for a secret name
    (quotes kept), else with the secrets inside it masked (:func:`redacted_text`)."""
    if not is_secret_name(name, extra_patterns) or _shown_all_the_same(name, value):
        return redacted_text(value)
    quote = value[:1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else ""
    return f"{quote}{REDACTED}{quote}"


def mask_url_passwords(value: str) -> str:
    """``postgresql://user:secret@db/x`` → ``postgresql://user:[redacted]@db/x``, a token as
    userinfo, a webhook's secret path, and the values of secret-looking query parameters
    (``?password=``, ``&token=``, ``&sig=``) likewise."""
    value = _URL_AUTHORITY.sub(_mask_userinfo, value)
    value = _SECRET_URL_PATH.sub(lambda m: m.group("head") + REDACTED, value)
    return _QUERY_PARAMETER.sub(_mask_named, value)


def _mask_userinfo(match: re.Match) -> str:
    authority = match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at:
        return match.group(0)
    if any(c in userinfo for c in "/?#") and (
        any(c in user for c in "/?#@") or re.match(r"\d*[/?#]", password)
    ):  # the '@' is in the path (http://h/a@b, http://h:80/@x): the authority ends before it
        shorter = re.match(r"[^/?#]*", authority)
        assert shorter is not None
        return _URL_AUTHORITY.sub(_mask_userinfo, match.group("scheme") + shorter.group(0)) + (
            authority[shorter.end() :]
        )
    if colon:
        return f"{match.group('scheme')}{user}:{REDACTED}@{host}"
    if _TOKEN_USERINFO.fullmatch(user):
        return f"{match.group('scheme')}{REDACTED}@{host}"
    return match.group(0)


def _mask_named(match: re.Match) -> str:
    name, value = match.group("name").lstrip("-"), match.group("value")
    if _EXCEPTION_NAME.search(name) or not is_secret_name(name) or _shown_all_the_same(name, value):
        return match.group(0)  # the other rules still look inside it
    return match.group("head") + masked_value(name, value)


def _mask_whole(match: re.Match) -> str:
    return match.group("head") + REDACTED


def redacted_text(text: str) -> str:
    """``text`` (a script, a program's stderr, an exception's message) with its secrets masked:
    values of secret-looking options, assignments, headers and JSON keys (:func:`is_secret_name`),
    programs' password options (:data:`PASSWORD_OPTIONS`), HTTP credentials (``Bearer x``), URL
    passwords and tokens, webhook paths and secret query parameters."""
    for rule in _PROGRAM_OPTIONS_IN_TEXT:
        text = rule.sub(_mask_whole, text)
    for rule in (_OPTION_IN_TEXT, _ASSIGNMENT_IN_TEXT, _COLON_IN_TEXT, _SET_IN_TEXT):
        text = rule.sub(_mask_named, text)
    return mask_url_passwords(_AUTHORIZATION.sub(_mask_whole, text))


def captured_environment(
    patterns: str | list[str] | None = None,
    redact: str | list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Resource attributes for the environment variables whose names match ``patterns``.

    ``patterns`` / ``redact`` default to ``TASKTREE_CAPTURE_ENV`` / ``TASKTREE_REDACT_ENV``
    (comma-separated globs).  Secret-looking values are replaced by ``[redacted]``, and the
    secrets inside the others masked (:func:`masked_value`).
    """
    wanted = _settings.patterns(patterns, TASKTREE_CAPTURE_ENV)
    if not wanted:
        return {}
    extra = _settings.patterns(redact, TASKTREE_REDACT_ENV)
    environ = os.environ if environ is None else environ
    captured = {}
    for name in sorted(environ):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in wanted):
            captured[ENV_ATTRIBUTE_PREFIX + name] = masked_value(name, environ[name], extra)
    return captured


_OPTION = re.compile(r"(?P<name>--?[A-Za-z][\w.-]*)(?:=(?P<value>.*))?", re.DOTALL)
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)=(?P<value>.*)", re.DOTALL)


def redacted_args(args: list[str]) -> list[str]:
    """Command arguments with secrets masked: the values of secret-looking options
    (``--password=x``, ``--api-key x``, ``-Dx.password=x``) and assignments (``DB_PASSWORD=x``),
    programs' password options (``sshpass -p x``, ``curl -u user:x``), ``set NAME x``, and in
    every argument what :func:`redacted_text` masks (a script: ``sh -c '...'``)."""
    options = dict(_password_options(args))  # each once: sshpass -p pw ssh -p 22 host
    result: list[str] = []
    show_next: Callable[[str], str] | None = None  # when an argument announced the next one
    for before, arg in zip(["", *args], args, strict=False):
        if show_next is not None:
            result.append(show_next(arg))
            show_next = None
            continue
        shown, show_next = _redacted_arg(arg, before, options)
        result.append(shown)
    return result


def _password_options(args: list[str]) -> dict[str, str]:
    """The :data:`PASSWORD_OPTIONS` of the program ``args`` runs (``docker login``: two words)."""
    words = [os.path.basename(args[0]) if args else "", *args[1:3]]
    for count in (3, 2, 1):
        options = PASSWORD_OPTIONS.get(" ".join(words[:count]))
        if options is not None:
            return options
    return {}


def _redacted_arg(
    arg: str, before: str, options: dict[str, str]
) -> tuple[str, Callable[[str], str] | None]:
    """``arg`` as shown, and how to show the next argument when ``arg`` is an option or name
    whose value it is."""
    for option, form in options.items():
        attached = arg[len(option) :].removeprefix("=") if arg.startswith(option) else ""
        if arg == option and form != "attached":
            del options[option]
            return arg, functools.partial(_program_value, form)
        if attached and (option.startswith("--") <= arg.startswith(option + "=")):
            del options[option]
            return arg[: len(arg) - len(attached)] + _program_value(form, attached), None
    named = _OPTION.fullmatch(arg) or _ASSIGNMENT.fullmatch(arg)
    if named and named.group("value") is not None:
        name = named.group("name")
        return f"{name}={masked_value(name, named.group('value'))}", None
    if named and is_secret_name(arg.lstrip("-")) or before == "set" and is_secret_name(arg):
        return arg, functools.partial(masked_value, arg.lstrip("-"))
    return redacted_text(arg), None


def _program_value(form: str, value: str) -> str:
    """A program's password option's value as shown (``alice:pw`` → ``alice:[redacted]``)."""
    user, colon, _password = value.partition(":")
    if form == "user:password":
        return f"{user}:{REDACTED}" if colon else value
    return REDACTED


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
