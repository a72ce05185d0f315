"""``tasktree serve``: the database, the OTLP receivers, the web app and the folder, wired up."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool
import waitress.server
from prometheus_client import CollectorRegistry

from tasktree.exporter.app import create_app
from tasktree.exporter.auth import IngestTokens, load_secret_key
from tasktree.exporter.background import Folder
from tasktree.exporter.docker import DockerService, check_docker_hosts
from tasktree.exporter.ingest import Ingestor
from tasktree.exporter.live import open_bus
from tasktree.exporter.metrics import ServiceMetrics
from tasktree.exporter.receiver._common import RefusedExports
from tasktree.exporter.receiver.otlp_grpc import start_otlp_grpc_server
from tasktree.exporter.receiver.otlp_http import TRACES_PATH, create_otlp_http_app
from tasktree.exporter.settings import OPTIONS, Settings
from tasktree.exporter.store.migrate import NewerSchema, migrate
from tasktree.exporter.store.pool import open_pool, primary_conninfo, standby_conninfo
from tasktree.exporter.store.replication import ReadRoute, check_synchronous_standby

if TYPE_CHECKING:
    import grpc

logger = logging.getLogger(__name__)

_DB_WAIT_S = 30.0
_READ_POOL_TIMEOUT_S = 1.0


def resolve_database_url(settings: Settings) -> str:
    """The configured URL (for the writing pool: ``primary_conninfo``), or the embedded
    PostgreSQL's when none is set."""
    if settings.database_url:
        return primary_conninfo(settings.database_url)
    from tasktree.exporter.store.embedded import embedded_database_url

    return embedded_database_url(settings.data_dir, keep=settings.keep_database)


def migrate_when_reachable(url: str, wait_s: float = _DB_WAIT_S) -> None:
    """Apply migrations, waiting up to ``wait_s`` for the database to come up."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            migrate(url)
            return
        except NewerSchema as exc:
            raise SystemExit(f"tasktree: PostgreSQL at {where(url)}: {exc}") from exc
        except psycopg.OperationalError as exc:
            refused_for_good = _what_to_do(str(exc))
            if refused_for_good is not None:
                raise SystemExit(
                    f"tasktree: PostgreSQL at {where(url)} refused: {_first_line(exc)}; "
                    f"{refused_for_good}"
                ) from exc
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"tasktree: cannot reach PostgreSQL at {where(url)}: {exc}"
                ) from exc
            if not said:  # a person at the terminal should not wait half a minute in silence
                logger.warning(
                    "PostgreSQL at %s is not reachable yet, trying again for up to %.0f s: %s",
                    where(url), wait_s, exc,
                )  # fmt: skip
                said = True
            time.sleep(1.0)


# Refusals no wait will change (the server's words, as libpq passes them on), and what to do.
_REFUSED_FOR_GOOD = (
    (re.compile(r'database "[^"]*" does not exist'), "create it (createdb, or CREATE DATABASE)"),
    (re.compile(r'role "[^"]*" does not exist'), "create the role, or use another user"),
    (re.compile(r"password authentication failed|no password supplied"), "check the password"),
    (re.compile(r"no pg_hba\.conf entry"), "allow this client in the server's pg_hba.conf"),
)


def _what_to_do(error: str) -> str | None:
    """What the user must change when PostgreSQL refused for good; None for what may pass (a
    server starting up, not listening yet, a network that is down)."""
    for said, what_to_do in _REFUSED_FOR_GOOD:
        if said.search(error):
            return what_to_do
    return None


def _first_line(exc: Exception) -> str:
    """The server's own reason, without libpq's "connection to server at … failed:" prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit("failed: ", 1)[-1].strip()


# What each listener serves, by the setting of its port.
_LISTENERS = {
    "port": "the web UI and API",
    "otlp_http_port": "OTLP/HTTP",
    "otlp_grpc_port": "OTLP/gRPC",
}


def _cannot_listen(setting: str, host: str, port: int, reason: str) -> SystemExit:
    """What to do when a listener's port is taken (the commonest failure at a first start: 8080
    is everyone's): the setting that moves it, by flag and variable."""
    option = next(o for o in OPTIONS if o.name == setting)
    return SystemExit(
        f"tasktree: cannot listen for {_LISTENERS[setting]} on {host}:{port} ({reason}); another"
        f" program, or another tasktree serve, may hold that port: stop it, or choose another"
        f" with {option.flag} ({option.env})"
    )


