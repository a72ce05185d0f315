"""The web application on the service's main port: JSON API, web UI, /metrics and /healthz."""

from __future__ import annotations

import psycopg_pool
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from tasktree.exporter.errors import TasktreeError, json_error, json_http_error
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
    return json_http_error(exc)


error_response = json_error  # the app-wide handler of TasktreeError
