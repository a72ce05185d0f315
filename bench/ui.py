"""Web UI speed in Chromium: a run page whose root has 100,000 children in a run of 1,000,000 tasks.

    .venv/bin/python bench/ui.py [--tasks 1000000] [--repeat 7] [--past-days 365]
                                 [--database-url postgresql://...]

Creates a scratch database (migrated, dropped at the end), builds the run with a few set-based
statements (the root; 100,000 children; the rest spread under them as grandchildren), starts a real
``tasktree serve`` on it, and drives Debian's Chromium with Playwright:

* first paint of the run page: from navigation start until the tree (the root and the first page
  of its 100,000 children) has been drawn and a frame painted (the page's own
  ``tasktree-tree-ready`` mark), median of ``--repeat`` fresh loads; the browser's first
  contentful paint is shown beside it;
* the next page of children: from the click on "load more" until the new rows are painted,
  median of ``--repeat`` clicks (pages 2, 3, ...);
* the failures list (issue 15): the page a root's "N error" count links to, the root's subtree's
  failed tasks newest first (about 10,000 of the 1,000,000: every 97th task), from navigation
  start to its load event, first page and next page, median of ``--repeat`` fresh loads (read
  from the paths index of migration 0012, whose entries the build writes as the fold would);

beside a reference measured in the same run: the load of a page that reads nothing from the
database (``/search`` without a query), so the figures can be compared across machines as ratios.
Targets: first paint under 1 s, next page under 200 ms.  ``--past-days``: the database holds that
many earlier days' partitions of ``tasks`` too, as one kept that long does.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
import urllib.request

import psycopg
from scratch import (  # bench/scratch.py: the script's folder
    ADMIN,
    add_past_days,
    scratch_database,
    start_server,
)

from tasktree.exporter.store.partitions import ensure_current

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
TRACE = bytes.fromhex("5be1a1ce5c0f4f0e9d2b6a3c1e0f9a11")
CHILDREN = 100_000
BASE_NS = 1_795_000_000_000_000_000

# Task i: 0 the root; 1..CHILDREN its children; the rest grandchildren, task i under child
# 1 + i % CHILDREN.  Span ids are 8-byte big-endian i + 1; every 97th task failed; the last 100
# are still running.  Child counts and rollups are set afterwards from the rows themselves.  The
# failed and running tasks get their paths (store/subtree_paths.py: trace id, then span ids from
# the root down), the others none, as the fold leaves them.
BUILD = ["""
INSERT INTO resources (id, digest, job, attributes)
VALUES (1, '\\x02', 'bench-ui', '{"service.name": "bench-ui", "host.name": "bench-host"}')
""", """
INSERT INTO tasks (trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns,
                   heartbeat_ns, status_message, resource_id, scope, attributes, events, links,
                   received_ns, path)
SELECT %(trace)s, int8send(i + 1),
       CASE WHEN i = 0 THEN NULL WHEN i <= %(children)s THEN int8send(1)
            ELSE int8send(2 + i %% %(children)s) END,
       CASE WHEN i = 0 THEN 'nightly' WHEN i <= %(children)s THEN 'partition-' || i
            ELSE 'chunk-' || i END, 1,
       CASE WHEN i >= %(tasks)s - 100 THEN 1 WHEN i %% 97 = 0 AND i > 0 THEN 4 ELSE 3 END,
       %(base)s + i * 1000,
       CASE WHEN i = 0 THEN %(base)s + %(tasks)s * 1000 + 5000000
            WHEN i >= %(tasks)s - 100 THEN NULL ELSE %(base)s + i * 1000 + 5000000 END,
       CASE WHEN i >= %(tasks)s - 100 THEN %(base)s + i * 1000 END,
       CASE WHEN i %% 97 = 0 AND i > 0 THEN 'disk full on /var' ELSE '' END,
       1, 'bench', jsonb_build_object('item', i), '[]', '[]', %(base)s,
       CASE WHEN NOT (i >= %(tasks)s - 100 OR (i %% 97 = 0 AND i > 0)) THEN NULL
            WHEN i <= %(children)s THEN ARRAY[%(trace)s, int8send(1), int8send(i + 1)]
            ELSE ARRAY[%(trace)s, int8send(1), int8send(2 + i %% %(children)s), int8send(i + 1)]
       END
