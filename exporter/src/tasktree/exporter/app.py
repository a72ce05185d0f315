"""The web application on the service's main port: JSON API, web UI, /metrics and /healthz."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg_pool
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wrappers import Response as BaseResponse

from tasktree.exporter.errors import TasktreeError, json_error, json_http_error
from tasktree.exporter.metrics import mount as mount_metrics
from tasktree.exporter.metrics.store_metrics import STORE_WAIT_S
from tasktree.exporter.services import Services, current_services, install_services
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import connection

if TYPE_CHECKING:
    from tasktree.exporter.background import Folder
    from tasktree.exporter.docker import DockerService
    from tasktree.exporter.ingest import Ingestor
    from tasktree.exporter.live import LocalBus
    from tasktree.exporter.metrics import ServiceMetrics
    from tasktree.exporter.store.replication import ReadRoute


class _JSONProvider(DefaultJSONProvider):
    sort_keys = False  # the API's objects keep the order their fields are documented in


def create_app(
    settings: Settings,
    pool: psycopg_pool.ConnectionPool,
    *,
    folder: Folder | None = None,
    ingest: Ingestor | None = None,
    docker: DockerService | None = None,
    live: LocalBus | None = None,
    metrics: ServiceMetrics | None = None,
    secret_key: str | None = None,
    reads: ReadRoute | None = None,
) -> Flask:
    """Build the Flask app; the services are kept in ``app.extensions`` (``services.py``)."""
    from tasktree.exporter.api import api_blueprint

    app = Flask(__name__)
    app.json = _JSONProvider(app)
    services = Services(
        settings,
        pool,
        folder=folder,
        ingest=ingest,
        docker=docker,
        live=live,
        metrics=metrics,
        secret_key=secret_key,
        reads=reads,
    )
    install_services(app, services)
    from tasktree.exporter.auth import HEALTH_PATH, guard_anonymous_reads
    from tasktree.exporter.auth import install as install_auth  # issue 7: session cookie, CSRF

    install_auth(app)
    guard_anonymous_reads(app)
    app.register_blueprint(api_blueprint)
    from tasktree.exporter.docker import docker_blueprint  # issue 6: /api/docker/... and /docker

    app.register_blueprint(docker_blueprint)
    from tasktree.exporter.ui import install_ui  # issue 4: pages and /api/live/... streams

    install_ui(app)
    app.add_url_rule(HEALTH_PATH, view_func=_healthz)
    mount_metrics(app)  # issue 5: /metrics (with the docker hosts' families)
    app.register_error_handler(TasktreeError, error_response)
    app.register_error_handler(HTTPException, _api_http_error)
    return app


def _healthz() -> Response:
    # Within a load balancer's or Prometheus's timeout, even with every connection held up.
    with connection(current_services().pool, STORE_WAIT_S) as conn:
        conn.execute("SELECT 1")
    return jsonify({"status": "ok"})


def _api_http_error(exc: HTTPException) -> BaseResponse:
    """An unknown ``/api/`` path or a wrong method there answers JSON like every API error (the
    blueprints' own handlers never see routing errors); everywhere else Flask's page stays."""
    if request.path == "/api" or request.path.startswith("/api/"):
        if isinstance(exc, NotFound):
            exc = NotFound(
                f"no API route {request.method} {request.path}: the routes are listed in"
                " /api/openapi.json"
            )
        return json_http_error(exc)
    return exc.get_response()


error_response = json_error  # the app-wide handler of TasktreeError
