"""The JSON API blueprint (design.md §4): runs, one run, one task, children, search, OpenAPI.

Wiring (the app factory): ``install_services(app, Services(settings, pool))`` then
``app.register_blueprint(api_blueprint)``.  Views run on the server's request threads and
block on PostgreSQL for one or two short queries on one pooled connection.  Errors are raised,
never caught in views: the blueprint's handlers turn every ``TasktreeError`` into
``{"error": {"code", "message"}}`` with its HTTP status (and Retry-After when it has one).
Reading needs what ``tasktree.exporter.auth`` asks of a viewer (a bearer token once any viewer
token or ``TASKTREE_AUTH_TOKEN`` is configured); ``/api/openapi.json`` is public.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import psycopg
from flask import Blueprint, Response, current_app, request

from tasktree.exporter import auth
from tasktree.exporter.api import params, shapes
from tasktree.exporter.errors import (
    NotFound,
    TasktreeError,
    Unauthorized,
    json_error,
    json_unexpected,
)
from tasktree.exporter.services import current_services
from tasktree.exporter.store import queries

logger = logging.getLogger(__name__)

api_blueprint = Blueprint("api", __name__, url_prefix="/api")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Plumbing: the store, errors, authentication


def _read(work: Callable[[psycopg.Connection], T]) -> T:
    """Run ``work`` on a pooled connection, a read replica's when configured (StoreUnavailable
    when there is none)."""
    return current_services().read(work)


api_blueprint.register_error_handler(TasktreeError, json_error)
# Clients of a JSON API get JSON for everything, a bug included; the traceback goes to the log.
api_blueprint.register_error_handler(Exception, json_unexpected)


@api_blueprint.before_request
def _authenticate() -> None:
    """Reading needs a viewer (``tasktree.exporter.auth``: anonymous only on loopback without
    tokens); the OpenAPI document is public."""
    if request.endpoint != "api.openapi" and auth.authenticate() is None:
        raise Unauthorized(
            "this API needs the header Authorization: Bearer <viewer token> "
            "(or a browser signed in at /login)"
        )


def _arg(name: str) -> str | None:
    return request.args.get(name)


# ---------------------------------------------------------------------------------------------
# Routes


@api_blueprint.get("/runs")
def list_runs() -> dict[str, Any]:
    """Runs newest first, filtered by job, status, search box and start time range."""
    limit = params.limit(_arg("limit"))
    filters = {
        **params.filters(request.args),
        "q": params.text(_arg("q"), "q"),
        "after": params.decode_cursor("runs", _arg("cursor")),
    }
    page = _read(lambda conn: queries.list_runs(conn, limit=limit, **filters))
    return {
        "runs": [shapes.run(row) for row in page.rows],
        "next_cursor": params.encode_cursor("runs", page.next_after),
    }


@api_blueprint.get("/runs/<trace_id>")
def get_run(trace_id: str) -> dict[str, Any]:
    """One run and a page of its top-level tasks: the real root(s), then missing-parent
    placeholders; ``roots_next_cursor`` pages on (``limit`` default: ``queries.MAX_ROOTS``)."""
    trace = params.trace_id(trace_id)
    limit = params.limit(_arg("limit"), default=queries.MAX_ROOTS)
    after = params.decode_cursor("roots", _arg("cursor"))

    def read(conn: psycopg.Connection) -> tuple[dict | None, queries.Page | None]:
        row = queries.get_run(conn, trace)
        if row is None:
            return None, None
        return row, queries.run_roots(conn, trace, day=row["run_day"], limit=limit, after=after)

    row, page = _read(read)
    if row is None or page is None:
        raise NotFound(f"no run with trace id {trace.hex()}")
    return {
        **shapes.run(row),
        "roots": [shapes.node(root) for root in page.rows],
        "roots_next_cursor": params.encode_cursor("roots", page.next_after),
    }


@api_blueprint.get("/runs/<trace_id>/tasks/<span_id>")
def get_task(trace_id: str, span_id: str) -> dict[str, Any]:
    """One task with attributes, resource, events, links, status message and last heartbeat."""
    trace, span = params.trace_id(trace_id), params.span_id(span_id)
    row = _read(lambda conn: queries.get_task(conn, trace, span))
    if row is None:
        raise NotFound(f"no task {span.hex()} in run {trace.hex()}")
    return shapes.task_detail(row)


@api_blueprint.get("/runs/<trace_id>/tasks/<span_id>/children")
def list_children(trace_id: str, span_id: str) -> dict[str, Any]:
    """A page of a task's direct children, by start time then span id."""
    trace, span = params.trace_id(trace_id), params.span_id(span_id)
    limit = params.limit(_arg("limit"))
    after = params.decode_cursor("children", _arg("cursor"))

    def read(conn: psycopg.Connection) -> queries.Page | None:
        day = queries.day_of_run(conn, trace)
        if day is None or not queries.task_exists(conn, trace, span, day=day):
            return None
        return queries.children(conn, trace, span, day=day, limit=limit, after=after)

    page = _read(read)
    if page is None:
        raise NotFound(f"no task {span.hex()} in run {trace.hex()}")
    return {
        "children": [shapes.node(row) for row in page.rows],
        "next_cursor": params.encode_cursor("children", page.next_after),
    }


