"""With ``--workers N`` the fold counters on the server's /metrics count what its fold workers
folded too: a worker serves no /metrics of its own, so its folds were counted nowhere (10,000
spans accepted, ``tasktree_folded_spans_total`` up by 9,000).

The serving process folds too, and it is woken at once by what it receives, so these tests make
sure a worker folds: they freeze the serving process (SIGSTOP) and land spans behind its back,
as ``test_live_workers.py`` does."""

from __future__ import annotations

import json
import os
import time
import urllib.request

import psutil
import psycopg

from ..spans import sid, span
from .faults_support import (
    frozen,
    land_behind_ingest,
    metric_values,
    wait_until_landing_is_empty,
)


def test_with_two_workers_metrics_counts_the_spans_the_fold_worker_folded(
    start_tasktree, private_db
):
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    _send_spans(server, 60)
    server.wait_folded()
    with frozen(server.proc.pid):  # only the worker can fold these
        _land_spans(private_db, 40)
        wait_until_landing_is_empty(private_db)
    _wait_for_metric(server, "tasktree_folded_spans_total", 100)
    seen = metric_values(server)
    assert seen["tasktree_ingest_spans_accepted_total"] == 60
    assert seen["tasktree_folded_spans_total"] == 100  # nothing counted twice
    assert seen["tasktree_stall_transitions_total"] == 0
    assert seen["tasktree_fold_timeouts_total"] == 0


def test_the_fold_counters_keep_a_fold_worker_s_counts_after_it_died(start_tasktree, private_db):
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    with frozen(server.proc.pid):
        _land_spans(private_db, 30)
        wait_until_landing_is_empty(private_db)
    _wait_for_metric(server, "tasktree_folded_spans_total", 30)
    (worker,) = psutil.Process(server.proc.pid).children()
    worker.kill()  # SIGKILL, as the OOM killer would
    worker.wait(10)  # the server reaps it
    _send_spans(server, 20)
    server.wait_folded()
    _wait_for_metric(server, "tasktree_folded_spans_total", 50)  # never down: 30 stay counted
    assert f"fold worker {worker.pid} exited (-9)" in server.log_path.read_text()


def test_two_servers_with_workers_on_one_database_each_count_their_own_folds_once(
    start_tasktree, private_db
):
    a = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    b = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    _send_spans(a, 30)
    _send_spans(b, 20)
    a.wait_folded()
    with frozen(a.proc.pid), frozen(b.proc.pid):  # only the two workers can fold these
        _land_spans(private_db, 50)
        wait_until_landing_is_empty(private_db)
    deadline = time.monotonic() + 15
    while (total := _summed(a, b)) != 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert total == 100, f"sum of tasktree_folded_spans_total across both servers: {total}"
    time.sleep(1.5)  # a worker reports about once a second: nothing more may come
    assert _summed(a, b) == 100


def test_a_fold_worker_s_failed_writes_of_the_job_series_show_on_its_server(
    start_tasktree, private_db
):
    """A fold worker that could not add finished tasks to the job series (metric_totals) said
    so only in its log: its server's tasktree_metrics_write_errors_total stayed 0."""
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    refuse = "ALTER TABLE metric_totals ADD CONSTRAINT no_test_job CHECK (job <> 'test-job')"
    with psycopg.connect(private_db, autocommit=True) as conn:  # a site's constraint refuses them
        conn.execute(refuse)
    assert metric_values(server)["tasktree_metrics_write_errors_total"] == 0
    with frozen(server.proc.pid):  # only the worker folds these, and fails to count them
        _land_spans(private_db, 10)
        wait_until_landing_is_empty(private_db)
    deadline = time.monotonic() + 15
    while metric_values(server)["tasktree_metrics_write_errors_total"] < 1:
        assert time.monotonic() < deadline, "the worker's failed write never showed"
        time.sleep(0.2)


def _summed(*servers) -> float:
    return sum(metric_values(s)["tasktree_folded_spans_total"] for s in servers)


def _wait_for_metric(server, name: str, value: float, timeout: float = 15.0) -> None:
    """Until /metrics shows ``value``; a fold worker reports about once a second.  Also
    that it stays there (no late report counted twice)."""
    deadline = time.monotonic() + timeout
    while (seen := metric_values(server)[name]) != value:
        assert seen < value, f"{name} went past {value}: {seen}"
        assert time.monotonic() < deadline, f"{name} is {seen}, not {value}"
        time.sleep(0.2)
    time.sleep(1.5)
    assert metric_values(server)[name] == value


