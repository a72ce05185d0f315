"""Service configuration: one frozen ``Settings``, resolved argument → environment → default.

Every ``TASKTREE_*`` variable the service reads is listed in ``ENVIRONMENT`` with its meaning,
so the README table and ``tasktree serve --help`` come from one place.  A malformed value stops
start-up with a message naming the variable (``SettingsError``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(ValueError):
    """A configuration value is malformed; the message names the variable or flag."""


EXAMPLE_TOKEN = "replace-me-with-a-random-token"
"""The placeholder of TASKTREE_AUTH_TOKEN in the repository's ``.env.example``: refused in every
token setting, so a copied example never becomes a working credential (a test keeps both equal)."""

_TOKEN_FIELDS = ("auth_token", "ingest_tokens", "viewer_tokens", "operator_tokens", "secret_key")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "tasktree"


@dataclass(frozen=True)
class Settings:
    """Everything ``tasktree serve`` needs to know.  Build: ``Settings.from_env(**overrides)``."""

    database_url: str | None = None
    """PostgreSQL URL; ``None`` starts the embedded PostgreSQL under ``data_dir``."""
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    otlp_grpc_port: int = 4317
    otlp_http_port: int = 4318
    workers: int = 1
    fold_threads: int = 2
    """Threads of each process that fold landed spans into the tree, each on its own connection:
    different runs are folded side by side (PostgreSQL does most of the work)."""
    stall_after: float = 30.0
    """Seconds without a heartbeat after which a running task is shown as stalled."""
    data_dir: Path = field(default_factory=_default_data_dir)
    pool_size: int = 10
    pool_max_lifetime: float = 1800.0
    """Seconds a database connection is used before it is replaced (below typical proxy and
    server idle cuts)."""
    pool_timeout: float = 5.0
    """Seconds a request waits for a database connection before answering 503."""
    max_body_bytes: int = 64 * 1024 * 1024
    """Largest OTLP request accepted, measured after decompression."""
    max_value_bytes: int = 256 * 1024
    """Attribute values, event fields and status messages beyond this are cut, with a marker."""
    max_spans_per_run: int = 2_000_000
    max_backlog_spans: int = 2_000_000
    """Received-but-not-yet-folded spans above which ingest answers 429 (backpressure)."""
    fold_batch: int = 10_000
    fold_timeout: float = 60.0
    """Seconds one fold may take; a fold cancelled at this limit is retried in smaller batches
    (halved each time), so no batch can hold its lane for ever."""
    max_depth: int = 1000
    """Levels a run's tree may have; a task that would hang deeper stays at the top of its run,
    its declared parent shown as refused (``tree.fold``)."""
    retention_days: int | None = None
    """Days runs are kept (whole day partitions are dropped); unset keeps everything."""
    metrics_task_names: int = 20
    """Task names per job with their own label in /metrics; later ones count as ``__other__``
    (each name is 21 series: a 19-series duration histogram and two status counters)."""
    metrics_max_jobs: int = 100
    """Jobs with their own ``job_name`` label in /metrics; later ones count as ``__other__``."""
    metrics_job_ttl: int = 35 * 86400
    """Seconds after which a job tasktree has not seen leaves /metrics (0: never)."""
    auth_token: str | None = field(default=None, repr=False)
    """Service-wide bearer token: accepted on ingest and, as a viewer, on the UI and API; once set,
    ingest and reading need a token (see ``tasktree.exporter.auth``)."""
    ingest_tokens: str | None = field(default=None, repr=False)
    """Bearer tokens (``name:token``, comma-separated) that OTLP exporters may send spans with;
    once any is set (or ``auth_token``), ingest without one of them is refused."""
    secret_key: str | None = field(default=None, repr=False)
    """Signs the web UI's session cookies; unset: a random key kept in ``data_dir/secret_key``."""
    session_lifetime: int = 12 * 3600
    """Seconds a web UI sign-in lasts (from signing in; then the user signs in again)."""
    cookie_secure: bool = False
    """Mark the session cookie ``Secure``: set when users reach the UI through an HTTPS proxy."""
    # -- docker hosts (issue 6; tasktree.exporter.docker, tasktree.exporter.auth) --
    docker_hosts_file: Path | None = None
    """YAML file listing the docker hosts (name, url, labels, tls, timeout)."""
    docker_hosts: str | None = None
    """Docker hosts inline: ``name=url`` pairs (space/comma separated), or the YAML list itself."""
    docker_timeout: float = 3.0
    """Seconds a docker host may take to answer a listing or metrics scrape before it shows down."""
    docker_action_timeout: float = 120.0
    """Seconds a docker host may stay silent during a pull, deploy, stop or log read."""
    docker_cache_ttl: float = 5.0
    """Seconds a host's container and image listing is reused (in Redis when ``redis_url``)."""
    viewer_tokens: str | None = field(default=None, repr=False)
    """Bearer tokens (``name:token``, comma-separated) that may list docker hosts, containers,
    operations and the audit log."""
    operator_tokens: str | None = field(default=None, repr=False)
    """Bearer tokens that may also act on docker hosts: pull, deploy, start/stop/remove, logs."""

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
            raw = env.get(_env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``SettingsError`` for values that cannot work."""
        for name in ("port", "otlp_grpc_port", "otlp_http_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{_env_name(name)} must be a port number 0-65535, got {port}")
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
                raise SettingsError(f"{_env_name(name)} must be at least 1")
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
                raise SettingsError(f"{_env_name(name)} must be a positive number of seconds")
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
                    f"{_env_name(name)} holds the placeholder {EXAMPLE_TOKEN!r} of .env.example: "
                    "put a random secret there (python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))') and start again"
                )
        if not _is_loopback(self.host):
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


def _env_name(field_name: str) -> str:
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
        raise SettingsError(
            f"{_env_name(name)}={raw!r} is not a valid {kind.split(' ')[0]}"
        ) from None


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ENVIRONMENT = {_env_name(f.name): f.name for f in dataclasses.fields(Settings)}
"""Every TASKTREE_* variable of the service, mapped to its Settings field."""