def _in_url(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def where(url: str) -> str:
    """Where ``url`` points, for a message: hosts, ports, database and user (no password, none
    of the connection options tasktree adds)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    hosts = str(params.get("host") or params.get("hostaddr") or "the local socket").split(",")
    ports = str(params.get("port") or "5432").split(",")
    ports += ports[-1:] * (len(hosts) - len(ports))  # libpq: one port for every host
    places = ",".join(f"{host}:{port}" for host, port in zip(hosts, ports, strict=False))
    named = ", ".join(f"{what} {params[key]}" for key, what in _NAMED if params.get(key))
    return f"{places} ({named})" if named else places


_NAMED = (("dbname", "database"), ("user", "user"))


class Service:
    """All parts of one ``tasktree serve`` process.  ``start()`` binds; ports are then known."""

    def __init__(self, settings: Settings, *, serve: bool = True):
        self.settings = settings
        check_docker_hosts(settings)  # issue 6: a bad hosts file stops start-up before the database
        self.database_url = resolve_database_url(settings)
        migrate_when_reachable(self.database_url)
        self.pool = open_pool(
            self.database_url,
            max_size=settings.pool_size,
            max_lifetime=settings.pool_max_lifetime,
            timeout=settings.pool_timeout,
        )
        check_synchronous_standby(  # issue 17: a 200 on two machines, or say it is not
            self.database_url,
            required=settings.require_sync_standby,
            embedded=not settings.database_url,
        )
        self.reads = ReadRoute(self.pool, self._open_read_pool(settings))
        self.folder = Folder(self.pool, settings)
        self.ingest = Ingestor(self.pool, settings, on_landed=self.folder.wake)
        self.metrics = ServiceMetrics(
            self.pool, settings, self.folder, registry=CollectorRegistry(), reads=self.reads
        )  # issue 5
        self.docker = DockerService(settings, self.pool)  # issue 6: docker hosts
        # Live updates of the web pages: Redis when configured, else LISTEN/NOTIFY when several
        # processes fold (--workers), else in-process.
        self.live = open_bus(
            settings.redis_url,
            listen=serve,
            database_url=self.database_url if settings.workers > 1 else None,
        )
        self.folder.subscribe(self.live.publish)
        self.metrics.watch_live_bus(self.live)
        self._serve = serve
        self._threads: list[threading.Thread] = []
        self._http_servers: list[Any] = []  # waitress servers (a union of classes)
        self._grpc: grpc.Server | None = None
        # The ports bound, once started (a configured port 0 is any free port).
        self.web_port: int | None = None
        self.otlp_http_port: int | None = None
        self.otlp_grpc_port: int | None = None

    @staticmethod
    def _open_read_pool(settings: Settings) -> psycopg_pool.ConnectionPool | None:
        """The pool of hot standbys that serve reads (``--read-database-url``), if any.  Its
        borrow timeout is short: when no standby answers, reads go to the primary instead."""
        if not settings.read_database_url:
            return None
        return open_pool(
            standby_conninfo(settings.read_database_url),
            max_size=settings.pool_size,
            max_lifetime=settings.pool_max_lifetime,
            timeout=min(settings.pool_timeout, _READ_POOL_TIMEOUT_S),
            name="tasktree-read",
            writable=False,
        )

    def start(self) -> Service:
        self.folder.start()
        if not self._serve:
            return self
        s = self.settings
        web = create_app(
            s,
            self.pool,
            folder=self.folder,
            ingest=self.ingest,
            docker=self.docker,
            live=self.live,
            metrics=self.metrics,
            secret_key=load_secret_key(s),
            reads=self.reads,
        )
        # Each open live stream holds a thread: room for them beside the ordinary requests.
        self.web_port = self._start_http(web, "port", "web", threads=8 + self.live.max_streams)
        http_ingest, grpc_ingest = (
            self.metrics.instrument_ingest(self.ingest, p) for p in ("http", "grpc")
        )
        # The docker service traces its pulls and deploys into this process's own receiver, with
        # a token of its own (none of the configured ingest tokens is its to use).
        own_token = secrets.token_urlsafe(32)
        tokens = IngestTokens(s, internal=[own_token])
        # One for both receivers: a client is warned about once a minute, whatever it speaks.
        refusals = RefusedExports(self.metrics.ingest.count_refused)
        self.otlp_http_port = otlp_http_port = self._start_http(
            create_otlp_http_app(http_ingest, s, tokens, refusals),
            "otlp_http_port",
            "otlp-http",
        )
        try:
            self._grpc, self.otlp_grpc_port = start_otlp_grpc_server(
                grpc_ingest,
                s,
                s.host,
                s.otlp_grpc_port,
                tokens=tokens,
                refusals=refusals,
            )
        except OSError as exc:
            raise _cannot_listen("otlp_grpc_port", s.host, s.otlp_grpc_port, str(exc)) from exc
        self.docker.connect_tracing(self._own_url(otlp_http_port) + TRACES_PATH, own_token)
        return self

    def _own_url(self, port: int) -> str:
        """This process as a client reaches it (a wildcard bind is reached on loopback)."""
        host = self.settings.host
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"http://{_in_url(host)}:{port}"

    def _start_http(self, app, setting: str, name: str, threads: int = 8) -> int:
        """Serve ``app`` on the port of ``setting`` (a ``Settings`` field); return the port."""
        host, port = self.settings.host, getattr(self.settings, setting)
        try:
            server = waitress.server.create_server(
                app,
                host=host,
                port=port,
                threads=threads,
                ident="tasktree",
                channel_timeout=300,
                connection_limit=1000,
                clear_untrusted_proxy_headers=True,
                # Far-oversized bodies are cut by waitress itself; the apps answer the rest in kind.
                max_request_body_size=2 * self.settings.max_body_bytes,
            )
        except OSError as exc:
            raise _cannot_listen(setting, host, port, exc.strerror or str(exc)) from exc
        thread = threading.Thread(target=server.run, name=f"tasktree-{name}", daemon=True)
        thread.start()
        self._http_servers.append(server)
        self._threads.append(thread)
        return server.effective_port

    def stop(self) -> None:
        self.docker.close()  # first: its last spans go to our own OTLP receiver
        self.live.close()  # ends the live streams, which would hold server threads
        for server in self._http_servers:
            server.close()
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(5)
        self.folder.stop()
        self.metrics.totals.flush()  # what the last folds finished
        self.pool.close()
        if self.reads.standby is not None:
            self.reads.standby.close()

    def urls(self) -> dict[str, str]:
        host = _in_url(self.settings.host)
        return {
            "ui": f"http://{host}:{self.web_port}/",
            "api": f"http://{host}:{self.web_port}/api/runs",
            "otlp_http": f"http://{host}:{self.otlp_http_port}{TRACES_PATH}",
            "otlp_grpc": f"{host}:{self.otlp_grpc_port}",
        }
