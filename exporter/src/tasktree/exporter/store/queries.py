"""Read queries behind the JSON API: small functions over the named blocks of ``queries.sql``.

Every function takes an open ``psycopg.Connection`` (borrow one with ``store.pool.connection``,
which turns "database unreachable" into ``StoreUnavailable``), blocks for one or two round trips,
and returns plain dicts of stored values: ids as ``bytes``, times as Unix nanoseconds, status as
the codes of ``tree.status``.  Turning them into JSON is the API's business.

Lists are pages read by keyset: pass ``after``, the ``Page.next_after`` key of the previous page
(``None`` for the first page).  Keys are tuples of stored values, validated by the caller:

===========  =================================================  ==============================
function     order                                              key
===========  =================================================  ==============================
list_runs    start desc, trace id desc                          (start_ns | None, trace_id)
run_roots    start (placeholders, without one, last), span id  (start_ns | None, span_id)
children     start, span id                                     (start_ns, span_id)
subtree_tasks start desc, span id desc (or both ascending)      (start_ns, span_id)
search_tasks start desc, trace id, span id                      (start_ns | None, trace_id, span_id)
===========  =================================================  ==============================

The functions that read one run's tasks take its day, ``day`` (``runs.run_day``, in ``get_run``'s
row; ``day_of_run`` reads it alone): its tasks are in that day's partition, and naming it keeps the
cost of a read the same however many days the store keeps.  Left out, it is looked up first.  A run
that is not stored has no tasks: its reads answer None or an empty page.

The search box (``q``): up to 32 hex digits are a trace id, or a prefix of one (in ``search_tasks``
also a span id prefix, when 16 digits or fewer); anything else, or anything in double quotes, is
words, each matched as a word prefix, all words required: over the job and run name in
``list_runs`` (PostgreSQL's ``simple`` text-search configuration), over name, status message and
attribute values in ``search_tasks`` (the words of ``tasktree.exporter.search``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from tasktree.exporter import search
from tasktree.exporter.tree.status import FLAGGED, sql_list

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
MAX_ROOTS = 1000
"""``run_roots``' page size when none is asked for (``runs.root_count`` has them all)."""
NODE_MESSAGE_CHARS = 200
"""A node's status message is cut to this many characters (``status_head`` holds one more, which
says it was cut); the task's own page shows it whole."""

_HEX = re.compile(r"[0-9a-fA-F]{1,32}")
_NAME = re.compile(r"^-- name: (\S+)\s*$", re.MULTILINE)

Row = dict[str, Any]
Params = dict[str, Any]  # a statement's named parameters
Key = tuple[Any, ...]  # a row's place in its list's order: where the next page starts


@dataclass(frozen=True)
class Page:
    """One page of rows; ``next_after`` is the key to pass as ``after`` for the next, or None."""

    rows: list[Row]
    next_after: Key | None


@dataclass(frozen=True)
class SearchBox:
    """What the text of a search box means: hex digits of an id (prefix), or words."""

    hex: str | None = None
    words: str | None = None


# ---------------------------------------------------------------------------------------------
# Loading and composing the named blocks


@functools.cache
def blocks() -> dict[str, str]:
    """The blocks of ``queries.sql`` by name, comment lines removed (read once per process)."""
    text = resources.files("tasktree.exporter.store").joinpath("queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    found = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        # Whole-line comments go: a filter block ending in one would swallow the next filter.
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


def statement(name: str, filters: Iterable[str] = (), **slots: sql.Composable) -> sql.Composed:
    """Block ``name`` with its column lists and ``{where}`` filled by the named filter blocks.

    Only text of ``queries.sql`` is composed here; every value stays a bound parameter.
    """
    text = blocks()
    where = sql.SQL("\n").join(sql.SQL(text[f]) for f in filters)
    return sql.SQL(text[name]).format(
        run_columns=sql.SQL(text["run_columns"]),
        node_columns=sql.SQL(text["node_columns"]).format(
            message_head=sql.Literal(NODE_MESSAGE_CHARS + 1)
        ),
        flagged=sql.SQL(sql_list(FLAGGED)),
        where=where,
        **slots,
    )


def _rows(conn: psycopg.Connection, query: sql.Composed, params: Params) -> list[Row]:
    # prepare=False: always a plan for these values (prefix ranges, page size and the folded
    # tsquery constant matter to the plan); a cached generic plan could pick a worse index.
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params, prepare=False).fetchall()


def _page(
    conn: psycopg.Connection,
    query: sql.Composed,
    params: Params,
    limit: int,
    key: Callable[[Row], Key],
) -> Page:
    """Run ``query`` for ``limit`` + 1 rows: the extra row only says that a next page exists."""
    rows = _rows(conn, query, {**params, "limit": limit + 1})
    if len(rows) <= limit:
        return Page(rows, None)
    del rows[limit:]
    return Page(rows, key(rows[-1]))


