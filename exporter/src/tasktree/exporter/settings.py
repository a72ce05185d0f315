"""Service configuration: one frozen ``Settings``, resolved argument → environment → default.

Each field is declared with ``setting(...)``: its default, its ``tasktree serve`` flag (if any),
its default as people read it and its meaning.  ``OPTIONS``, built from those declarations, is the
one table behind ``tasktree serve --help`` (``cli.py``) and the README's configuration table
(``configuration_table()``; a test keeps the README equal to it).  A malformed value stops
start-up with a message naming the variable (``SettingsError``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasktree.exporter.store.locks import LANES
from tasktree.exporter.tree.fold import DEFAULT_MAX_DEPTH


class SettingsError(ValueError):
    """A configuration value is malformed; the message names the variable or flag."""


EXAMPLE_TOKEN = "replace-me-with-a-random-token"
"""The placeholder of TASKTREE_AUTH_TOKEN in the repository's ``.env.example``: refused in every
token setting, so a copied example never becomes a working credential (a test keeps both equal)."""

NO_DOCKER_HOSTS = (
    "no docker host is configured: name the engines tasktree may reach in TASKTREE_DOCKER_HOSTS"
    ' ("local=unix:///var/run/docker.sock build=ssh://deploy@build-1") or in a YAML file named by'
    ' TASKTREE_DOCKER_HOSTS_FILE, and restart tasktree serve (README, "Docker hosts")'
)
"""What the API and CLI say when a docker request meets a server with no docker host."""

_TOKEN_FIELDS = ("auth_token", "ingest_tokens", "viewer_tokens", "operator_tokens", "secret_key")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "tasktree"


@dataclass(frozen=True)
class Option:
    """One row of the configuration table: what people see of a ``Settings`` field."""

    name: str
    """The ``Settings`` field."""
    kind: str
    """Its type as annotated (``int``, ``float``, ``str | None`` …): how its text is parsed."""
    meaning: str
    """What it does, in Markdown (``--help`` shows it as plain text)."""
    flag: str | None
    """Its flag of ``tasktree serve`` and ``tasktree demo``; None: the environment only."""
    shown_default: str
    """Its default as the README and ``--help`` say it."""

    @property
    def env(self) -> str:
        return env_name(self.name)


def setting(
    default: Any = None,
    *,
    meaning: str,
    flag: str | None = None,
    shown: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    secret: bool = False,
) -> Any:
    """A ``Settings`` field with its row of the configuration table.  ``shown``: the default as
    people should read it, when the value itself would not say it (default: the value);
    ``secret``: kept out of ``repr`` (and so out of logs)."""
    metadata = {_OPTION: (meaning, flag, shown if shown is not None else _shown(default))}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


_OPTION = "tasktree.option"


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


@dataclass(frozen=True)
class Settings:
    """Everything ``tasktree serve`` needs to know.  Build: ``Settings.from_env(**overrides)``.

    The fields are in the order of the README's configuration table.
    """

    database_url: str | None = setting(
        flag="--database-url",
        shown="embedded",
        meaning="PostgreSQL 14+ URL; several hosts (`postgresql://a:5432,b:5432/tasktree`) for"
        " failover: tasktree writes to whichever accepts writes; unset: an embedded PostgreSQL"
        " under `TASKTREE_DATA_DIR` (reused next start). At start a server that does not answer"
        " is waited for up to 30 s; a database or role that does not exist, or a refused password,"
        " stops tasktree at once with what to fix",
    )
    # -- failover and read replicas (issue 17; README "Failover and read replicas") --
    read_database_url: str | None = setting(
        flag="--read-database-url",
        shown="none (reads go to the primary)",
        meaning="PostgreSQL hot standby (or several: a multi-host URL) that serves the API, UI and"
        " `/metrics` reads; ingest, folding and docker audit stay on `--database-url`; when no"
        " standby answers, reads go to the primary",
    )
    require_sync_standby: bool = setting(
        False,
        meaning="refuse to start unless the primary has a synchronous standby streaming"
        " (`synchronous_standby_names`, `synchronous_commit`), so that a 200 means the spans are"
        " on two machines (and alert, TasktreeNoSynchronousStandby, when a failover left it"
        " without one); unset, tasktree only warns",
    )
    redis_url: str | None = setting(
        flag="--redis-url",
        meaning="Redis, for live updates shared by several processes",
    )
    host: str = setting(
        "127.0.0.1",
        flag="--host",
        meaning="address to bind; any other than loopback requires credentials for ingest and for"
        " reading (see [Authentication](#authentication))",
    )
    port: int = setting(8080, flag="--port", meaning="web UI, JSON API, `/metrics`, `/healthz`")
    otlp_grpc_port: int = setting(4317, flag="--otlp-grpc-port", meaning="OTLP/gRPC")
    otlp_http_port: int = setting(4318, flag="--otlp-http-port", meaning="OTLP/HTTP (`/v1/traces`)")
    workers: int = setting(
        1,
        flag="--workers",
        meaning="processes folding spans into the tree (the first one also serves, and replaces a"
        " fold worker that dies, waiting longer while they keep dying)",
    )
    # Each fold thread has its own connection: PostgreSQL does most of a fold's work, so two
    # threads fold two runs on two cores.
    fold_threads: int = setting(
        2,
        meaning="threads of each process folding spans into the tree, each on its own connection"
        f" (below `TASKTREE_POOL_SIZE`); runs are spread over {LANES} fold lanes by trace id, so"
        " two folders fold different runs side by side on two cores",
    )
    stall_after: float = setting(
        30.0,
        flag="--stall-after",
        meaning="seconds without a heartbeat before a running task is `stalled`; at least three"
        " of the jobs' `TASKTREE_HEARTBEAT_INTERVAL` (10 s by default)",
    )
    data_dir: Path = setting(
        default_factory=_default_data_dir,
        shown="`~/.local/share/tasktree`",
        meaning="where the embedded PostgreSQL keeps its data",
    )
    keep_database: bool = setting(
        False,
        meaning="leave the embedded PostgreSQL running when the last tasktree process using it"
        " exits (the next start is then instant); by default it stops with them",
    )
    # -- authentication (tasktree.exporter.auth) --
    auth_token: str | None = setting(
        secret=True,
        meaning="one service-wide token: accepted on ingest and, as a viewer named `auth-token`, on"
        " the UI and API; once set, both need a token",
    )
    ingest_tokens: str | None = setting(
        secret=True,
        meaning="`name:token,...` that jobs may send spans with"
        " (`OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer <token>`); once set (or"
        " `TASKTREE_AUTH_TOKEN`), ingest without one is 401 / `UNAUTHENTICATED`",
    )
    secret_key: str | None = setting(
        secret=True,
        shown="a random key in `TASKTREE_DATA_DIR/secret_key`",
        meaning="signs the web UI's session cookies (32+ characters); set the same value on every"
        " `tasktree serve` behind one address",
    )
    session_lifetime: int = setting(
        12 * 3600,
        meaning="seconds a web UI sign-in lasts from signing in (at least 60)",
    )
    cookie_secure: bool = setting(
        False,
        meaning="mark the session cookie `Secure`: set it when users reach tasktree through an"
        " HTTPS proxy",
    )
    allowed_hosts: str | None = setting(
        meaning="`name,...`: the host names, besides `localhost` and loopback addresses, that"
        " requests may name (their `Host`) while a door is open without credentials (reading on"
        " a loopback-bound server without viewer tokens; ingest without ingest tokens); a"
        " request naming another gets 403, so that no web page reaches tasktree through DNS"
        " rebinding. Add the name a same-machine proxy passes on",
    )
    # -- the database pool --
    pool_size: int = setting(
        10, meaning="database connections per process (bounded; checked on borrow)"
    )
    # Below typical proxy and server idle cuts.
    pool_max_lifetime: float = setting(1800.0, meaning="seconds before a connection is replaced")
    pool_timeout: float = setting(
        5.0, meaning="seconds to wait for a connection before answering 503"
    )
    # -- ingest and folding limits --
    max_body_bytes: int = setting(
        64 * 1024 * 1024,
        meaning="largest OTLP request, after decompression (413 beyond)",
    )
    # Longer attribute values, event fields and status messages are cut, with a marker.
    max_value_bytes: int = setting(256 * 1024, meaning="longest string value kept whole")
    max_spans_per_run: int = setting(2_000_000, meaning="tasks kept per run")
    max_backlog_spans: int = setting(
        2_000_000,
        meaning="received-but-unfolded spans above which ingest answers 429",
    )
    fold_batch: int = setting(10_000, meaning="spans folded per transaction")
    # Halving each time, so that no batch can hold its lane for ever.
    fold_timeout: float = setting(
        60.0,
        meaning="seconds one fold may take; a fold cancelled at this limit is logged, counted"
        " (`tasktree_fold_timeouts_total`) and retried in batches half as large",
    )
    max_depth: int = setting(
        DEFAULT_MAX_DEPTH,
        meaning="levels a run's tree may have: a task that would hang deeper is kept at the top of"
        " its run, its declared parent shown as refused (so is a parent link that would make a"
        " loop)",
    )
    # -- docker hosts (tasktree.exporter.docker, tasktree.exporter.auth) --
    docker_hosts_file: Path | None = setting(
        meaning="YAML file of docker hosts to manage (see [Docker hosts](#docker-hosts))",
    )
    docker_hosts: str | None = setting(
        meaning="docker hosts inline: `name=unix:///path.sock other=ssh://user@host`, or the YAML"
        " list",
    )
    docker_timeout: float = setting(
        3.0,
        meaning="seconds a docker host may take to answer a listing or metrics scrape before it is"
        " shown down",
    )
    docker_action_timeout: float = setting(
        120.0,
        meaning="seconds a docker host may stay silent during a pull, deploy, stop or log read",
    )
    docker_cache_ttl: float = setting(
        5.0,
        meaning="seconds a host's containers and images listing is reused (in Redis when"
        " `TASKTREE_REDIS_URL` is set); `0` no cache",
    )
    viewer_tokens: str | None = setting(
        secret=True,
        meaning="`name:token,...` that may read (pages, API, `/metrics`, docker hosts, audit log);"
        " once set, reading needs a credential even on loopback",
    )
    operator_tokens: str | None = setting(
        secret=True,
        meaning="`name:token,...` that may also act on docker hosts (pull, deploy, start, stop,"
        " restart, remove, logs); none: docker actions are disabled",
    )
    # -- retention and /metrics --
    retention_days: int | None = setting(
        shown="unset (keep all)",
        meaning="days a run is kept: tasks live in one partition per day (the day their run was"
        " first folded into the tree, normally the day it was received) and expired days are"
        " dropped whole; a day with a run still going"
        " (running, or anything received within the window) is kept; past about 400 days"
        " kept, PostgreSQL's default `max_locks_per_transaction` is too small for the"
        " statements over every day (tasktree logs a warning then)",
    )
    metrics_task_names: int = setting(
        20,
        meaning="task names per job with their own `task` label in `/metrics`; later names are"
        " counted as `__other__` (each name is 21 series: a duration histogram and two status"
        " counters)",
    )
    metrics_max_jobs: int = setting(
        100,
        meaning="jobs with their own `job_name` label in `/metrics`; later jobs are counted as"
        ' `job_name="__other__"` (tasks, runs, running, stalled) and their timestamps are not'
        " shown, so no job alert watches them (`tasktree_metrics_folded_jobs` counts them and"
        " TasktreeMetricsJobsOverCap fires)",
    )
    metrics_job_ttl: int = setting(
        35 * 86400,
        shown="`3024000` (35 days)",
        meaning="seconds after which a job tasktree has not seen leaves `/metrics` and frees its"
        " place (its counters start again if it returns); `0` never",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Resolve each field from ``overrides`` (when not ``None``), else ``TASKTREE_<FIELD>``,
        else the default."""
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, str(f.type))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``SettingsError`` for values that cannot work."""
        for name in ("port", "otlp_grpc_port", "otlp_http_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{env_name(name)} must be a port number 0-65535, got {port}")
        for name in (
            "workers",
            "fold_threads",
            "pool_size",
            "max_body_bytes",
            "max_value_bytes",
            "fold_batch",
            "metrics_task_names",
            "metrics_max_jobs",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1")
        if self.fold_threads >= self.pool_size:
            raise SettingsError(
                f"TASKTREE_FOLD_THREADS ({self.fold_threads}) must be below TASKTREE_POOL_SIZE"
                f" ({self.pool_size}): each fold thread holds a connection while it folds"
            )
        if self.max_depth < 2:
            raise SettingsError("TASKTREE_MAX_DEPTH must be at least 2 (a root and its children)")
        if self.retention_days is not None and self.retention_days < 1:
            raise SettingsError(
                "TASKTREE_RETENTION_DAYS must be at least 1 (or unset to keep everything)"
            )
        for name in ("stall_after", "fold_timeout", "docker_timeout", "docker_action_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be a positive number of seconds")
        if self.metrics_job_ttl < 0:
            raise SettingsError("TASKTREE_METRICS_JOB_TTL must be 0 (never) or more seconds")
        if self.docker_cache_ttl < 0:
            raise SettingsError("TASKTREE_DOCKER_CACHE_TTL must be 0 (no cache) or more seconds")
        if self.secret_key is not None and len(self.secret_key) < 32:
            raise SettingsError("TASKTREE_SECRET_KEY must be at least 32 characters (random)")
        if self.session_lifetime < 60:
            raise SettingsError("TASKTREE_SESSION_LIFETIME must be at least 60 seconds")
        for name in _TOKEN_FIELDS:
            if EXAMPLE_TOKEN in (getattr(self, name) or ""):
                raise SettingsError(
                    f"{env_name(name)} holds the placeholder {EXAMPLE_TOKEN!r} of .env.example: "
                    "put a random secret there (python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))') and start again"
                )
        for name in ("database_url", "read_database_url"):
            _check_database_url(name, getattr(self, name))
        _check_host_names(self.allowed_hosts)
        if not is_loopback(self.host):
            self._check_credentials_for_network()

    def _check_credentials_for_network(self) -> None:
        """Beyond loopback both doors need a credential: ingest (an ingest token or the
        service-wide token) and reading (a viewer, operator or the service-wide token)."""
        missing = []
        if not (self.auth_token or self.ingest_tokens):
            missing.append("ingest needs TASKTREE_INGEST_TOKENS (or TASKTREE_AUTH_TOKEN)")
        if not (self.auth_token or self.viewer_tokens or self.operator_tokens):
            missing.append(
                "the UI and API need TASKTREE_VIEWER_TOKENS and/or TASKTREE_OPERATOR_TOKENS "
                "(or TASKTREE_AUTH_TOKEN)"
            )
        if missing:
            raise SettingsError(
                f"refusing to listen on {self.host!r} without authentication: "
                + "; ".join(missing)
                + "; or bind 127.0.0.1"
            )


def _check_database_url(name: str, url: str | None) -> None:
    """A URL libpq cannot parse fails here, in one line, instead of as a traceback at connect."""
    if url is None:
        return
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:  # worded by libpq
        raise SettingsError(
            f"{env_name(name)} is neither a PostgreSQL URL"
            " (postgresql://user@host:5432/tasktree) nor a connection string"
            f" (host=... dbname=...): {exc}"
        ) from None


def env_name(field_name: str) -> str:
    """The environment variable of a ``Settings`` field: ``port`` → ``TASKTREE_PORT``."""
    return "TASKTREE_" + field_name.upper()


def _parse(name: str, raw: str, type_name: str):
    kind = str(type_name)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            return _parse_bool(raw)
        if kind.startswith("Path"):
            return Path(raw).expanduser()
        return raw
    except ValueError:
        kind = kind.split(" ")[0]
        raise SettingsError(
            f"{env_name(name)}={raw!r} is not a valid {kind}{_SPELLINGS.get(kind, '')}"
        ) from None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SPELLINGS = {
    "bool": f" (one of {', '.join(_TRUE + _FALSE)})",
    "int": " (a whole number, such as 30)",
    "float": " (a number, such as 2.5)",
}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(raw)


def _check_host_names(names: str | None) -> None:
    """``TASKTREE_ALLOWED_HOSTS`` holds names as a ``Host`` header gives them, not URLs."""
    for name in (names or "").split(","):
        if re.search(r"[/@\s]|://", name.strip()):
            raise SettingsError(
                f"TASKTREE_ALLOWED_HOSTS: {name.strip()!r} is not a host name: give names as"
                " browsers send them, e.g. myproxy.local or myproxy.local:8443, comma-separated"
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reached from this machine only (``localhost`` or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


OPTIONS: tuple[Option, ...] = tuple(
    Option(f.name, str(f.type), *f.metadata[_OPTION]) for f in dataclasses.fields(Settings)
)
"""The configuration table: every setting, in the README's order."""


def configuration_table() -> str:
    """The README's configuration table (Markdown), generated from ``OPTIONS``."""
    rows = [
        f"|{f' `{o.flag}` ' if o.flag else ' '}| `{o.env}` | {o.shown_default} | {o.meaning} |"
        for o in OPTIONS
    ]
    return "\n".join(["| flag | variable | default | meaning |", "|---|---|---|---|", *rows])


def plain_text(markdown: str) -> str:
    """A table cell as a terminal shows it: no backticks, links as their text."""
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", markdown).replace("`", "")
