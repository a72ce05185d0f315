"""Reads from a hot standby (issue 17): ``tasktree serve --read-database-url`` serves the API,
pages and ``/metrics`` from the standby, ingest and folding stay on the primary.  A standby whose
replay is paused is reported (``tasktree_read_replica_lag_seconds``, a notice on every page) and
the pages still work; when no standby answers, reads come from the primary."""

from __future__ import annotations

import os
import threading
import time

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from replication_support import Replication

from exporter.tests.integration.faults_support import otlp_request
from tasktree.exporter.store.replication import LAG_NOTICE_S


@pytest.fixture
def replication():
    pair = Replication(synchronous=False)
    yield pair
    pair.close()


def _send_run(server) -> str:
    trace = os.urandom(16)
    body = otlp_request(trace, [(os.urandom(8), None, "nightly", False)], "replica-job")
    answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                           headers={"Content-Type": "application/x-protobuf"})
    assert answer.status_code == 200, answer.text
    return trace.hex()


def _status(server, path: str) -> int:
    return requests.get(server.web + path, timeout=30).status_code


def _replica_metrics(server) -> dict[str, float]:
    text = requests.get(server.web + "/metrics", timeout=30).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("tasktree_read_replica")
    }


def _wait(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.2)
    return value


def test_a_standby_serves_reads_and_a_paused_one_is_reported_behind_while_pages_work(
    replication, start_tasktree
):
    server = start_tasktree(
        database=replication.primary.url(),
        extra_args=("--read-database-url", replication.standby.url()),
    )
    first = _send_run(server)
    server.wait_folded()
    _wait(lambda: _status(server, f"/api/runs/{first}") == 200, "the standby replays the run")
    assert _replica_metrics(server)["tasktree_read_replica_up"] == 1.0
    assert 'id="replica-lag"' not in requests.get(server.web + "/", timeout=30).text

    replication.standby.execute("SELECT pg_wal_replay_pause()")
    second = _send_run(server)
    server.wait_folded()  # on the primary
    lag = _wait(
        lambda: (v := _replica_metrics(server).get("tasktree_read_replica_lag_seconds", 0))
        > LAG_NOTICE_S and v,
        "the metric reports the paused standby behind",
    )
    assert lag > LAG_NOTICE_S
    assert _status(server, f"/api/runs/{second}") == 404  # what the standby has not replayed
    page = requests.get(server.web + "/", timeout=30)
    assert page.status_code == 200
    assert 'id="replica-lag"' in page.text and first in page.text
    assert _status(server, f"/runs/{first}") == 200

    replication.standby.execute("SELECT pg_wal_replay_resume()")
    _wait(lambda: _status(server, f"/api/runs/{second}") == 200, "the standby catches up")
    _wait(lambda: 'id="replica-lag"' not in requests.get(server.web + "/", timeout=30).text,
          "the notice goes once the standby caught up")


def test_reads_fall_back_to_the_primary_when_no_standby_answers(replication, start_tasktree):
    server = start_tasktree(
        database=replication.primary.url(),
        extra_args=("--read-database-url", replication.standby.url()),
    )
    replication.standby.stop()
    trace = _send_run(server)
    server.wait_folded()
    assert _status(server, f"/api/runs/{trace}") == 200
    assert _status(server, f"/runs/{trace}") == 200
    assert _replica_metrics(server) == {"tasktree_read_replica_up": 0.0}


def test_a_read_the_standby_cancels_for_a_recovery_conflict_is_read_again_from_the_primary(
    replication,
):
    """A hot standby cancels a query that holds what replay needs ("conflict with recovery",
    here at once: ``max_standby_streaming_delay = 0``): the page is read from the primary."""
    from tasktree.exporter.store.pool import open_pool
    from tasktree.exporter.store.replication import ReadRoute

    standby, primary = replication.standby, replication.primary
    standby.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0")
    standby.execute("SELECT pg_reload_conf()")
    primary.execute("CREATE TABLE conflict_probe (id int)")
    _wait(lambda: standby.execute("SELECT to_regclass('conflict_probe')") != [(None,)],
          "the standby replays the new table")
    route = ReadRoute(open_pool(primary.url()), open_pool(standby.url(), writable=False))

    def lock_on_the_primary() -> None:
        time.sleep(1.0)  # while the standby's read sleeps holding its lock
        with psycopg.connect(primary.url()) as conn:  # one transaction, committed on exit
            conn.execute("LOCK TABLE conflict_probe IN ACCESS EXCLUSIVE MODE")

    locker = threading.Thread(target=lock_on_the_primary)
    locker.start()
    try:
        read = route.run(lambda conn: conn.execute(
            "SELECT pg_is_in_recovery(), count(*) FROM conflict_probe, pg_sleep(3)").fetchone())
    finally:
        locker.join(30)
        route.primary.close()
        assert route.standby is not None
        route.standby.close()
    assert read == (False, 0)