FROM generate_series(0, %(tasks)s - 1) AS i
"""]
ROLLUPS = ["""
WITH agg AS (
    SELECT parent_span_id AS id, count(*) AS n, count(*) FILTER (WHERE status = 3) AS ok,
           count(*) FILTER (WHERE status = 4) AS error,
           count(*) FILTER (WHERE status = 1) AS running
    FROM tasks WHERE trace_id = %(trace)s AND parent_span_id <> int8send(1)
    GROUP BY parent_span_id
)
UPDATE tasks t SET child_count = agg.n, n_ok = agg.ok, n_error = agg.error, n_running = agg.running
FROM agg WHERE t.trace_id = %(trace)s AND t.span_id = agg.id
""", """
UPDATE tasks SET child_count = %(children)s,
       (n_ok, n_error, n_running) = (
           SELECT count(*) FILTER (WHERE status = 3), count(*) FILTER (WHERE status = 4),
                  count(*) FILTER (WHERE status = 1)
           FROM tasks WHERE trace_id = %(trace)s AND span_id <> int8send(1))
WHERE trace_id = %(trace)s AND span_id = int8send(1)
""", """
INSERT INTO runs (trace_id, job, name, status, start_ns, end_ns, n_ok, n_error, n_running,
                  n_stalled, task_count, root_count, last_received_ns)
SELECT %(trace)s, 'bench-ui', 'nightly', 3, min(start_ns),
       max(end_ns) FILTER (WHERE parent_span_id IS NULL),
       count(*) FILTER (WHERE status = 3), count(*) FILTER (WHERE status = 4),
       count(*) FILTER (WHERE status = 1), 0, count(*), 1, max(received_ns)
