"""Dask distributed through a real ``tasktree serve``: a job of ``@task`` + ``configure()`` + Dask's
own API on a ``LocalCluster`` of two worker processes gives exactly the tree of the calls; a task
shows running and heartbeats, and SIGKILL of its worker leaves it stalled (the rerun Dask makes is
a new task beside it); tasks submitted with no carrier or a malformed one are runs of their own.

The job (``scripts/engines/dask_job.py``) runs in its own process group, killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from engine_support import (
    ENGINE_SCRIPTS,
    finish_job,
    kill_group,
    open_tree_in_browser,
    runs_of,
    shape,
    start_job,
    start_worker,
    stop_worker,
    wait_for_task,
)
from job_support import job_stderr
from propagation_matrix import records_from_api

from conftest import child_environment

pytestmark = pytest.mark.slow

JOB = ENGINE_SCRIPTS / "dask_job.py"
DASK = str(Path(sys.executable).parent / "dask")
PRELOAD = "tasktree.instrumentation.integrations.dask"

TREE = Counter(
    {
        ("dask-tree", None, "ok"): 1,
        ("submit-phase", "dask-tree", "ok"): 1,
        ("submitted", "submit-phase", "ok"): 1,
        ("map-phase", "dask-tree", "ok"): 1,
        ("mapped", "map-phase", "ok"): 3,
        ("inner", "mapped", "ok"): 3,
        ("delayed-phase", "dask-tree", "ok"): 1,
        ("delayed-leaf", "delayed-phase", "ok"): 3,
        ("delayed-total", "delayed-phase", "ok"): 1,
        ("bag-phase", "dask-tree", "ok"): 1,
        ("bag-item", "bag-phase", "ok"): 4,
        ("spawn-phase", "dask-tree", "ok"): 1,
        ("spawner", "spawn-phase", "ok"): 1,
        ("nested", "spawner", "ok"): 2,
        ("plain-nested", "spawn-phase", "ok"): 2,  # submitted by a Dask task that is no @task
        ("thread-phase", "dask-tree", "ok"): 1,
        ("inner", "thread-phase", "ok"): 2,  # in threads of a Dask task that is no @task
        ("retry-phase", "dask-tree", "ok"): 1,
        ("flaky", "retry-phase", "error"): 1,  # attempt 1 fails: Dask retries it (retries=1)
        ("flaky", "retry-phase", "ok"): 1,  # attempt 2: a new task beside the first
    }
)
"""The tree of ``dask_job.py tree``: (task, parent, status) → how many."""


@pytest.mark.parametrize("processes", ["1", "0"], ids=["worker-processes", "threads"])
def test_every_task_runs_under_the_task_current_where_it_was_submitted(tasktree_server, processes):
    env = child_environment(tasktree_server.otlp_http, DASK_PROCESSES=processes)
    started = time.monotonic()
    out, _ = finish_job(start_job(JOB, "tree", env))
    print(f"job: {time.monotonic() - started:.1f}s")
    tasktree_server.wait_folded()
    nodes = assert_tree(tasktree_server, out["trace_id"])
    shown = open_tree_in_browser(tasktree_server, out["trace_id"], "dask")
    assert Counter(shown) == Counter(node.name for node in nodes)  # the page shows the whole tree


@pytest.mark.parametrize(
    "preload",
    [
        {"DASK_DISTRIBUTED__WORKER__PRELOAD": "json"},  # one module, as a string
        {
            "DASK_DISTRIBUTED__WORKER__PRELOAD": '["json"]',
            "DASK_DISTRIBUTED__WORKER__PRELOAD_ARGV": "[[]]",
        },
    ],
    ids=["a-string", "argv-per-preload"],
)
def test_the_job_s_own_worker_preloads_stay_and_the_tree_is_whole(tasktree_server, preload):
    env = child_environment(tasktree_server.otlp_http, **preload)
    out, _ = finish_job(start_job(JOB, "tree", env))
    tasktree_server.wait_folded()
    assert_tree(tasktree_server, out["trace_id"])


def test_a_scheduler_and_workers_started_by_hand_with_the_preload_option(tasktree_server, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = child_environment(tasktree_server.otlp_http)
    log = tmp_path / "dask.log"
    scheduler = start_worker(
        [DASK, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
         "--dashboard-address", ":0", "--preload", PRELOAD], env, log,
    )  # fmt: skip
    worker = None
    try:
        # Started from another run's task (TRACEPARENT, as subprocess or tasktree-run give
        # it): its work is not that task's.
        launcher = f"00-{'ef' * 16}-{'01' * 8}-01"
        worker = start_worker(
            [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1",
             "--nthreads", "2", "--no-dashboard", "--preload", PRELOAD],
            {**env, "TRACEPARENT": launcher}, log,
        )  # fmt: skip
        job_env = {**env, "DASK_SCHEDULER_FILE": str(scheduler_file)}
        out, _ = finish_job(start_job(JOB, "tree", job_env))
    finally:
        if worker is not None:
            stop_worker(worker)  # the worker exports what it recorded as it closes
        stop_worker(scheduler)
    tasktree_server.wait_folded()
    assert_tree(tasktree_server, out["trace_id"])
    coroutine = out["coroutine"]  # on the event loop: a run of its own, not the launcher's
    assert coroutine["parent"] is None and coroutine["trace_id"] != "ef" * 16, coroutine


def assert_tree(server, trace_id: str) -> list:
    """The run is exactly TREE, and each retried task carries its attempt number."""
    nodes = records_from_api(server, trace_id)
    got = shape(nodes)
    assert got == TREE, f"missing {TREE - got}, unexpected {got - TREE}"
    assert attempts(server, trace_id, nodes, "flaky") == {"error": 1, "ok": 2}
    return nodes


def attempts(server, trace_id: str, nodes, name: str) -> dict[str, int]:
    """Status → ``tasktree.attempt`` of the tasks called ``name``."""
    return {
        node.status: server.get(f"/api/runs/{trace_id}/tasks/{node.span_id}")["attributes"].get(
            "tasktree.attempt"
        )
        for node in nodes
        if node.name == name
    }


def test_a_task_shows_running_and_a_sigkill_of_its_worker_leaves_it_stalled(
    start_tasktree, private_db, tmp_path
):
    server = start_tasktree(extra_args=("--stall-after", "1.5"), database=private_db)
    marker = tmp_path / "long.json"
    env = child_environment(server.otlp_http, DASK_LONG_MARKER=str(marker))
    job = start_job(JOB, "long", env)
    try:
        first = _wait_for_marker(marker, job)
        started = time.monotonic()
        trace_id, span_id = first["trace_id"], first["span_id"]
        running = wait_for_task(server, trace_id, span_id, lambda t: t["status"] == "running")
        shown_after = time.monotonic() - started
        beat = running["last_heartbeat"]
        wait_for_task(server, trace_id, span_id, lambda t: t["last_heartbeat"] != beat)
        os.kill(first["pid"], signal.SIGKILL)  # the Nanny's worker process running the task
        killed = time.monotonic()
        stalled = wait_for_task(server, trace_id, span_id, lambda t: t["status"] == "stalled")
        stalled_after = time.monotonic() - killed
        out, _ = finish_job(job)
    finally:
        kill_group(job)
    assert out["result"] == "rerun" and out["trace_id"] == trace_id
    assert stalled["last_heartbeat"] is not None
    server.wait_folded()
    nodes = records_from_api(server, trace_id)
    assert attempts(server, trace_id, nodes, "long") == {"stalled": 1, "ok": 2}
    assert shape(nodes) == Counter(
        {
            ("dask-long", None, "ok"): 1,
            ("long-phase", "dask-long", "ok"): 1,
            ("long", "long-phase", "stalled"): 1,  # the attempt whose worker was killed
            ("long", "long-phase", "ok"): 1,  # Dask's rerun on another worker: a new task
        }
    )
    print(
        f"running shown {shown_after:.2f}s after the task started; "
        f"stalled {stalled_after:.2f}s after SIGKILL of worker {first['pid']}"
    )


def _wait_for_marker(marker, job, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return json.loads(marker.read_text())
        assert job.poll() is None, job.stderr.read()
        time.sleep(0.05)
    raise AssertionError("the long task never started")


def test_a_task_the_scheduler_queued_is_still_its_first_attempt(tasktree_server):
    # 8 tasks for 2 threads: Dask queues most of them (waiting -> waiting -> queued), which is
    # no new run of theirs.
    out, _ = finish_job(start_job(JOB, "queued", child_environment(tasktree_server.otlp_http)))
    tasktree_server.wait_folded()
    trace_id = out["trace_id"]
    nodes = records_from_api(tasktree_server, trace_id)
    assert shape(nodes) == Counter(
        {("dask-queued", None, "ok"): 1, ("queue-phase", "dask-queued", "ok"): 1,
         ("queued", "queue-phase", "ok"): 8}
    )  # fmt: skip
    tried = Counter(
        tasktree_server.get(f"/api/runs/{trace_id}/tasks/{node.span_id}")["attributes"].get(
            "tasktree.attempt"
        )
        for node in nodes
        if node.name == "queued"
    )
    assert tried == Counter({1: 8})


def test_an_actor_method_call_is_not_under_its_caller_unless_bound_with_in_context(
    tasktree_server,
):
    """What README says of actors: creating one is a task like any other; a method call carries
    no parent (Dask sends it in an RPC of its own, with no annotation and no hook), so a @task
    method is not under its caller; a function bound with ``in_context`` and run by the method
    is."""
    out, _ = finish_job(start_job(JOB, "actor", child_environment(tasktree_server.otlp_http)))
    tasktree_server.wait_folded()
    nodes = records_from_api(tasktree_server, out["trace_id"])
    assert shape(nodes) == Counter(
        {("dask-actor", None, "ok"): 1, ("create-phase", "dask-actor", "ok"): 1,
         ("actor-init", "create-phase", "ok"): 1, ("call-phase", "dask-actor", "ok"): 1,
         ("actor-add", "call-phase", "ok"): 1,  # the call bound with in_context
         # The direct call: under the task the worker process inherited from the job (the one
         # that started the LocalCluster); a run of its own when no task started it.
         ("actor-add", "dask-actor", "ok"): 1}
    )  # fmt: skip
    by_span = {node.span_id: node for node in nodes}
    phase = next(node.span_id for node in nodes if node.name == "call-phase")
    assert by_span[out["bound"]["span_id"]].parent == phase
    assert by_span[out["direct"]["span_id"]].parent == out["span_id"]


def test_tasks_without_a_carrier_or_with_a_malformed_one_are_runs_of_their_own(tasktree_server):
    out, err = finish_job(start_job(JOB, "bad", child_environment(tasktree_server.otlp_http)))
    tasktree_server.wait_folded()
    results = [out["no_carrier"], out["malformed"], out["not_a_dict"]]
    assert all(result["parent"] is None for result in results), results
    assert len({result["trace_id"] for result in results}) == 3
    for trace_id, nodes in runs_of(tasktree_server, [r["trace_id"] for r in results]).items():
        assert shape(nodes) == Counter({("own-run", None, "ok"): 1}), trace_id
    malformed = err.count("a malformed traceparent") + err.count("a malformed 'tasktree'")
    assert 1 <= malformed <= 4, err  # once per worker process and kind of problem, at most
    assert "tasktree: the parent provider" not in err, err  # the provider never raised
    assert "tasktree dask: cannot" not in err, err


def test_a_cluster_started_before_configure_is_named_and_one_started_after_is_not():
    script = (
        "from dask.distributed import Client, LocalCluster\n"
        "from tasktree.instrumentation import configure\n"
        "if __name__ == '__main__':\n"
        "    early = {early}\n"
        "    if early:\n"
        "        cluster = LocalCluster(n_workers=1, processes=True, dashboard_address=None)\n"
        "    configure()\n"
        "    if not early:\n"
        "        cluster = LocalCluster(n_workers=1, processes=True, dashboard_address=None)\n"
        "    with Client(cluster) as client:\n"
        "        assert client.submit(sum, [1, 2]).result() == 3\n"
        "    cluster.close()\n"
    )
    warning = "a Dask cluster was started before configure()"
    before = job_stderr(script.format(early=True), OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    after = job_stderr(script.format(early=False), OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert before.count(warning) == 1 and "call configure() before LocalCluster()" in before
    assert warning not in after
