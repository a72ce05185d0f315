"""The web application on the service's main port: JSON API, web UI, /metrics and /healthz."""

from __future__ import annotations

import psycopg_pool
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from tasktree.exporter.errors import TasktreeError
from tasktree.exporter.metrics import mount as mount_metrics
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import connection


def create_app(settings: Settings, pool: psycopg_pool.ConnectionPool, **services) -> Flask:
    """Build the Flask app.  ``services`` (e.g. the folder) are kept in ``app.extensions``."""
    from tasktree.exporter.api import api_blueprint

    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["tasktree"] = {"settings": settings, "pool": pool, **services}
    from tasktree.exporter.auth import install as install_auth  # issue 7: session cookie, CSRF
    install_auth(app)
    app.register_blueprint(api_blueprint)
    from tasktree.exporter.docker import docker_blueprint  # issue 6: /api/docker/... and /docker
    app.register_blueprint(docker_blueprint)
    from tasktree.exporter.ui import install_ui  # issue 4: pages and /api/live/... streams
    install_ui(app)
    app.add_url_rule("/healthz", view_func=_healthz)
    mount_metrics(app)  # issue 5: /metrics (with the docker hosts' families)
    app.register_error_handler(TasktreeError, error_response)
    app.register_error_handler(HTTPException, _api_http_error)
    return app


def _healthz():
    from flask import current_app

    pool = current_app.extensions["tasktree"]["pool"]
    with connection(pool) as conn:
        conn.execute("SELECT 1")
    return jsonify({"status": "ok"})


def _api_http_error(exc: HTTPException):
    """An unknown ``/api/`` path or a wrong method there answers JSON like every API error (the
    blueprints' own handlers never see routing errors); everywhere else Flask's page stays."""
    if not request.path.startswith("/api/"):
        return exc
    code = (exc.name or "error").lower().replace(" ", "_")
    response = jsonify({"error": {"code": code, "message": exc.description or exc.name}})
    response.status_code = exc.code or 500
    for name, value in exc.get_headers():
        if name.lower() == "allow":  # 405 says which methods the route has
            response.headers[name] = value
    return response


def error_response(exc: TasktreeError):
    """The one JSON error shape: {"error": {"code", "message"}} with the error's HTTP status."""
    response = jsonify({"error": {"code": exc.code, "message": exc.message}})
    response.status_code = exc.status
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response