def _send_spans(server, count: int, per_request: int = 10) -> None:
    """``count`` finished one-span runs over OTLP/HTTP JSON, ``per_request`` a request."""
    for first in range(0, count, per_request):
        spans = [
            {
                "traceId": os.urandom(16).hex(),
                "spanId": os.urandom(8).hex(),
                "name": f"t{i}",
                "startTimeUnixNano": "1000",
                "endTimeUnixNano": "2000",
            }
            for i in range(first, min(count, first + per_request))
        ]
        body = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
        request = urllib.request.Request(
            server.otlp_http + "/v1/traces",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=30).close()


def _land_spans(database_url: str, count: int) -> None:
    """``count`` finished one-span runs, landed behind the servers' ingest."""
    land_behind_ingest(
        database_url, [span(os.urandom(16), sid(1), name="landed") for _ in range(count)]
    )


def test_a_fold_worker_that_died_is_replaced_and_its_replacement_folds(start_tasktree, private_db):
    """A fold worker killed (SIGKILL, the OOM killer) was never replaced: the server folded
    with one process fewer for the rest of its life, and nothing in /metrics said so."""
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    assert _worker_gauges(server) == (1, 0)
    (dead,) = psutil.Process(server.proc.pid).children()
    dead.kill()
    replacement = _replacement(server, dead.pid)
    assert _worker_gauges(server) == (1, 1)
    log = server.log_path.read_text()
    assert f"fold worker {dead.pid} exited (-9)" in log
    assert f"fold worker {replacement.pid} started in place of {dead.pid}" in log
    with frozen(server.proc.pid):  # only the replacement can fold these
        _land_spans(private_db, 30)
        wait_until_landing_is_empty(private_db)
    _wait_for_metric(server, "tasktree_folded_spans_total", 30)


def test_fold_workers_that_keep_dying_are_replaced_after_longer_and_longer_waits(
    start_tasktree, private_db
):
    """A worker that dies as it starts must not make a crash loop that eats the CPU."""
    server = start_tasktree(extra_args=("--workers", "2"), database=private_db)
    (worker,) = psutil.Process(server.proc.pid).children()
    for wait_s in (1, 2, 4):
        worker.kill()
        worker = _replacement(server, worker.pid)
        assert f"starting another in {wait_s} s" in server.log_path.read_text()
    assert _worker_gauges(server) == (1, 3)


def test_fold_workers_that_end_as_the_server_stops_are_not_replaced(start_tasktree, private_db):
    """systemd (and Ctrl-C in a terminal) signals every process of the service at once: the
    workers end while their server stops, and one killed just before is not replaced either."""
    server = start_tasktree(extra_args=("--workers", "3"), database=private_db)
    killed, other = psutil.Process(server.proc.pid).children()
    killed.kill()
    killed.wait(10)
    for process in (other, psutil.Process(server.proc.pid)):
        process.terminate()
    assert server.proc.wait(30) == 0
    other.wait(10)
    log = server.log_path.read_text()
    assert "started in place of" not in log, log
    assert not _fold_workers_of(server.proc.pid)


def _worker_gauges(server) -> tuple[float, float]:
    """(fold workers running, fold workers restarted) on the server's /metrics."""
    seen = metric_values(server)
    return seen["tasktree_fold_workers"], seen["tasktree_fold_worker_restarts_total"]


def _replacement(server, dead_pid: int, timeout: float = 30.0) -> psutil.Process:
    """The fold worker the server started in place of ``dead_pid``."""
    deadline = time.monotonic() + timeout
    while True:
        children = [c for c in psutil.Process(server.proc.pid).children() if c.pid != dead_pid]
        if children and f"started in place of {dead_pid}" in server.log_path.read_text():
            (replacement,) = children
            return replacement
        assert time.monotonic() < deadline, f"fold worker {dead_pid} was not replaced"
        time.sleep(0.2)


def _fold_workers_of(server_pid: int) -> list[psutil.Process]:
    """Fold workers, wherever they were reparented, that ``server_pid`` started."""
    mark = ["--parent-pid", str(server_pid)]
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(cmdline[i : i + 2] == mark for i in range(len(cmdline) - 1)):
            found.append(process)
    return found
