"""Test support for the JSON API: a Flask app around the blueprint, and tree rows written with SQL.

``insert_run`` writes tasks, their resources and the run row directly (no ingest, no folding),
with child counts, rollups and run summary computed here the way design.md §2 defines them, so
API tests control every stored value and can state the exact JSON they expect.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from flask import Flask

from tasktree.exporter.api import api_blueprint
from tasktree.exporter.search import document_words
from tasktree.exporter.services import Services, install_services
from tasktree.exporter.settings import Settings
from tasktree.exporter.store.pool import open_pool
from tasktree.exporter.tree import status as st

T0 = 1_795_714_406_123_456_789
"""2026-11-26T17:33:26.123456789Z"""
SECOND = 1_000_000_000


def at(seconds: float) -> int:
    """Unix nanoseconds ``seconds`` after T0 (whole nanoseconds only)."""
    return T0 + round(seconds * SECOND)


@dataclass
class Task:
    """One row of ``tasks``; ``parent`` and ``span`` are hex.  A placeholder: ``missing=True``."""

    span: str
    parent: str | None = None
    name: str | None = "task"
    status: int = st.OK
    start: int | None = T0
    end: int | None = T0 + SECOND
    missing: bool = False
    message: str | None = ""
    attributes: dict | None = field(default_factory=dict)
    events: list | None = field(default_factory=list)
    links: list | None = field(default_factory=list)
    heartbeat: int | None = None
    kind: int | None = 1
    scope: str | None = "tests"
    truncated: bool = False
    resource: dict | None = None  # resource attributes; service.name is the job


def placeholder(span: str) -> Task:
    """A missing-parent placeholder: no payload, no status of its own, no parent."""
    return Task(
        span,
        None,
        name=None,
        status=st.NONE,
        start=None,
        end=None,
        missing=True,
        message=None,
        attributes=None,
        events=None,
        links=None,
        kind=None,
        scope=None,
    )


def create_test_app(settings: Settings, pool) -> Flask:
    """The smallest app the blueprint runs in (what the app factory does for it)."""
    app = Flask("tasktree-api-tests")
    app.json.sort_keys = False
    install_services(app, Services(settings, pool))
    app.register_blueprint(api_blueprint)
    return app


# The rows these tests write by hand live in the database no server runs against: the session's
# shared ``tasktree serve`` folds and sweeps the other one, and its stall sweeper turned a sample
# run's running task (a heartbeat days old) stalled between two requests of a test.
@pytest.fixture(scope="module")
def api_pool(store_database_url):
    pool = open_pool(store_database_url, max_size=2)
    pool.wait()
    yield pool
    pool.close()


@pytest.fixture
def db(clean_store_db, api_pool):
    """An autocommit connection to the emptied test database, for writing rows."""
    with psycopg.connect(clean_store_db, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(db, api_pool):
    return create_test_app(Settings(), api_pool).test_client()


# ---------------------------------------------------------------------------------------------
# Writing a run


def insert_run(
    conn: psycopg.Connection,
    trace: str,
    tasks: list[Task],
    *,
    job: str = "nightly",
    dropped: int = 0,
) -> None:
    """Write ``tasks`` of run ``trace`` with consistent child counts, rollups and run row."""
    ids = {t.span: t for t in tasks}
    rollups = _rollups(tasks, ids)
    for task in tasks:
        resource = task.resource or {"service.name": job}
        resource_id = None if task.missing else _resource_id(conn, resource)
        params = _task_params(trace, task, resource_id, rollups[task.span])
        conn.execute(_INSERT_TASK, (*params, _path(trace, task, ids)))
    conn.execute(_INSERT_RUN, _run_params(trace, tasks, job, dropped))


def _path(trace: str, task: Task, ids: dict[str, Task]) -> list[bytes]:
    """The stored path (migration 0012): the trace id, then span ids from the top down."""
    path, at = [], task
    while at is not None:
        path.insert(0, bytes.fromhex(at.span))
        at = ids[at.parent] if at.parent is not None else None
    return [bytes.fromhex(trace), *path]


def _rollups(tasks: list[Task], ids: dict[str, Task]) -> dict[str, list[int]]:
    """Per task: [child_count, ok, error, running, stalled] over its descendants."""
    out = {t.span: [0, 0, 0, 0, 0] for t in tasks}
    for task in tasks:
        if task.parent is not None:
            out[task.parent][0] += 1
        ancestor = task.parent
        while ancestor is not None and not task.missing:
            out[ancestor][1 + st.COUNT_INDEX[task.status]] += 1
            ancestor = ids[ancestor].parent
    return out


def _resource_id(conn: psycopg.Connection, attributes: dict) -> int:
    text = json.dumps(attributes, sort_keys=True)
    digest = hashlib.sha256(text.encode()).digest()
    row = conn.execute(
        "INSERT INTO resources (digest, job, attributes) VALUES (%s, %s, %s)"
        " ON CONFLICT (digest) DO UPDATE SET job = EXCLUDED.job RETURNING id",
        (digest, attributes.get("service.name"), text),
    ).fetchone()
    return row[0]


_INSERT_TASK = """
INSERT INTO tasks (trace_id, span_id, parent_span_id, missing, name, kind, status, start_ns, end_ns,
                   heartbeat_ns, status_message, resource_id, scope, attributes, events, links,
                   truncated, child_count, n_ok, n_error, n_running, n_stalled, search, path)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        array_to_tsvector(array_remove(string_to_array(%s, ' '), '')), %s)