# ---------------------------------------------------------------------------------------------
# The search box and id prefixes


def search_box(q: str | None) -> SearchBox:
    """Classify a search box's text (see the module docstring); blank text means no search."""
    q = (q or "").strip()
    if len(q) >= 2 and q[0] == q[-1] == '"':
        q = q[1:-1].strip()
        return SearchBox(words=q or None)
    if _HEX.fullmatch(q):
        return SearchBox(hex=q.lower())
    return SearchBox(words=q or None)


def prefix_bounds(digits: str, size: int) -> tuple[bytes, bytes]:
    """The smallest and largest ``size``-byte ids starting with hex ``digits`` (odd counts too)."""
    width = 2 * size
    return bytes.fromhex(digits.ljust(width, "0")), bytes.fromhex(digits.ljust(width, "f"))


# ---------------------------------------------------------------------------------------------
# Runs


def list_runs(
    conn: psycopg.Connection,
    *,
    job: str | None = None,
    status: int | None = None,
    q: str | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    limit: int = 100,
    after: Key | None = None,
) -> Page:
    """Runs newest first; each filter given is ANDed.  ``from_ns`` <= start < ``to_ns``."""
    params = {"job": job, "status": status, "from_ns": from_ns, "to_ns": to_ns}
    filters = _filters("runs", params)
    filters += _runs_search(search_box(q), params)
    filters += _after("runs", after, params, ("after_start", "after_trace"))
    return _page(conn, statement("list_runs", filters), params, limit, _run_key)


def _filters(family: str, params: Params) -> list[str]:
    """The filter blocks (``runs.job``, ``search.from``, ...) of the parameters that are set."""
    return [
        f"{family}.{name.removesuffix('_ns')}"
        for name, value in params.items()
        if value is not None
    ]


def _runs_search(box: SearchBox, params: Params) -> list[str]:
    """The filter for the runs list's search box, its parameters added to ``params``."""
    if box.hex is not None:
        params["trace_lo"], params["trace_hi"] = prefix_bounds(box.hex, TRACE_ID_BYTES)
        exact = len(box.hex) == 2 * TRACE_ID_BYTES
        return ["runs.trace_id" if exact else "runs.trace_prefix"]
    if box.words is not None:
        params["words"] = box.words
        return ["runs.words"]
    return []


def _after(family: str, after: Key | None, params: Params, names: tuple[str, ...]) -> list[str]:
    """The keyset filter continuing after ``after`` (start first; a None start: unstarted rows)."""
    if after is None:
        return []
    params.update(zip(names, after, strict=True))
    return [f"{family}.after" if after[0] is not None else f"{family}.after_unstarted"]


def _run_key(row: Row) -> Key:
    return (row["start_ns"], row["trace_id"])


def get_run(conn: psycopg.Connection, trace_id: bytes) -> Row | None:
    """The run's row, or None when no span of that trace has been folded yet."""
    rows = _rows(conn, statement("get_run"), {"trace_id": trace_id})
    return rows[0] if rows else None


def day_of_run(conn: psycopg.Connection, trace_id: bytes) -> int | None:
    """The run's day (the partition of its tasks), or None when no such run is stored."""
    rows = _rows(conn, statement("day_of_run"), {"trace_id": trace_id})
    return rows[0]["run_day"] if rows else None


def recent_jobs(conn: psycopg.Connection, limit: int) -> list[str]:
    """The names of the ``limit`` jobs heard from most recently."""
    return [row["job"] for row in _rows(conn, statement("recent_jobs"), {"limit": limit})]


def similar_jobs(conn: psycopg.Connection, job: str, limit: int) -> list[str]:
    """``[job]`` when a job has exactly that name; else up to ``limit`` jobs whose name holds
    it, case ignored (the same name in another case first)."""
    rows = _rows(conn, statement("similar_jobs"), {"job": job, "limit": limit})
    names = [row["job"] for row in rows]
    return [job] if job in names else names


def _of_run(conn: psycopg.Connection, trace_id: bytes, day: int | None) -> Params | None:
    """The parameters naming a run and its day (looked up unless given); None: no such run."""
    if day is None:
        day = day_of_run(conn, trace_id)
        if day is None:
            return None
    return {"trace_id": trace_id, "run_day": day}


