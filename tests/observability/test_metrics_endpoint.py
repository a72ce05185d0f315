"""/metrics of real ``tasktree serve`` processes: shared totals, the task-name guard, auth."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import obs_workload as wl
import psycopg
import pytest
from obs_support import wait_until
from prometheus_client.parser import text_string_to_metric_families


def _samples(server, token: str | None = None) -> dict[tuple, float]:
    request = urllib.request.Request(server.web + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _task_counts(server, job: str) -> dict[str, float]:
    """Finished tasks of ``job`` by task label (the values are read at most ~1 s late)."""
    counts: dict[str, float] = {}
    for (name, labels), value in _samples(server).items():
        labels = dict(labels)
        if name == "tasktree_tasks_finished_total" and labels.get("job_name") == job:
            counts[labels["task"]] = counts.get(labels["task"], 0) + value
    return counts


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_two_processes_on_one_database_show_the_same_totals_counting_each_task_once(
    private_db, start_tasktree
):
    a, b = start_tasktree(database=private_db), start_tasktree(database=private_db)
    wl.send_run(a.otlp_http + "/v1/traces", "mp-job", fail=False)
    wl.send_run(b.otlp_http + "/v1/traces", "mp-job", fail=True)
    wait_until(lambda: sum(_task_counts(a, "mp-job").values()) == 18, 15, "both runs in the totals")
    seen_a, seen_b = _samples(a), _samples(b)
    for seen in (seen_a, seen_b):
        assert _value(seen, "tasktree_runs_finished_total", job_name="mp-job", status="ok") == 1
        assert _value(seen, "tasktree_runs_finished_total", job_name="mp-job", status="error") == 1
        assert (
            _value(
                seen,
                "tasktree_tasks_finished_total",
                job_name="mp-job",
                task="extract-chunk",
                status="ok",
            )
            == 6
        )
        assert _value(seen, "tasktree_run_duration_seconds_count", job_name="mp-job") == 2
    shared = {
        k: v
        for k, v in seen_a.items()
        if k[0].startswith(
            ("tasktree_runs_", "tasktree_tasks_finished", "tasktree_task_duration", "tasktree_job_")
        )
    }
    assert shared and all(seen_b.get(k) == v for k, v in shared.items())
    # per-process series: each counts the spans it received itself
    accepted = [
        _value(s, "tasktree_ingest_spans_accepted_total", protocol="http") for s in (seen_a, seen_b)
    ]
    assert accepted == [9, 9]


def test_task_names_beyond_the_per_job_cap_are_counted_as_other(private_db, start_tasktree):
    # Its own database: a server with another name cap must not fold (and count) these runs.
    server = start_tasktree(env={"TASKTREE_METRICS_TASK_NAMES": "3"}, database=private_db)
    wl.send_run(
        server.otlp_http + "/v1/traces", "capped-job", fail=False
    )  # 5 names: run, 2 stages, 2 chunks
    wait_until(
        lambda: sum(_task_counts(server, "capped-job").values()) == 9, 15, "the first run's counts"
    )
    names = _task_counts(server, "capped-job")
    seen = _samples(server)
    assert len(names) == 4 and "__other__" in names
    assert sum(names.values()) == 9  # nothing lost: 1 run + 2 stages + 6 chunks
    durations = {
        dict(labels)["task"]
        for (name, labels) in seen
        if name == "tasktree_task_duration_seconds_count"
        and dict(labels).get("job_name") == "capped-job"
    }
    assert durations == set(names)
    # a second run keeps the same labels: a series never changes its meaning
    wl.send_run(server.otlp_http + "/v1/traces", "capped-job", fail=False)
    doubled = {k: v * 2 for k, v in names.items()}
    wait_until(lambda: _task_counts(server, "capped-job") == doubled, 15, "the second run's counts")


def _runs_finished(server) -> float:
    return sum(v for (n, _), v in _samples(server).items() if n == "tasktree_runs_finished_total")


def _job_names(samples) -> set[str]:
    return {dict(labels)["job_name"] for _, labels in samples if "job_name" in dict(labels)}


def test_jobs_beyond_the_job_cap_are_counted_as_other(private_db, start_tasktree):
    server = start_tasktree(env={"TASKTREE_METRICS_MAX_JOBS": "2"}, database=private_db)
    for count, job in enumerate(("job-a", "job-b", "job-c"), 1):  # the third is over the cap
        wl.send_run(server.otlp_http + "/v1/traces", job, fail=False)
        wait_until(lambda n=count: _runs_finished(server) == n, 15, f"the run of {job}")
    seen = _samples(server)
    assert _job_names(seen) == {"job-a", "job-b", "__other__"}
    assert _value(seen, "tasktree_runs_finished_total", job_name="__other__", status="ok") == 1
    assert _task_counts(server, "__other__") == {"__other__": 9}  # nothing lost, one series
    assert _value(seen, "tasktree_job_last_start_timestamp_seconds", job_name="job-b")
    assert _value(seen, "tasktree_job_last_start_timestamp_seconds", job_name="__other__") is None
    # the cap shows, and so does __other__, wherever every job is listed (the $job variable)
    assert _value(seen, "tasktree_metrics_folded_jobs") == 1
    assert _value(seen, "tasktree_metrics_max_jobs") == 2
    assert _value(seen, "tasktree_tasks_running", job_name="__other__") == 0
    # the first failure of a job, or of a task name, is an increase from 0
    for job in ("job-a", "job-b", "__other__"):
        assert _value(seen, "tasktree_runs_finished_total", job_name=job, status="error") == 0
    errors = {
        dict(labels)["task"]: value
        for (name, labels), value in seen.items()
        if name == "tasktree_tasks_finished_total"
        and dict(labels) | {"task": ""} == {"job_name": "job-a", "status": "error", "task": ""}
    }
    assert errors == dict.fromkeys(_task_counts(server, "job-a"), 0)


def test_a_job_unseen_for_the_ttl_leaves_metrics_and_gives_its_place_up(private_db, start_tasktree):
    env = {"TASKTREE_METRICS_MAX_JOBS": "1", "TASKTREE_METRICS_JOB_TTL": "3"}
    server = start_tasktree(env=env, database=private_db)
    wl.send_run(server.otlp_http + "/v1/traces", "job-old", fail=False)
    wait_until(lambda: _task_counts(server, "job-old"), 15, "job-old in the totals")
    time.sleep(3.5)
    wl.send_run(server.otlp_http + "/v1/traces", "job-new", fail=False)
    wait_until(
        lambda: sum(_task_counts(server, "job-new").values()) == 9, 15, "job-new with its own label"
    )
    assert _job_names(_samples(server)) == {"job-new"}
    with psycopg.connect(private_db) as conn:  # its totals were deleted, not just hidden
        assert conn.execute("SELECT DISTINCT job FROM metric_totals").fetchall() == [("job-new",)]


def test_the_oldest_run_still_running_shows_while_later_runs_of_the_job_finish(
    clean_db, start_tasktree
):
    """Runs of one job that overlap: a run hanging (its task heartbeats on) while later ones
    start and succeed left the job's latest times healthy, and TasktreeRunTooLong silent."""
    server = start_tasktree()
    endpoint = server.otlp_http + "/v1/traces"
    before = time.time()
    wl.send_running_snapshot(endpoint, job="overlapping", started_s_ago=3600)  # the hung run
    wl.send_running_snapshot(endpoint, job="overlapping", started_s_ago=60)
    wl.send_run(endpoint, "overlapping", fail=False)  # a later run, finished ok

    def gauge(name: str) -> float | None:
        return _value(_samples(server), name, job_name="overlapping")

    def oldest() -> float | None:
        return gauge("tasktree_job_oldest_running_run_start_timestamp_seconds")

    wait_until(
        lambda: oldest() and gauge("tasktree_job_last_success_timestamp_seconds"),
        30, "the runs folded",
    )  # fmt: skip
    assert before - 3601 <= (oldest() or 0) <= time.time() - 3599


