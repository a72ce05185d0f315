"""PostgreSQL failover under load (issue 17): a primary with a streaming standby, a real
``tasktree serve`` given both in one multi-host URL, an OTel SDK job sending runs through it.  The
primary's machine dies (SIGKILL to every process of the server) mid-load and the standby is
promoted; tasktree finds the new primary by itself.

With a synchronous standby nothing acknowledged is lost: every span that got a 200 is in the
promoted server's tree.  With an asynchronous one, spans acknowledged in the last moments before
the crash may be lost (README, "Failover"), but the tree is never corrupt: every rollup still
counts exactly the tasks the promoted server holds.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import psycopg
import pytest
import requests
from failover_support import Load, Prober, stored_spans, wait_healthy, wrong_rollups
from prometheus_client.parser import text_string_to_metric_families
from replication_support import Replication

from exporter.tests.integration.faults_support import EventReader, otlp_request

HEALTHY_WITHIN_S = 10.0
"""The service answers again within this long of the promotion (issue 17)."""


@pytest.fixture
def replication(request):
    pair = Replication(synchronous=request.param == "synchronous")
    yield pair
    pair.close()


def _fail_over(replication: Replication, server) -> Load:
    """Load through ``server``, the primary killed mid-load, the standby promoted; the load
    stopped (and its queue exported) once spans are acknowledged by the new primary.  Meanwhile
    ingest answers 200, or 503 with Retry-After while there is no primary: nothing else."""
    load, prober = Load(server.otlp_http).start(), Prober(server.otlp_http).start()
    try:
        load.wait_acked(500, timeout=60)
        replication.primary.kill()
        time.sleep(1.0)  # a moment with no primary at all, as when a failover manager decides
        replication.standby.promote()
        wait_healthy(server, deadline=time.monotonic() + HEALTHY_WITHIN_S)
        load.wait_acked(500, timeout=60)  # the job's own spans go through the new primary
    finally:
        load.stop()
        prober.stop()
    assert set(prober.client.statuses) <= {200, 503}, prober.client.statuses
    assert prober.client.missing_retry_after == 0
    server.wait_folded(timeout=60)
    return load


def _synchronous_standbys(server) -> float | None:
    text = requests.get(server.web + "/metrics", timeout=30).text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return samples.get("tasktree_database_synchronous_standbys")


@pytest.mark.parametrize("replication", ["synchronous"], indirect=True)
def test_with_a_synchronous_standby_every_acknowledged_span_survives_the_primary_s_death(
    replication, start_tasktree
):
    server = start_tasktree(
        database=replication.multi_host_url(target_session_attrs="read-write"),
        env={"TASKTREE_REQUIRE_SYNC_STANDBY": "1"},  # starts: the primary has one
    )
    assert _synchronous_standbys(server) == 1.0
    load = _fail_over(replication, server)
    assert _synchronous_standbys(server) == 0.0  # the promoted server has none: /metrics says so

    acked = load.acked()
    lost = acked - stored_spans(replication.standby)
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged spans are not on the new primary"
    assert wrong_rollups(replication.standby) == []


@pytest.mark.parametrize("replication", ["asynchronous"], indirect=True)
def test_with_an_asynchronous_standby_a_failover_may_lose_spans_but_never_corrupts_the_tree(
    replication, start_tasktree
):
    server = start_tasktree(database=replication.multi_host_url())  # read-write is implied
    load = _fail_over(replication, server)

    acked = load.acked()
    lost = acked - stored_spans(replication.standby)
    print(f"asynchronous standby: {len(lost)} of {len(acked)} acknowledged spans lost")
    assert wrong_rollups(replication.standby) == []


@pytest.mark.parametrize("replication", ["asynchronous"], indirect=True)
def test_a_write_that_reaches_a_read_only_server_is_refused_as_unavailable_never_acknowledged(
    replication,
):
    """The writing pool lends no connection to a standby; a write on a connection that is on
    one (a server demoted under it) is a 503 (``StoreUnavailable``) and the connection is
    dropped."""
    from tasktree.exporter.errors import StoreUnavailable
    from tasktree.exporter.store.pool import connection, open_pool

    writing = open_pool(replication.standby.url(), timeout=2.0)
    reading = open_pool(replication.standby.url(), timeout=2.0, writable=False)
    try:
        with pytest.raises(StoreUnavailable, match="no database connection"):
            with connection(writing) as conn:
                conn.execute("SELECT 1")
        with pytest.raises(StoreUnavailable, match="read-only"):
            with connection(reading) as conn:
                conn.execute("CREATE TABLE refused (id int)")
        with connection(reading) as conn:  # reads go on, on a fresh connection
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    finally:
        writing.close()
        reading.close()


def test_without_require_sync_standby_tasktree_warns_that_a_200_is_on_one_machine_only(
    start_tasktree, database_url
):
    """A multi-host URL (a setup meant to survive losing its primary) without a synchronous
    standby gets a warning; a single server, the common case, the same words at the info level."""
    host, port = (psycopg.conninfo.conninfo_to_dict(database_url)[k] for k in ("host", "port"))
    several = psycopg.conninfo.make_conninfo(
        database_url, host=f"{host},{host}", port=f"{port},{port}"
    )
    for url, level in ((several, "WARNING"), (database_url, "INFO")):
        log = start_tasktree(database=url).log_path.read_text()
        (line,) = [x for x in log.splitlines() if "has no synchronous standby" in x]
        assert f" {level} " in line
        assert "so a 200 means the spans are on that one machine only" in line


def test_with_require_sync_standby_tasktree_refuses_a_primary_without_one_and_says_what_to_set(
    start_tasktree,
):
    with pytest.raises(RuntimeError, match="did not start") as failed:
        start_tasktree(env={"TASKTREE_REQUIRE_SYNC_STANDBY": "1"})
    log = str(failed.value)
    assert "TASKTREE_REQUIRE_SYNC_STANDBY is set" in log
    assert "synchronous_standby_names = 'FIRST 1 (" in log and "synchronous_commit = on" in log


@pytest.mark.parametrize("replication", ["synchronous"], indirect=True)
def test_a_commit_whose_wait_for_the_synchronous_standby_was_cancelled_is_a_503_never_a_200(
    replication, start_tasktree
):
    """PostgreSQL ends a cancelled wait for the standby with a WARNING and a *successful* commit
    (on the primary only); ingest must not acknowledge that as stored on two machines."""
    server = start_tasktree(database=replication.primary.url())
    replication.standby.stop()  # commits now wait for it
    answers: list[int] = []
    body = otlp_request(os.urandom(16), [(os.urandom(8), None, "nightly", False)], "sync-job")
    sender = threading.Thread(target=lambda: answers.append(requests.post(
        server.otlp_http + "/v1/traces", data=body, timeout=60,
        headers={"Content-Type": "application/x-protobuf"}).status_code))
    sender.start()
    deadline = time.monotonic() + 30
    while sender.is_alive():  # cancel every wait for the standby (ingest's, the folder's)
        assert time.monotonic() < deadline, "ingest never waited for the standby"
        replication.primary.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        sender.join(0.2)
    assert answers == [503]


@pytest.mark.parametrize("replication", ["synchronous"], indirect=True)
def test_spans_landed_on_the_old_primary_are_folded_on_the_new_one_with_no_lock_to_clean_up(
    replication, start_tasktree
):
    """Spans committed (acknowledged) but not folded when the primary died are in the promoted
    server's landing table, and its folder folds them; the advisory locks a folder of the old
    primary held (every fold lane, retention) lived in that server's memory only."""
    from tasktree.exporter.receiver.decode import Limits, decode_protobuf
    from tasktree.exporter.store import locks
    from tasktree.exporter.store.landing import ResourceIds, land
    from tasktree.exporter.store.migrate import migrate

    primary = replication.primary
    migrate(primary.url())
    trace, root = os.urandom(16), os.urandom(8)
    spans = [(root, None, "nightly", False)]
    spans += [(os.urandom(8), root, f"chunk-{i}", False) for i in range(10)]
    batch = decode_protobuf(otlp_request(trace, spans, "resume-job"), Limits(1024))
    holder = psycopg.connect(primary.url(), autocommit=True)
    land(holder, batch.spans, ResourceIds(), time.time_ns())  # committed on both servers
    for key in [locks.lane(lane) for lane in range(locks.LANES)] + [locks.RETENTION]:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", key)
    primary.kill()
    replication.standby.promote()
    assert replication.standby.execute("SELECT count(*) FROM span_landing") == [(11,)]

    server = start_tasktree(database=replication.multi_host_url())
    server.wait_folded()
    run = server.get(f"/api/runs/{trace.hex()}")
    assert (run["status"], run["task_count"], run["counts"]["ok"]) == ("ok", 11, 11)
    assert [(r["span_id"], r["child_count"]) for r in run["roots"]] == [(root.hex(), 10)]
    with contextlib.suppress(psycopg.Error):
        holder.close()


@pytest.mark.parametrize("replication", ["asynchronous"], indirect=True)
def test_live_updates_of_several_processes_follow_the_new_primary(replication, start_tasktree):
    """With ``--workers 2`` and no Redis, live updates go through LISTEN/NOTIFY on the primary:
    after a failover the listener is on the new primary, and a fold there reaches the pages."""
    server = start_tasktree(database=replication.multi_host_url(), extra_args=("--workers", "2"))
    trace = os.urandom(16)
    stream = EventReader(f"{server.web}/api/live/runs/{trace.hex()}")
    try:
        assert stream.next_event(10) == "open"
        stream.drain()
        replication.primary.kill()
        replication.standby.promote()
        wait_healthy(server, deadline=time.monotonic() + HEALTHY_WITHIN_S)
        stream.drain()  # the listener's "anything may have changed" once it is back
        body = otlp_request(trace, [(os.urandom(8), None, "nightly", False)], "live-job")
        answer = requests.post(server.otlp_http + "/v1/traces", data=body, timeout=30,
                               headers={"Content-Type": "application/x-protobuf"})
        assert answer.status_code == 200
        assert stream.next_event(15) == "changed", "a fold on the new primary reaches the page"
    finally:
        stream.close()
