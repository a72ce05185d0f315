"""The services a running web app's views use, in one typed object.

``create_app`` puts them in ``app.extensions["tasktree"]`` (Flask's place for what an extension
keeps per app); views reach them with ``current_services()``.  An app built in a test holds only
what it needs: the settings, often a pool, seldom the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from flask import Flask, current_app

from tasktree.exporter.settings import Settings

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

    from tasktree.exporter.auth import TokenTable
    from tasktree.exporter.background import Folder
    from tasktree.exporter.docker import DockerService
    from tasktree.exporter.ingest import Ingestor
    from tasktree.exporter.live import LocalBus
    from tasktree.exporter.metrics import ServiceMetrics
    from tasktree.exporter.store.replication import ReadRoute

T = TypeVar("T")

__all__ = ["EXTENSION", "Services", "current_services", "install_services", "services_of"]

EXTENSION = "tasktree"
"""The key of the services in ``app.extensions``."""


@dataclass
class Services:
    settings: Settings
    pool: psycopg_pool.ConnectionPool
    folder: Folder | None = None
    ingest: Ingestor | None = None
    docker: DockerService | None = None
    """Docker host management; None: not enabled in this process (its routes answer 404)."""
    live: LocalBus | None = None
    """The live-update bus; None until ``install_ui`` gives the app an idle local one."""
    metrics: ServiceMetrics | None = None
    """None until ``/metrics`` is mounted, which builds one when ``create_app`` got none."""
    secret_key: str | None = None
    """The session signing key ``Service`` loaded (``auth.load_secret_key``)."""
    tokens: TokenTable | None = None
    """The configured tokens, parsed at the first request (``auth``)."""
    auth_installed: bool = False
    """Whether ``auth.install`` configured the session cookie already (it runs once)."""
    reads: ReadRoute | None = None
    """Where the API, pages and ``/metrics`` read (issue 17); None: the primary ``pool``."""

    def read(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on a read replica when one is configured and answers, else on the
        primary (``StoreUnavailable`` when neither answers).  For reads only."""
        if self.reads is None:
            from tasktree.exporter.store.replication import ReadRoute

            self.reads = ReadRoute(self.pool, None)
        return self.reads.run(work)


def install_services(app: Flask, services: Services) -> Services:
    app.extensions[EXTENSION] = services
    return services


def services_of(app: Flask) -> Services:
    services: Services = app.extensions[EXTENSION]
    return services


def current_services() -> Services:
    """The services of the app handling the current request."""
    return services_of(current_app)