def test_export_requests_are_counted_by_outcome_as_rejected_spans_are_by_reason():
    """TasktreeIngestRejecting compares refused requests with requests (a request refused for
    its token is never read: its spans are unknown) and rejected spans with spans."""
    from prometheus_client import CollectorRegistry

    from tasktree.exporter.errors import Overloaded, StoreUnavailable
    from tasktree.exporter.metrics.process import IngestMetrics
    from tasktree.exporter.receiver.records import DecodedBatch

    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    outcome = {"ok": None, "busy": Overloaded("busy"), "down": StoreUnavailable("down")}

    def ingest(batch: DecodedBatch) -> None:
        raised = outcome[batch.spans[0]]
        if raised is not None:
            raise raised

    instrumented = metrics.instrument(ingest, "http")
    for kind, count in (("ok", 3), ("busy", 2), ("down", 1)):
        for _ in range(count):
            try:
                instrumented(DecodedBatch(spans=[kind] * 10))
            except (Overloaded, StoreUnavailable):
                pass
    metrics.count_refused("http", "unauthenticated")
    metrics.count_refused("grpc", "unauthenticated")

    def requests(protocol: str, outcome: str) -> float | None:
        labels = {"protocol": protocol, "outcome": outcome}
        return registry.get_sample_value("tasktree_ingest_requests_total", labels)

    by_outcome = {o: requests("http", o) for o in ("stored", "overloaded", "unavailable", "error")}
    assert by_outcome == {"stored": 3, "overloaded": 2, "unavailable": 1, "error": 0}
    assert (requests("http", "unauthenticated"), requests("grpc", "unauthenticated")) == (1, 1)
    assert requests("grpc", "stored") == 0  # every series exists before its first request
    spans = registry.get_sample_value("tasktree_ingest_spans_accepted_total", {"protocol": "http"})
    assert spans == 30


