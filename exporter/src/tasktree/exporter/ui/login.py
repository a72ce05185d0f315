"""Signing in to the web UI: ``GET/POST /login`` (a viewer or operator token) and ``POST /logout``.

Signing in starts a fresh session cookie (``auth.sign_in``); both forms carry the session's CSRF
token in a hidden field, so another site can neither sign a visitor in as someone else nor sign
them out.  A wrong token answers 401 and is never echoed back or logged; too many from one
address answer 429 for a while (``auth.WrongTokens``).
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request, url_for

from tasktree.exporter import auth
from tasktree.exporter.errors import Forbidden, TooManyWrongTokens, Unauthorized, error_headers

login_blueprint = Blueprint("login", __name__, template_folder="templates")


@login_blueprint.after_request
def _headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@login_blueprint.get("/login")
def login_page():
    """The sign-in form; ``next`` is where to go afterwards (a path on this server)."""
    _whoever()
    return _form(status=200)


@login_blueprint.post("/login")
def login():
    _whoever()
    if not auth.csrf_matches():
        return _form(403, "The sign-in form had expired. Please try again.")
    try:
        principal = auth.sign_in(request.form.get("token", "").strip())
    except TooManyWrongTokens as exc:
        response = _form(429, f"Too many wrong tokens: {exc.message}.")
        response.headers.update(error_headers(exc, exc.retry_after))
        return response
    if principal is None:
        return _form(401, "That token matches no viewer or operator token.")
    return redirect(_safe_next(request.form.get("next")), code=303)


@login_blueprint.post("/logout")
def logout():
    if auth.csrf_matches():
        auth.sign_out()
        return redirect(url_for("login.login_page", signed_out=1), code=303)
    _whoever()
    return _form(403, "Signing out needs the page's CSRF token: reload the page and try again.")


def _whoever() -> None:
    """Look at the credential the request carries (for the page's header); a wrong bearer token,
    a forged cookie or a missing CSRF token just means nobody is shown as signed in here."""
    try:
        auth.authenticate()
    except (Unauthorized, Forbidden, TooManyWrongTokens):
        pass


def _form(status: int, error: str | None = None):
    body = render_template(
        "login.html", error=error, next=_safe_next(request.values.get("next")),
        signed_out=bool(request.args.get("signed_out")),
    )
    return Response(body, status=status, mimetype="text/html")


def _safe_next(target: str | None) -> str:
    """``target`` if it is a path on this server, else ``/`` (no open redirect to another site)."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"
    return target