"""


def _task_params(trace: str, t: Task, resource_id: int | None, rollup: list[int]) -> tuple:
    return (
        bytes.fromhex(trace),
        bytes.fromhex(t.span),
        _maybe_hex(t.parent),
        t.missing,
        t.name,
        t.kind,
        t.status,
        t.start,
        t.end,
        t.heartbeat,
        t.message,
        resource_id,
        t.scope,
        _json(t.attributes),
        _json(t.events),
        _json(t.links),
        t.truncated,
        *rollup,
        None if t.missing else _search_words(t),
    )


def _search_words(t: Task) -> str:
    """The search document as ingest stores it."""
    attributes = json.dumps(t.attributes or {})
    return document_words(f"{t.name or ''} {t.message or ''} {attributes}")


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value)


def _maybe_hex(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value is not None else None


_INSERT_RUN = """
INSERT INTO runs (trace_id, job, name, status, start_ns, end_ns, n_ok, n_error, n_running,
                  n_stalled, task_count, root_count, dropped_spans)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


# Stated here again rather than read from tree.status: the oracle of a run's status.
_WORST_FIRST = (st.ERROR, st.STALLED, st.RUNNING, st.OK)


def _run_params(trace: str, tasks: list[Task], job: str, dropped: int) -> tuple:
    """The run row as the folder keeps it: status and name of the (worst) real root."""
    real = [t for t in tasks if not t.missing]
    roots = [t for t in real if t.parent is None]
    counts = [sum(t.status == code for t in real) for code in st.COUNTED]
    worst = min(roots, key=lambda t: _WORST_FIRST.index(t.status)) if roots else None
    first = min(roots, key=lambda t: (t.start, t.span)) if roots else None
    ended = roots and all(t.end is not None for t in roots)
    return (
        bytes.fromhex(trace),
        job,
        first.name if first else None,
        worst.status if worst else st.RUNNING,
        min(t.start for t in real),
        max(t.end for t in roots) if ended else None,
        *counts,
        len(real),
        len(roots),
        dropped,
    )


# ---------------------------------------------------------------------------------------------
# Reading answers


def get_json(client, url: str, status: int = 200) -> Any:
    """GET ``url``, check the status and the JSON content type, return the decoded body."""
    response = client.get(url)
    body = response.get_data(as_text=True)
    assert response.status_code == status, (url, response.status_code, body)
    assert response.mimetype == "application/json"
    return response.get_json()


def walk(
    client, url: str, key: str, *, limit: int, cursor_key: str = "next_cursor"
) -> list[list[dict]]:
    """Every page of a paginated list, following ``cursor_key`` until it is null."""
    pages, cursor, seen = [], None, set()
    separator = "&" if "?" in url else "?"
    while True:
        page_url = f"{url}{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        body = get_json(client, page_url)
        pages.append(body[key])
        cursor = body[cursor_key]
        if cursor is None:
            return pages
        assert len(body[key]) == limit, "only the last page may be short"
        assert cursor not in seen and len(pages) < 1000, "pagination does not advance"
        seen.add(cursor)
