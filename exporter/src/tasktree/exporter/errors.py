"""The service's error classes.  Each carries its HTTP status; one handler per edge maps them."""

from __future__ import annotations

import logging
import math


class TasktreeError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(TasktreeError):
    status = 400
    code = "bad_request"


class Unauthorized(TasktreeError):
    """No credential, or one that matches no configured token."""

    status = 401
    code = "unauthorized"


class Forbidden(TasktreeError):
    """A valid credential whose role may not do this (a viewer asking for an operator's action)."""

    status = 403
    code = "forbidden"


class CsrfRejected(Forbidden):
    """A change asked for with the session cookie but without the session's CSRF token."""

    code = "csrf_token_missing"


class Conflict(TasktreeError):
    status = 409
    code = "conflict"


class NotFound(TasktreeError):
    status = 404
    code = "not_found"


class PayloadTooLarge(TasktreeError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TasktreeError):
    status = 415
    code = "unsupported_media_type"


class Overloaded(TasktreeError):
    """Too much unfolded work queued; the client should retry after ``retry_after`` seconds."""

    status = 429
    code = "overloaded"


class TooManyWrongTokens(TasktreeError):
    """This client address gave too many tokens that match nothing; it may try again after
    ``retry_after`` seconds."""

    status = 429
    code = "too_many_wrong_tokens"


class HostUnavailable(TasktreeError):
    """The docker host could not be reached or failed (HTTP 502: the fault is upstream)."""

    status = 502
    code = "docker_host_unavailable"


class TooManyStreams(TasktreeError):
    """Every live event stream this process allows is open; the page polls instead."""

    status = 503
    code = "too_many_streams"


class RoutingError(TasktreeError):
    """No route for the path (404) or the method (405): werkzeug's routing error with its
    status, for the edges that answer every error in their own format (OTLP/HTTP)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class StoreUnavailable(TasktreeError):
    """PostgreSQL cannot be reached (or no connection came free in time)."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 5.0):
        super().__init__(message, retry_after=retry_after)


# -- the one JSON mapping (used by every blueprint's error handlers) ------------------------------


def error_headers(exc: TasktreeError, retry_after: float | None) -> dict[str, str]:
    """The headers of any answer to ``exc``: ``Retry-After`` when the client may retry after
    ``retry_after`` seconds, and the Bearer challenge with a 401."""
    headers = {}
    if retry_after is not None:
        # Whole seconds (RFC 9110): rounded up, never shortening the wait, and at least 1.
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tasktree"'
    return headers


def json_error(exc: TasktreeError):
    """``{"error": {"code", "message"}}`` with the error's status, Retry-After and, for 401,
    the challenge."""
    from flask import jsonify

    response = jsonify(error={"code": exc.code, "message": exc.message})
    response.status_code = exc.status
    response.headers.update(error_headers(exc, exc.retry_after))
    return response


def json_http_error(exc):
    """A werkzeug ``HTTPException`` (unknown route, wrong method …) in the same JSON shape."""
    from flask import jsonify

    code = (exc.name or "error").lower().replace(" ", "_")
    response = jsonify(error={"code": code, "message": exc.description or exc.name})
    response.status_code = exc.code or 500
    for name, value in exc.get_headers():
        if name.lower() == "allow":  # a 405 says which methods the route has
            response.headers[name] = value
    return response


def json_unexpected(exc: Exception):
    """Any other exception: logged with its traceback, answered as a JSON 500 without details."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, HTTPException):
        return json_http_error(exc)
    logging.getLogger("tasktree.exporter").exception(
        "unhandled error in %s %s", request.method, request.path
    )
    response = jsonify(error={"code": "internal", "message": "internal error; see the server log"})
    response.status_code = 500
    return response