def test_metrics_needs_a_viewer_token_when_the_server_has_one(clean_db, start_tasktree):
    server = start_tasktree(env={"TASKTREE_AUTH_TOKEN": "s3cret-token-for-tests"})
    try:
        urllib.request.urlopen(server.web + "/metrics", timeout=30)
        raise AssertionError("/metrics answered without a token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    assert _value(_samples(server, "s3cret-token-for-tests"), "tasktree_store_up") == 1


def test_finished_tasks_wait_in_memory_while_postgresql_refuses_and_are_added_once_later(
    clean_store_db,
):
    from tasktree.exporter.store.fold import FinishedTask, FoldResult
    from tasktree.exporter.store.metric_totals import FoldTotals
    from tasktree.exporter.store.pool import open_pool

    down = open_pool("postgresql://postgres@127.0.0.1:1/none", max_size=1, timeout=0.2)
    up = open_pool(clean_store_db, max_size=1)
    try:
        totals = FoldTotals(down, names_per_job=50)
        first = FoldResult(1, (), (FinishedTask("j", "t", 3, 2.0, root=True),))
        totals(first)  # PostgreSQL away: kept, counted, never raised
        assert totals.write_errors == 1
        totals._pool = up
        totals(FoldResult(1, (), (FinishedTask("j", "t", 4, 700.0),)))
        totals(FoldResult(0))  # nothing new, nothing pending: no write
        with psycopg.connect(clean_store_db) as conn:
            rows = conn.execute(
                "SELECT run, name, status, finished, duration_sum, buckets FROM metric_totals"
                " ORDER BY run, status"
            ).fetchall()
        nine = [0] * 17
        assert rows == [
            (False, "t", 3, 1, 2.0, nine[:4] + [1] + nine[5:]),
            (False, "t", 4, 1, 700.0, nine[:9] + [1] + nine[10:]),
            (True, "", 3, 1, 2.0, nine[:4] + [1] + nine[5:]),
        ]
    finally:
        down.close()
        up.close()


def test_the_metrics_guards_are_settings_with_bounded_defaults():
    from tasktree.exporter.settings import Settings, SettingsError

    defaults = Settings.from_env({})
    assert (defaults.metrics_task_names, defaults.metrics_max_jobs) == (20, 100)
    assert defaults.metrics_job_ttl == 35 * 86400
    chosen = Settings.from_env({"TASKTREE_METRICS_MAX_JOBS": "7", "TASKTREE_METRICS_JOB_TTL": "0"})
    assert (chosen.metrics_max_jobs, chosen.metrics_job_ttl) == (7, 0)
    for env, says in (
        ({"TASKTREE_METRICS_MAX_JOBS": "0"}, "TASKTREE_METRICS_MAX_JOBS must be at least 1"),
        ({"TASKTREE_METRICS_JOB_TTL": "-1"}, "TASKTREE_METRICS_JOB_TTL must be 0 (never)"),
    ):
        with pytest.raises(SettingsError, match=re.escape(says)):
            Settings.from_env(env)


def test_with_postgresql_down_a_scrape_waits_for_one_connection_only_and_says_store_up_0():
    """Prometheus gives a scrape 10 s: with the database down, /metrics must answer within it
    (``tasktree_store_up 0`` fires TasktreeStoreUnreachable), however long the pool would wait."""
    from prometheus_client import CollectorRegistry

    from tasktree.exporter.metrics.service import ServiceMetrics
    from tasktree.exporter.metrics.store_metrics import STORE_WAIT_S
    from tasktree.exporter.settings import Settings
    from tasktree.exporter.store.pool import open_pool

    pool_timeout = 3 * STORE_WAIT_S  # a site's TASKTREE_POOL_TIMEOUT, longer than a scrape
    down = open_pool("postgresql://postgres@127.0.0.1:1/none", max_size=1, timeout=pool_timeout)
    try:
        settings = Settings.from_env({"TASKTREE_REQUIRE_SYNC_STANDBY": "true"})
        metrics = ServiceMetrics(down, settings, registry=CollectorRegistry())
        started = time.monotonic()
        text = metrics.exposition().decode()
        took = time.monotonic() - started
        borrows = down.get_stats().get("requests_num", 0)
    finally:
        down.close()
    assert "tasktree_store_up 0" in text
    assert "tasktree_database_synchronous_standbys_required 1" in text
    assert "tasktree_database_synchronous_standbys " not in text  # not read: no second wait
    assert borrows == 1
    assert took < pool_timeout  # the scrape's own bound, not the pool's


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url + "/v1/traces", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_export_requests_refused_for_their_body_are_counted(clean_db, start_tasktree):
    """A client sending what is not OTLP loses every span it sends: the requests counter (and so
    TasktreeIngestRejecting) must show it, by outcome, over both protocols."""
    import grpc

    server = start_tasktree(env={"TASKTREE_MAX_BODY_BYTES": "100000"})
    protobuf = {"Content-Type": "application/x-protobuf"}
    statuses = [
        _post(server.otlp_http, b"\xff\xff\xff not protobuf", protobuf),
        _post(server.otlp_http, b"{not json", {"Content-Type": "application/json"}),
        _post(server.otlp_http, b"spans", {"Content-Type": "text/plain"}),
        _post(server.otlp_http, b"\x00" * 150_000, protobuf),
        _post(server.otlp_http, b"", protobuf),  # empty: a success, and no spans to count
    ]
    assert statuses == [400, 400, 415, 413, 200]
    with grpc.insecure_channel(server.otlp_grpc) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as refused:
            export(b"\xff\xff\xff not protobuf", timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    samples = _samples(server)

    def requests(protocol: str, outcome: str) -> float | None:
        return _value(samples, "tasktree_ingest_requests_total", protocol=protocol, outcome=outcome)

    assert [requests("http", o) for o in ("malformed", "too_large", "stored")] == [3, 1, 0]
    assert [requests("grpc", o) for o in ("malformed", "too_large", "stored")] == [1, 0, 0]
