"""The web pages (design.md §4): runs, one run's tree, one task, search.

Server-rendered with Jinja (autoescaped: every span field is text).  The tree is drawn by
``static/tree.js`` from the JSON embedded in the page (the same shapes as the JSON API), and every
page then follows the JSON API and the live event streams (``tasktree.exporter.live``).

Views run on the web server's threads and block on PostgreSQL for a few short queries on one
pooled connection.  Errors are raised, never caught in views: the blueprint's handler renders
them as an HTML page with their status (a malformed id is 400, an unknown one 404).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import psycopg
from flask import Blueprint, redirect, render_template, request, url_for

from tasktree.exporter import search
from tasktree.exporter.api import params, shapes
from tasktree.exporter.errors import NotFound
from tasktree.exporter.services import current_services
from tasktree.exporter.settings import Settings
from tasktree.exporter.store import queries
from tasktree.exporter.tree import status as task_status
from tasktree.exporter.ui import format as fmt
from tasktree.instrumentation.decorator import PROGRESS_DONE, PROGRESS_RATIO, PROGRESS_TOTAL
from tasktree.instrumentation.snapshot import LIVE_ATTRIBUTE

# The attributes set_progress() writes, as the task page (and its script) reads them.
PROGRESS_KEYS = {"ratio": PROGRESS_RATIO, "done": PROGRESS_DONE, "total": PROGRESS_TOTAL}

ui_blueprint = Blueprint(
    "ui",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static/ui",
)

RUNS_PAGE = 50
JOBS_OFFERED = 500
"""The job input of the runs page offers the names of this many jobs, the latest heard from."""
JOBS_SUGGESTED = 5
"""A job filter that names no job suggests up to this many jobs whose name holds it."""
CHILDREN_PAGE = 100
SEARCH_PAGE = 50
LIST_PAGE = 50
MAX_ANCESTORS = 64
"""Breadcrumbs stop this many levels up (one primary-key read each), and say that they do."""
EVENTS_SHOWN = 100
"""The task page shows a task's last this many events (a job that logs each row as an event has
20,000: all of them made an 8.7 MB page); the JSON API has them all."""
ATTRIBUTES_SHOWN = 500
"""... and its first this many attributes, links, resource attributes and variables, by name."""
FILTER_NAMES = ("job", "status", "from", "to")
T = TypeVar("T")


def _read(work: Callable[[psycopg.Connection], T]) -> T:
    """Run ``work`` on a pooled connection, a read replica's when configured (StoreUnavailable,
    a 503 page, when there is none)."""
    return current_services().read(work)


def _args() -> dict[str, str]:
    """The query string without blank values: an empty form field means "no filter"."""
    return {key: value for key, value in request.args.items() if value.strip() != ""}


# ---------------------------------------------------------------------------------------------
# Runs


@ui_blueprint.get("/")
def runs_page() -> str:
    """Runs newest first, filtered by job, status and time range; ``cursor`` pages on."""
    args = _args()
    filters = params.filters(args)  # BadRequest: a 400 page
    after = params.decode_cursor("runs", args.get("cursor"))
    job = filters["job"] if after is None else None  # a later page: the job had runs

    def read(conn: psycopg.Connection):
        page = queries.list_runs(conn, limit=RUNS_PAGE, after=after, **filters)
        similar = queries.similar_jobs(conn, job, JOBS_SUGGESTED) if job and not page.rows else []
        return page, queries.recent_jobs(conn, JOBS_OFFERED), similar

    page, jobs, similar = _read(read)
    kept: dict[str, Any] = {name: args[name] for name in FILTER_NAMES if name in args}
    next_cursor = params.encode_cursor("runs", page.next_after)
    # What the page re-fetches from the JSON API when the live stream says runs changed.
    api_query = urlencode(
        {**kept, **{k: args[k] for k in ("cursor",) if k in args}, "limit": RUNS_PAGE}
    )
    return render_template(
        "runs.html",
        runs=[shapes.run(row) for row in page.rows],
        args=kept,
        filter_links=_filter_links("ui.runs_page", kept),
        statuses=list(task_status.CODES),
        jobs=jobs,
        job_hint=_job_hint(job, similar, kept) if job and not page.rows else None,
        page_size=RUNS_PAGE,
        paged="cursor" in args,
        api_query=api_query,
        next_url=url_for("ui.runs_page", **kept, cursor=next_cursor) if next_cursor else None,
        otlp_endpoint=_otlp_endpoint(),
    )


def _job_hint(job: str, similar: list[str], kept: dict[str, Any]) -> dict[str, Any] | None:
    """What the page says when filtering by ``job`` left no run: nothing when a job has that
    name (the other filters left none), else the jobs it may have meant, as (name, URL) pairs
    with the other filters kept (the filter is exact, as the API's)."""
    if similar == [job]:
        return None
    meant = [(name, url_for("ui.runs_page", **{**kept, "job": name})) for name in similar]
    return {"job": job, "meant": meant}


_RECENT = (("1 h", 3600), ("24 h", 86400), ("7 d", 604800))


def _filter_links(endpoint: str, kept: dict[str, Any]) -> dict[str, Any]:
    """The filter form's shortcuts: the last hour, day, week (the job, status and search box
    kept), and "clear" (the search box kept)."""
    now = int(time.time())
    base: dict[str, Any] = {name: kept[name] for name in ("job", "status", "q") if name in kept}
    return {
        "last": [(label, url_for(endpoint, **{**base, "from": now - s})) for label, s in _RECENT],
        "clear": url_for(endpoint, **{name: kept[name] for name in ("q",) if name in kept}),
    }


def _otlp_endpoint() -> str:
    """Where a job sends OTLP/HTTP: this host, the configured port (the default one when the
    port was left to the system)."""
    port = current_services().settings.otlp_http_port or _DEFAULT_OTLP_HTTP_PORT
    return f"http://{request.host.rsplit(':', 1)[0]}:{port}"


_DEFAULT_OTLP_HTTP_PORT = next(f.default for f in fields(Settings) if f.name == "otlp_http_port")


# ---------------------------------------------------------------------------------------------
# One run: the tree


@ui_blueprint.get("/runs/<trace_id>")
def run_page(trace_id: str) -> str:
    """The run's tree from its top-level tasks, or from task ``node`` when given (a subtree)."""
    trace = params.trace_id(trace_id)
    focus = params.span_id(request.args["node"]) if request.args.get("node") else None
    run, (tops, cursor), crumbs, opened = _read(lambda conn: _tree_start(conn, trace, focus))
    tree = {
        "trace_id": trace.hex(),
        "run": run,
        "roots": tops,
        "roots_next_cursor": cursor,
        "focus": focus and focus.hex(),
        "open": opened,
        "page_size": CHILDREN_PAGE,
    }
    failure = _failure_nav(trace, request.args.get("failure"))
    return render_template(
        "run.html", run=run, tree=tree, crumbs=crumbs, focus=focus, failure=failure
    )


# "first failure" / "next failure": the run's failed tasks oldest first, one at a time, each
# shown as its subtree (its place in the run in the crumbs), the cursor of the one shown in the
# page's URL (``failure``).


def _failure_nav(trace: bytes, shown: str | None) -> dict[str, Any] | None:
    """None without ``failure`` (the page offers "first failure" when the run has one); else
    whether a failure comes after the one shown (one index lookup)."""
    if shown is None:
        return None
    after = params.decode_cursor("failures", shown)
    page = _read(lambda conn: _failures(conn, trace, after, 1))
    return {"cursor": shown, "more": bool(page.rows)}


def _failures(conn: psycopg.Connection, trace: bytes, after: tuple | None, limit: int):
    return queries.subtree_tasks(
        conn, trace, None, task_status.ERROR, limit=limit, after=after, oldest_first=True
    )


@ui_blueprint.get("/runs/<trace_id>/failures")
def next_failure(trace_id: str):
    """Redirect to the run's first failure (oldest first), or the one after ``after``."""
    trace = params.trace_id(trace_id)
    after = params.decode_cursor("failures", request.args.get("after") or None)
    page = _read(lambda conn: _failures(conn, trace, after, 1))
    if not page.rows:
        raise NotFound(f"no failed task in run {trace.hex()} after the one shown")
    row = page.rows[0]
    cursor = params.encode_cursor("failures", (row["start_ns"], row["span_id"]))
    return redirect(
        url_for("ui.run_page", trace_id=trace.hex(), node=row["span_id"].hex(), failure=cursor)
    )


@ui_blueprint.get("/runs/<trace_id>/tasks")
def tasks_page(trace_id: str) -> str:
    """The run's tasks in one status (running, stalled, error), or those of task ``node``'s
    subtree, newest first, a page at a time: where a count of the tree leads."""
    args = _args()
    trace = params.trace_id(trace_id)
    node = params.span_id(args["node"]) if "node" in args else None
    status = params.listed_status(args.get("status"))
    after = params.decode_cursor("subtree", args.get("cursor"))

    def read(conn: psycopg.Connection):
        run, top = queries.get_run(conn, trace), None
        if run is not None and node is not None:
            top = queries.get_task(conn, trace, node, day=run["run_day"])
        if run is None or (node is not None and top is None):
            what = f"task {node.hex()} in run" if node is not None else "run"
            raise NotFound(f"no {what} {trace.hex()}")
        page = queries.subtree_tasks(
            conn, trace, node, status, day=run["run_day"], limit=LIST_PAGE, after=after
        )
        return run, top, page

    run, top, page = _read(read)
    kept: dict[str, Any] = {name: args[name] for name in ("node", "status") if name in args}
    next_cursor = params.encode_cursor("subtree", page.next_after)
    return render_template(
        "tasks.html",
        run=shapes.run(run),
        top=shapes.node(top) if top is not None else None,
        status=task_status.name(status),
        tasks=[shapes.node(r) for r in page.rows],
        paged=after is not None,
        first_url=url_for("ui.tasks_page", trace_id=trace.hex(), **kept),
        next_url=url_for("ui.tasks_page", trace_id=trace.hex(), **kept, cursor=next_cursor)
        if next_cursor
        else None,
    )


def _tree_start(conn: psycopg.Connection, trace: bytes, focus: bytes | None):
    """(run, (top nodes, their next cursor), breadcrumbs of the focus, first child pages of the
    nodes shown open)."""
    row = queries.get_run(conn, trace)
    if row is None:
        raise NotFound(f"no run with trace id {trace.hex()} (yet: spans show once folded)")
    cursor, day = None, row["run_day"]
    if focus is None:
        page = queries.run_roots(conn, trace, day=day, limit=CHILDREN_PAGE)
        tops, crumbs = [shapes.node(r) for r in page.rows], Crumbs([], cut=False)
        cursor = params.encode_cursor("roots", page.next_after)
    else:
        task = queries.get_task(conn, trace, focus, day=day)
        if task is None:
            raise NotFound(f"no task {focus.hex()} in run {trace.hex()}")
        tops, crumbs = [shapes.node(task)], _ancestors(conn, trace, day, task)
    real = [node for node in tops if not node["missing"]]
    shown_open = real[:1] if len(real) == 1 or focus else []
    opened = {
        node["span_id"]: _children_page(conn, trace, day, node)
        for node in shown_open
        if node["child_count"]
    }
    return shapes.run(row), (tops, cursor), crumbs, opened


def _children_page(
    conn: psycopg.Connection, trace: bytes, day: int, node: dict
) -> dict[str, Any]:
    """The first page of a node's children, as ``GET .../children`` answers it."""
    span = bytes.fromhex(node["span_id"])
    page = queries.children(conn, trace, span, day=day, limit=CHILDREN_PAGE)
    return {
        "children": [shapes.node(r) for r in page.rows],
        "next_cursor": params.encode_cursor("children", page.next_after),
    }


class Crumbs(NamedTuple):
    """A task's breadcrumbs: its nearest ancestors from the top down, as {span_id, name,
    missing}, and whether there are more above them (MAX_ANCESTORS)."""

    shown: list[dict[str, Any]]
    cut: bool


def _ancestors(conn: psycopg.Connection, trace: bytes, day: int, task: dict) -> Crumbs:
    """The task's breadcrumbs (one primary-key read per ancestor)."""
    found: list[dict[str, Any]] = []
    parent = task["parent_span_id"]
    while parent is not None and len(found) < MAX_ANCESTORS:
        row = queries.get_task(conn, trace, parent, day=day)
        if row is None:  # not folded yet: the chain ends at a span we cannot show
            break
        found.append({"span_id": parent.hex(), "name": row["name"], "missing": row["missing"]})
        parent = row["parent_span_id"]
    return Crumbs(found[::-1], cut=parent is not None and len(found) == MAX_ANCESTORS)


# ---------------------------------------------------------------------------------------------
# One task


@ui_blueprint.get("/runs/<trace_id>/tasks/<span_id>")
def task_page(trace_id: str, span_id: str) -> str:
    """Everything about one task: ids, status, times, attributes, resource, events, links."""
    trace, span = params.trace_id(trace_id), params.span_id(span_id)

    def read(conn: psycopg.Connection):
        run = queries.get_run(conn, trace)
        row = queries.get_task(conn, trace, span, day=run["run_day"]) if run else None
        if run is None or row is None:
            raise NotFound(f"no task {span.hex()} in run {trace.hex()}")
        return row, run, _ancestors(conn, trace, run["run_day"], row)

    row, run_row, crumbs = _read(read)
    task = shapes.task_detail(row)
    resource, env = fmt.split_resource(task["resource"])
    exceptions = [event for event in task["events"] if event.get("name") == "exception"]
    links = task["links"][:ATTRIBUTES_SHOWN]
    return render_template(
        "task.html",
        task=task,
        run=shapes.run(run_row),
        crumbs=crumbs,
        resource=Shown.first(resource),
        env=Shown.first(env),
        attributes=Shown.first(dict(sorted(task["attributes"].items()))),
        events=Shown(task["events"][-EVENTS_SHOWN:], len(task["events"])),
        links=Shown(links, len(task["links"])),
        failure=(exceptions[-1].get("attributes") or {}) if exceptions else None,
        exception_count=len(exceptions),
        live_attribute=LIVE_ATTRIBUTE,
        stall_after=current_services().settings.stall_after,
        progress_keys=PROGRESS_KEYS,
        link_pages=[_link_page(link) for link in links],
    )


class Shown(NamedTuple):
    """Part of a task's list or mapping that its page shows (``items``), and how many it has."""

    items: Any
    total: int

    @classmethod
    def first(cls, mapping: dict[str, Any]) -> Shown:
        """The first ``ATTRIBUTES_SHOWN`` entries of ``mapping``."""
        return cls(dict(list(mapping.items())[:ATTRIBUTES_SHOWN]), len(mapping))


def _link_page(link: dict[str, Any]) -> str | None:
    """The page of a linked task; None for a link whose ids are not whole (an SDK may send an
    empty or short one), which has no page."""
    trace, span = link.get("trace_id") or "", link.get("span_id") or ""
    if len(trace) != 2 * queries.TRACE_ID_BYTES or len(span) != 2 * queries.SPAN_ID_BYTES:
        return None
    return url_for("ui.task_page", trace_id=trace, span_id=span)


# ---------------------------------------------------------------------------------------------
# Search


@ui_blueprint.get("/search")
def search_page():
    """Runs and tasks for the search box: a run id, a task id (or a prefix), or words.

    A whole trace id of a stored run opens that run; a whole span id found once opens that task.
    """
    args = _args()
    q = params.text(args.get("q"), "q")
    filters = params.filters(args)  # BadRequest: a 400 page
    after = params.decode_cursor("search", args.get("cursor"))
    kept: dict[str, Any] = {name: args[name] for name in (*FILTER_NAMES, "q") if name in args}
    filtered = any(name in args for name in FILTER_NAMES)
    shown = {
        "q": q or "",
        "args": kept,
        "filtered": filtered,
        "statuses": list(task_status.CODES),
        "filter_links": _filter_links("ui.search_page", kept),
    }
    if q is None and not filtered:
        return render_template("search.html", runs=[], tasks=[], next_url=None, **shown)
    # The filters are conditions of the queries themselves (queries.sql: runs.* and search.*).
    runs, page = _read(
        lambda conn: (
            [] if after else queries.list_runs(conn, q=q, limit=SEARCH_PAGE, **filters).rows,
            queries.search_tasks(conn, q=q, limit=SEARCH_PAGE, after=after, **filters),
        )
    )
    target = _exact_hit(q, runs, page.rows) if q is not None and after is None else None
    if target is not None:
        return redirect(target)
    next_cursor = params.encode_cursor("search", page.next_after)
    return render_template(
        "search.html",
        runs=[shapes.run(r) for r in runs],
        tasks=[shapes.found_task(r) for r in page.rows],
        words=search.query_words(q or ""),
        as_ids=queries.search_box(q).hex is not None,  # hex digits only: ids, not words
        next_url=url_for("ui.search_page", **kept, cursor=next_cursor) if next_cursor else None,
        **shown,
    )


def _exact_hit(q: str, runs: list[dict], tasks: list[dict]) -> str | None:
    """The page to open when ``q`` is one whole id that matched exactly one run or task."""
    digits = q.strip().lower()
    if len(digits) == 32 and len(runs) == 1 and runs[0]["trace_id"].hex() == digits:
        return url_for("ui.run_page", trace_id=digits)
    exact = [t for t in tasks if t["span_id"].hex() == digits]
    if len(digits) == 16 and len(exact) == 1:
        return url_for("ui.task_page", trace_id=exact[0]["trace_id"].hex(), span_id=digits)
    return None
