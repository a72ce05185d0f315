"""The web UI: server-rendered pages (Flask + Jinja) and small hand-written JavaScript.

    from tasktree.exporter.ui import install_ui
    install_ui(app)      # in create_app: the pages, their static files and the live streams

Every page is sent with a Content-Security-Policy that allows only this server's own scripts and
styles (no inline script, no eval), so even a span field that slipped through as markup could
not run.  Fields are rendered as text in the first place: Jinja autoescapes, and the scripts
only ever set ``textContent``.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from typing import TypeVar

from flask import Flask, Response, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse  # what redirect() returns

from tasktree.exporter.errors import TasktreeError, Unauthorized, error_headers
from tasktree.exporter.services import EXTENSION
from tasktree.exporter.ui import format as fmt
from tasktree.exporter.ui.views import ui_blueprint

__all__ = ["install_ui", "ui_blueprint", "with_security_headers"]

logger = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def install_ui(app: Flask) -> None:
    """Register the pages and the live event streams on ``app`` (the bus: ``Services.live``),
    and the pages' security headers on every answer of ``app``."""
    from tasktree.exporter import auth
    from tasktree.exporter.ui.live import bus_of, live_blueprint
    from tasktree.exporter.ui.login import login_blueprint

    # Every answer, not only the pages': a browser must not sniff a JSON body, /metrics or a
    # docker page's script into something else, and Flask's own 404 and 405 pages are pages too.
    app.after_request(with_security_headers)
    auth.install(app)  # the session cookie the pages sign in with
    app.register_blueprint(ui_blueprint)
    app.register_blueprint(login_blueprint)
    app.register_blueprint(live_blueprint)
    bus_of(app)  # an app built without a bus (tests) gets an idle local one


@ui_blueprint.app_template_global()
def static_url(filename: str) -> str:
    """URL of a static file with its content hash, so browsers never run yesterday's script."""
    return f"/static/ui/{filename}?v={_static_version(filename)}"


@ui_blueprint.app_template_global()
def replica_lag() -> float | None:
    """Seconds what a page shows is behind, when it is read from a standby that lags (issue 17:
    every page then says so); else None."""
    services = current_app.extensions.get(EXTENSION)
    reads = services.reads if services is not None else None
    return reads.lag_notice() if reads is not None else None


_VERSIONS: dict[str, str] = {}


def _static_version(filename: str) -> str:
    if filename not in _VERSIONS:
        data = resources.files("tasktree.exporter.ui").joinpath("static", filename).read_bytes()
        _VERSIONS[filename] = hashlib.sha256(data).hexdigest()[:12]
    return _VERSIONS[filename]


for _name, _filter in fmt.FILTERS.items():
    ui_blueprint.add_app_template_filter(_filter, _name)


@ui_blueprint.before_request
def _authenticate() -> BaseResponse | None:
    """Pages need what reading the API needs (anonymous only on loopback without tokens); a
    browser without a credential is sent to ``/login``, and back here afterwards."""
    if request.endpoint == "ui.static":
        return None
    return require_page()


def require_page() -> BaseResponse | None:
    """None when the request may read; else a redirect to ``/login`` (GET) or ``Unauthorized``."""
    from tasktree.exporter import auth

    if auth.authenticate() is not None:
        return None
    if request.method in ("GET", "HEAD"):
        here = request.full_path.rstrip("?") if request.query_string else request.path
        return redirect(url_for("login.login_page", next=here))
    raise Unauthorized("this page needs a viewer sign-in (/login)")


_AnyResponse = TypeVar("_AnyResponse", bound=BaseResponse)


def with_security_headers(response: _AnyResponse) -> _AnyResponse:
    """``response`` with the pages' security headers (those it sets itself kept)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@ui_blueprint.errorhandler(TasktreeError)
def _error_page(exc: TasktreeError):
    """Any tasktree error as an HTML page with its status (and Retry-After when it has one)."""
    body = render_template("error.html", status=exc.status, code=exc.code, message=exc.message)
    response = Response(body, status=exc.status, mimetype="text/html")
    response.headers.update(error_headers(exc, exc.retry_after))
    return response