def run_roots(
    conn: psycopg.Connection,
    trace_id: bytes,
    *,
    day: int | None = None,
    limit: int = MAX_ROOTS,
    after: Key | None = None,
) -> Page:
    """Top-level tasks of a run: real roots by start time (then span id), then missing-parent
    placeholders by span id.  Unknown run: an empty page."""
    params = _of_run(conn, trace_id, day)
    if params is None:
        return Page([], None)
    filters = _after("roots", after, params, ("after_start", "after_span"))
    if filters == ["roots.after"]:  # the rest of the started tasks, then every placeholder
        return _page(conn, statement("run_roots_after"), params, limit, _child_key)
    return _page(conn, statement("run_roots", filters), params, limit, _child_key)


# ---------------------------------------------------------------------------------------------
# Tasks


def get_task(
    conn: psycopg.Connection, trace_id: bytes, span_id: bytes, *, day: int | None = None
) -> Row | None:
    """One task with its details and its resource's ``job`` and attributes (``resource``)."""
    params = _of_run(conn, trace_id, day)
    if params is None:
        return None
    rows = _rows(conn, statement("get_task"), {**params, "span_id": span_id})
    return rows[0] if rows else None


def task_exists(
    conn: psycopg.Connection, trace_id: bytes, span_id: bytes, *, day: int | None = None
) -> bool:
    """Whether the tree holds that task (a placeholder counts)."""
    params = _of_run(conn, trace_id, day)
    return params is not None and bool(
        _rows(conn, statement("task_exists"), {**params, "span_id": span_id})
    )


def children(
    conn: psycopg.Connection,
    trace_id: bytes,
    span_id: bytes,
    *,
    day: int | None = None,
    limit: int = 100,
    after: Key | None = None,
) -> Page:
    """Direct children of a task by start time, then span id.  Unknown task: an empty page."""
    params = _of_run(conn, trace_id, day)
    if params is None:
        return Page([], None)
    params["span_id"] = span_id
    filters = _after("children", after, params, ("after_start", "after_span"))
    return _page(conn, statement("children", filters), params, limit, _child_key)


def _child_key(row: Row) -> Key:
    return (row["start_ns"], row["span_id"])


def subtree_tasks(
    conn: psycopg.Connection,
    trace_id: bytes,
    span_id: bytes | None,
    status: int,
    *,
    day: int | None = None,
    limit: int = 100,
    after: Key | None = None,
    oldest_first: bool = False,
) -> Page:
    """The tasks in ``status`` (one of ``tree.status.FLAGGED``) of task ``span_id``'s subtree,
    itself included (``None``: of the whole run), newest first (or oldest first), by index."""
    if status not in FLAGGED:
        raise ValueError(f"subtrees list only the statuses {FLAGGED}, not {status}")
    params = _of_run(conn, trace_id, day)
    if params is None:
        return Page([], None)
    top = span_id if span_id is not None else trace_id  # a path starts with its trace id
    params.update(top=top, status=status)
    family = "subtree_oldest" if oldest_first else "subtree"
    filters = _after(family, after, params, ("after_start", "after_span"))
    name = "subtree_tasks_oldest_first" if oldest_first else "subtree_tasks"
    return _page(conn, statement(name, filters), params, limit, _child_key)


def search_tasks(
    conn: psycopg.Connection,
    *,
    q: str | None = None,
    job: str | None = None,
    status: int | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    limit: int = 100,
    after: Key | None = None,
) -> Page:
    """Tasks newest first matching the search box and every filter given (see module docstring).

    Rows are nodes plus ``job`` (of the task's resource).  ``job`` filters by that resource too.
    """
    params = {"job": job, "status": status, "from_ns": from_ns, "to_ns": to_ns}
    filters = _filters("search", params)
    filters += _after("search", after, params, ("after_start", "after_trace", "after_span"))
    box = search_box(q)
    if box.hex is None:
        if box.words is not None:
            params["words"] = search.query(box.words)
            filters.append("search.words")
        else:
            filters.append("search.recorded")
        return _page(conn, statement("search_by_text", filters), params, limit, _search_key)
    return _page(conn, _search_ids(box.hex, filters, params), params, limit, _search_key)


def _search_ids(digits: str, filters: list[str], params: Params) -> sql.Composed:
    """The id search: trace id prefix, merged with span id prefix when ``digits`` could be one."""
    params["trace_lo"], params["trace_hi"] = prefix_bounds(digits, TRACE_ID_BYTES)
    by_trace = statement("search_by_trace", filters)
    if len(digits) > 2 * SPAN_ID_BYTES:
        return by_trace
    params["span_lo"], params["span_hi"] = prefix_bounds(digits, SPAN_ID_BYTES)
    by_span = statement("search_by_span", filters)
    return statement("search_merge", by_span=by_span, by_trace=by_trace)


def _search_key(row: Row) -> Key:
    return (row["start_ns"], row["trace_id"], row["span_id"])