@api_blueprint.get("/runs/<trace_id>/tasks")
def list_run_tasks(trace_id: str) -> dict[str, Any]:
    """A page of the run's tasks in one status (running, stalled, error), newest first."""
    trace = params.trace_id(trace_id)
    return _subtree_page(trace, None, f"no run with trace id {trace.hex()}")


@api_blueprint.get("/runs/<trace_id>/tasks/<span_id>/subtree")
def list_subtree(trace_id: str, span_id: str) -> dict[str, Any]:
    """A page of the tasks in one status (running, stalled, error) of a task's subtree (the
    task and all its descendants), newest first."""
    trace, span = params.trace_id(trace_id), params.span_id(span_id)
    return _subtree_page(trace, span, f"no task {span.hex()} in run {trace.hex()}")


def _subtree_page(trace: bytes, span: bytes | None, unknown: str) -> dict[str, Any]:
    status = params.listed_status(_arg("status"))
    limit = params.limit(_arg("limit"))
    after = params.decode_cursor("subtree", _arg("cursor"))

    def read(conn: psycopg.Connection) -> queries.Page | None:
        day = queries.day_of_run(conn, trace)
        if day is None:
            return None
        if span is not None and not queries.task_exists(conn, trace, span, day=day):
            return None
        return queries.subtree_tasks(conn, trace, span, status, day=day, limit=limit, after=after)

    page = _read(read)
    if page is None:
        raise NotFound(unknown)
    return {
        "tasks": [shapes.node(row) for row in page.rows],
        "next_cursor": params.encode_cursor("subtree", page.next_after),
    }


@api_blueprint.get("/search")
def search() -> dict[str, Any]:
    """Tasks newest first: by id (prefix) or keywords, job, status and start time range."""
    limit = params.limit(_arg("limit"))
    filters = {
        **params.filters(request.args),
        "q": params.text(_arg("q"), "q"),
        "after": params.decode_cursor("search", _arg("cursor")),
    }
    page = _read(lambda conn: queries.search_tasks(conn, limit=limit, **filters))
    return {
        "tasks": [shapes.found_task(row) for row in page.rows],
        "next_cursor": params.encode_cursor("search", page.next_after),
    }


@api_blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 description of these routes (``api/openapi.json``, read once)."""
    return current_app.response_class(_openapi_text(), mimetype="application/json")


@functools.cache
def _openapi_text() -> str:
    text = resources.files("tasktree.exporter.api").joinpath("openapi.json").read_text("utf-8")
    json.loads(text)  # a broken file fails here, loudly, rather than in a client
    return text