FROM tasks WHERE trace_id = %(trace)s
"""]


def build(url: str, tasks: int) -> None:
    """Fill the scratch database with the one big run, rollups consistent, statistics fresh."""
    params = {"trace": TRACE, "tasks": tasks, "children": CHILDREN, "base": BASE_NS}
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_current(conn)  # the run's rows go to today's partition, as the fold puts them
        for step, statements in (("tasks", BUILD), ("rollups", ROLLUPS)):
            started = time.perf_counter()
            with conn.transaction():
                for text in statements:
                    conn.execute(text, params)
            print(f"built {step} in {time.perf_counter() - started:.1f} s", flush=True)
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE runs")


ROOT_ID = (1).to_bytes(8, "big").hex()
NEXT_PAGE_JS = """async () => {
    const group = document.querySelector('[role=treeitem][data-span-id="ROOT_ID"] > .children');
    const before = group.children.length;
    const started = performance.now();
    group.querySelector(':scope > .more').click();
    await new Promise((done) => {
        const check = () => group.children.length > before ? done() : requestAnimationFrame(check);
        check();
    });
    await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
    return performance.now() - started;
}""".replace("ROOT_ID", ROOT_ID)


def measure(base: str, repeat: int) -> dict[str, float]:
    """Median milliseconds: the reference page load, run page first paint (and FCP), next page."""
    from playwright.sync_api import sync_playwright

    run_url = f"{base}/runs/{TRACE.hex()}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        reference, ready, fcp = [], [], []
        for _ in range(repeat + 1):  # the first of each is a warm-up (caches, connections)
            page = context.new_page()
            page.goto(f"{base}/search", wait_until="load")
            reference.append(page.evaluate(LOAD_MS))
            page.goto(run_url)
            page.wait_for_function("document.body.dataset.treeReady === '1'")
            ready.append(page.evaluate("performance.getEntriesByName('tasktree-tree-ready')[0].startTime"))
            fcp.append(page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? NaN"))
            page.close()
        page = context.new_page()
        page.goto(run_url)
        page.wait_for_function("document.body.dataset.treeReady === '1'")
        next_page = [page.evaluate(NEXT_PAGE_JS) for _ in range(repeat + 1)]
        failed_url = f"{run_url}/tasks?node={ROOT_ID}&status=error"
        failures, failures_next = _failures_list(context, failed_url, repeat)
        browser.close()
    api_url = f"{base}/api/runs/{TRACE.hex()}/tasks/{ROOT_ID}/subtree?status=error&limit=50"
    api = [_get_ms(api_url) for _ in range(repeat + 1)]
    return {
        "reference: page without a query (load)": statistics.median(reference[1:]),
        "run page: first contentful paint": statistics.median(fcp[1:]),
        "run page: tree painted (first paint)": statistics.median(ready[1:]),
        "next page of 100 children": statistics.median(next_page[1:]),
        FAILURES: statistics.median(failures[1:]),
        "failures list: next page (load)": statistics.median(failures_next[1:]),
        "failures API: first page of 50 (JSON)": statistics.median(api[1:]),
    }


FAILURES = "failures list: first page (load)"
LOAD_MS = "performance.getEntriesByType('navigation')[0].loadEventEnd"


def _failures_list(context, url: str, repeat: int) -> tuple[list[float], list[float]]:
    """Load times (ms) of the root's failures list, its first page and the next (fresh loads;
    the first of each a warm-up)."""
    first, second = [], []
    for _ in range(repeat + 1):
        page = context.new_page()
        page.goto(url, wait_until="load")
        first.append(page.evaluate(LOAD_MS))
        rows = page.locator("#listed-tasks tr.task").count()
        assert rows == 50, f"the failures list shows {rows} tasks, not a page of 50"
        next_url = page.locator("#next-page").get_attribute("href")
        page.goto(context_base(url) + next_url, wait_until="load")
        second.append(page.evaluate(LOAD_MS))
        page.close()
    return first, second


def _get_ms(url: str) -> float:
    """Milliseconds of one GET, from sending the request to the last byte of the answer."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return 1000 * (time.perf_counter() - started)


def context_base(url: str) -> str:
    """``http://host:port`` of a page's URL."""
    return "/".join(url.split("/")[:3])


TARGETS = {"run page: tree painted (first paint)": 1000.0, "next page of 100 children": 200.0,
           FAILURES: 200.0}


def report(figures: dict[str, float], args: argparse.Namespace) -> None:
    reference = figures["reference: page without a query (load)"]
    failed = len(range(97, args.tasks - 100, 97))
    print(f"\none run of {args.tasks:,} tasks, the root has {CHILDREN:,} children, {failed:,} "
          f"of them failed, {args.past_days} past days; median of {args.repeat} in Chromium")
    for what, ms in figures.items():
        target = TARGETS.get(what)
        verdict = "" if target is None else (f"  ok (< {target:.0f} ms)" if ms < target
                                              else f"  OVER {target:.0f} ms")
        print(f"  {what:40} {ms:8.1f} ms  {ms / reference:6.2f} x reference{verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--past-days", type=int, default=0,
                        help="day partitions of earlier days the database holds too")
    parser.add_argument("--database-url", default=ADMIN, help="an admin URL of the server to use")
    args = parser.parse_args(argv)
    if args.tasks < CHILDREN + 1:
        parser.error(f"--tasks must be at least {CHILDREN + 1}")
    with scratch_database("tasktree_bench_ui", args.database_url) as url:
        add_past_days(url, args.past_days)  # migrates
        build(url, args.tasks)
        server, urls = start_server(url)
        try:
            report(measure(urls["ui"].rstrip("/"), args.repeat), args)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
