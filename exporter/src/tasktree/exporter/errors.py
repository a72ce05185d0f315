"""The service's error classes.  Each carries its HTTP status; one handler per edge maps them."""

from __future__ import annotations


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


class StoreUnavailable(TasktreeError):
    """PostgreSQL cannot be reached (or no connection came free in time)."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 5.0):
        super().__init__(message, retry_after=retry_after)
