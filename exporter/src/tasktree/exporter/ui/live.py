"""The pages' live event streams: ``GET /api/live/runs`` and ``GET /api/live/runs/<trace_id>``.

Server-sent events that say "changed" when the runs a page shows changed (the bus is the app's,
``tasktree.exporter.live``); the page then re-fetches through the JSON API.  Events carry no
tree data.  Each open stream holds a web server thread until it ends, so the bus caps them: beyond
``max_streams`` a stream answers 503 and the page falls back to polling.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app

from tasktree.exporter.errors import TasktreeError, TooManyStreams, Unauthorized, json_error
from tasktree.exporter.live import LocalBus, Subscription
from tasktree.exporter.services import services_of

__all__ = ["bus_of", "live_blueprint"]

KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing an idle stream and finds gone clients."""
COALESCE_S = 0.3
"""At most one event per run stream this often: a busy run changes at every fold (milliseconds)."""
COALESCE_LIST_S = 1.0
"""The same for the runs list's streams, which hear of every run's changes."""
STREAM_MAX_S = 600.0
"""A stream ends after this long; the browser reconnects (and re-fetches), spreading load."""

live_blueprint = Blueprint("live", __name__, url_prefix="/api/live")


def bus_of(app: Flask) -> LocalBus:
    """The app's bus; an app built without one gets a local, idle bus."""
    services = services_of(app)
    if services.live is None:
        services.live = LocalBus()
    return services.live


@live_blueprint.before_request
def _authenticate() -> None:
    from tasktree.exporter import auth

    if auth.authenticate() is None:
        raise Unauthorized(
            "this stream needs a viewer sign-in (/login) or the header "
            "Authorization: Bearer <viewer token>"
        )


live_blueprint.register_error_handler(TasktreeError, json_error)


@live_blueprint.get("/runs")
def runs_stream() -> Response:
    """Events for the runs list: ``changed`` whenever any run changed."""
    return _stream_response(None, COALESCE_LIST_S)


@live_blueprint.get("/runs/<trace_id>")
def run_stream(trace_id: str) -> Response:
    """Events for one run's pages: ``changed`` whenever that run's tree changed."""
    from tasktree.exporter.api import params

    return _stream_response(params.trace_id(trace_id), COALESCE_S)


def _stream_response(trace_id: bytes | None, pause: float) -> Response:
    bus = bus_of(current_app)
    subscription = bus.subscribe(trace_id)
    if subscription is None:
        raise TooManyStreams(
            "too many live streams open on this server; poll instead", retry_after=30
        )
    response = Response(
        _events(bus, subscription, STREAM_MAX_S, pause), mimetype="text/event-stream"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _events(
    bus: LocalBus, subscription: Subscription, lifetime: float, pause: float
) -> Iterator[str]:
    """The stream: an opening comment, then ``changed`` events (at most one per ``pause``
    seconds) and keep-alive comments.

    Runs on a web server thread for the stream's life; ends at ``lifetime``, at shutdown, or at
    the first write after the client went away (the server then closes this generator).
    """
    try:
        # "retry" is the browser's reconnect delay; the comment makes the response start at once.
        yield "retry: 2000\n: open\n\n"
        deadline = time.monotonic() + lifetime
        while not subscription.closed and time.monotonic() < deadline:
            timeout = min(KEEPALIVE_S, max(0.0, deadline - time.monotonic()))
            if subscription.wait(timeout):
                yield "event: changed\ndata: {}\n\n"
                time.sleep(pause)
            elif not subscription.closed:
                yield ": keepalive\n\n"
    finally:
        bus.unsubscribe(subscription)
