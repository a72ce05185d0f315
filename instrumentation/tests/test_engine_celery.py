"""Celery through a real ``tasktree serve``: a real prefork worker (``celery worker -c 2``) on a
real Redis broker (db 5, a queue of its own per test), the job using only ``@task``,
``configure()`` and Celery's API, and the tree read back through the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
from celery.app.task import Task as CeleryTask
from engine_support import (
    ENGINE_SCRIPTS,
    open_tree_in_browser,
    scripts_on_path,
    shape,
    start_worker,
    stop_worker,
    wait_for_task,
)
from propagation_matrix import records_from_api

from conftest import child_environment

pytestmark = pytest.mark.slow

BROKER = "redis://127.0.0.1:6379/5"
RUN_TIMEOUT = 120


def celery_environment(server, queue: str, **extra: str) -> dict[str, str]:
    return child_environment(
        server.otlp_http,
        TASKTREE_CELERY_BROKER=BROKER,
        TASKTREE_CELERY_QUEUE=queue,
        PYTHONPATH=scripts_on_path(),
        **extra,
    )


@contextmanager
def celery_worker(env: dict[str, str], log, *options: str):
    """A real ``celery worker`` (prefork, 2 processes) on the test's queue; stopped by PID."""
    command = [
        sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-c", "2", "-P", "prefork",
        "-Q", env["TASKTREE_CELERY_QUEUE"], "-n", f"{env['TASKTREE_CELERY_QUEUE']}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
        *options,
    ]  # fmt: skip
    worker = start_worker(command, env, log, cwd=ENGINE_SCRIPTS)
    try:
        yield worker
    finally:
        stop_worker(worker)
        _purge(env)


def _purge(env: dict[str, str]) -> None:
    """Drops what is left in the test's queue (Redis db 5 only, this queue only)."""
    import redis

    redis.Redis.from_url(BROKER).delete(env["TASKTREE_CELERY_QUEUE"])


def run_job(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ENGINE_SCRIPTS / "celery_job.py"), *args],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def wait_for_shape(server, trace_id: str, expected: Counter, timeout: float = 30.0) -> list:
    """The run's tasks once their (name, parent name, status) are exactly ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        server.wait_folded()
        nodes = records_from_api(server, trace_id)
        if shape(nodes) == expected or time.monotonic() > deadline:
            assert shape(nodes) == expected, _difference(shape(nodes), expected)
            return nodes
        time.sleep(0.3)


def _difference(got: Counter, expected: Counter) -> str:
    return f"missing: {dict(expected - got)}\nunexpected: {dict(got - expected)}"


def attributes_of(server, trace_id: str, nodes, name: str) -> list[dict]:
    return [
        server.get(f"/api/runs/{trace_id}/tasks/{node.span_id}")["attributes"]
        for node in nodes
        if node.name == name
    ]


# -- the tree --------------------------------------------------------------------------------


def test_task_leaves_the_arguments_celery_reads_as_they_are():
    """Celery reads a task's arguments with ``inspect.getfullargspec`` (which ignores
    ``__wrapped__``): to check ``delay``'s arguments and to tell a one-argument errback."""
    script = (
        "import inspect\n"
        "from celery.utils.functional import arity_greater\n"
        "from celery_app import on_error, on_error_old\n"
        "assert not arity_greater(on_error_old.__header__, 1)\n"
        "assert arity_greater(on_error.__header__, 1)\n"
        "assert inspect.getfullargspec(on_error_old.run).args == ['task_id']\n"
        "try:\n"
        "    on_error_old.delay(1, 2, 3)\n"
        "except TypeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = child_environment("", PYTHONPATH=scripts_on_path())
    del env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused: on_error_old() takes 1 positional argument but 3 were given" in done.stdout

TREE = Counter(
    {
        ("main_tree", None, "ok"): 1,
        ("delayed", "main_tree", "ok"): 1,
        ("helper", "delayed", "ok"): 1,
        ("applied", "main_tree", "ok"): 1,
        ("in_group", "main_tree", "ok"): 3,
        ("chain_first", "main_tree", "ok"): 1,
        ("chain_second", "main_tree", "ok"): 1,  # @task over @app.task: one node all the same
        ("chord_part", "main_tree", "ok"): 2,
        ("chord_sum", "main_tree", "ok"): 1,
        ("flaky", "main_tree", "error"): 2,  # attempts 1 and 2 raised Retry
        ("flaky", "main_tree", "ok"): 1,  # attempt 3
        ("boom", "main_tree", "error"): 1,
        ("on_error_old", "main_tree", "ok"): 1,  # boom's errbacks: sent as a task ...
        ("on_error", "main_tree", "ok"): 1,  # ... and called in the worker, within boom
        ("called", "main_tree", "ok"): 3,  # by plain_calls: directly, with apply(), in a thread
        ("submits", "main_tree", "ok"): 1,
        ("submitted", "submits", "ok"): 1,
        ("replaced", "main_tree", "ok"): 1,  # self.replace() raised Ignore: no failure
        ("replacement", "main_tree", "ok"): 1,  # the same Celery task id, beside it
    }
)


def test_every_celery_submission_under_the_task_that_submitted_it(tasktree_server, tmp_path):
    env = celery_environment(tasktree_server, f"tasktree-celery-tree-{uuid.uuid4().hex[:8]}")
    # One task per pool process: every process leaves (os._exit) right after its task, so the
    # tree is complete only if each flushes on its way out.  The worker was started from another
    # run's task (TRACEPARENT, as subprocess or tasktree-run give it): its work is not that task's.
    launched = {**env, "TRACEPARENT": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    with celery_worker(launched, tmp_path / "worker.log", "--max-tasks-per-child", "1"):
        started = time.monotonic()
        out = run_job(env, "tree")
        print(f"job with {sum(TREE.values()) - 1} Celery tasks: {time.monotonic() - started:.1f}s")
        trace_id = out["trace_id"]
        # With the worker still up: an old-style errback is a message of its own, which the job
        # does not wait for; stopping the worker first could leave it unrun (a slow first start).
        nodes = wait_for_shape(tasktree_server, trace_id, TREE)
    attempts = sorted(
        a["tasktree.attempt"] for a in attributes_of(tasktree_server, trace_id, nodes, "flaky")
    )
    assert attempts == [1, 2, 3]
    assert out["results"]["boom"] == "boom: the task failed on purpose"
    assert out["results"]["replaced"]["span_id"] == next(
        node.span_id for node in nodes if node.name == "replacement"
    )
    run = tasktree_server.get(f"/api/runs/{trace_id}")
    assert run["counts"]["running"] == run["counts"]["stalled"] == 0
    shown = open_tree_in_browser(tasktree_server, trace_id, "celery")
    assert Counter(shown) == Counter(node.name for node in nodes)  # the page shows the whole tree


def test_ignore_ends_a_task_ok_and_retry_and_reject_still_end_it_error(monkeypatch):
    """Celery's ``Ignore`` (``self.replace()``, or a task leaving its state alone) and its
    subclasses are no failure; ``Retry`` and ``Reject`` end an attempt that did not do the work."""
    from celery.exceptions import Ignore, Reject, Retry

    from tasktree.instrumentation import task
    from tasktree.instrumentation.integrations import _context
    from tasktree.instrumentation.integrations import celery as integration
    from tasktree.instrumentation.testing import TaskRecorder

    class Dropped(Ignore):
        pass

    monkeypatch.setattr(_context, "_not_failures", (), raising=False)  # restored afterwards
    integration.install()
    raised = [Ignore("Replaced by new task"), Dropped(), Retry(), Reject("no", requeue=True)]
    with TaskRecorder() as recorder:
        for exc in raised:
            with pytest.raises(type(exc)), task(type(exc).__name__):
                raise exc  # propagates unchanged
    assert {name: recorder.get(name).status.status_code.name for name in recorder.names()} == {
        "Ignore": "UNSET", "Dropped": "UNSET", "Retry": "ERROR", "Reject": "ERROR"
    }  # fmt: skip
    assert not recorder.get("Ignore").events  # no stack trace recorded either


# -- a worker process killed mid-task --------------------------------------------------------


def read_reports(path, count: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)
    raise AssertionError(f"{count} reports expected in {path}, got {lines}")


RETRY_ON_WORKER_LOST = hasattr(CeleryTask, "retry_on_worker_lost")  # Celery 5.7


@pytest.mark.parametrize(
    ("name", "again"),
    [
        pytest.param("slow", {"celery.redelivered": True}, id="acks_late-redelivered"),
        pytest.param(
            "slow_retried", {"celery.redelivered": None}, id="retry_on_worker_lost",
            marks=pytest.mark.skipif(not RETRY_ON_WORKER_LOST, reason="Celery < 5.7"),
        ),
    ],
)  # fmt: skip
def test_a_pool_process_killed_mid_task_leaves_it_stalled_and_the_next_attempt_is_a_new_task(
    start_tasktree, private_db, tmp_path, name, again
):
    server = start_tasktree(extra_args=("--stall-after", "1.5"), database=private_db)
    env = celery_environment(server, f"tasktree-celery-kill-{uuid.uuid4().hex[:8]}")
    report = tmp_path / "slow.jsonl"
    with celery_worker(env, tmp_path / "worker.log"):
        job = subprocess.Popen(
            [sys.executable, str(ENGINE_SCRIPTS / "celery_job.py"), "slow", name, str(report),
             "120"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        with job:
            first = read_reports(report, 1)[0]
            started = time.monotonic()
            running = wait_for_task(
                server, first["trace_id"], first["span_id"],
                lambda t: t["status"] == "running" and t["last_heartbeat"] is not None,
            )  # fmt: skip
            shown_after = time.monotonic() - started
            subprocess.run(["kill", "-KILL", str(first["pid"])], check=True)
            killed = time.monotonic()
            dead = wait_for_task(
                server, first["trace_id"], first["span_id"], lambda t: t["status"] == "stalled"
            )
            stalled_after = time.monotonic() - killed
            out = json.loads(job.stdout.read().splitlines()[-1])
            assert job.wait(RUN_TIMEOUT) == 0
    second = read_reports(report, 2)[1]
    assert second["span_id"] != first["span_id"] and second["pid"] != first["pid"]
    trace_id = first["trace_id"]
    assert out["trace_id"] == trace_id
    nodes = wait_for_shape(
        server,
        trace_id,
        Counter({("main_slow", None, "ok"): 1, (name, "main_slow", "stalled"): 1,
                 (name, "main_slow", "ok"): 1}),
    )  # fmt: skip
    by_span = {node.span_id: node for node in nodes}
    assert by_span[first["span_id"]].status == "stalled"
    assert by_span[second["span_id"]].status == "ok"
    attributes = server.get(f"/api/runs/{trace_id}/tasks/{second['span_id']}")["attributes"]
    assert attributes["tasktree.attempt"] == 2
    assert {key: attributes.get(key) for key in again} == again
    # The Celery task id, not Celery's task name: the node is named after the function already.
    assert attributes["celery.task_id"] and "celery.task_name" not in attributes
    assert running["attributes"]["tasktree.attempt"] == 1
    assert dead["last_heartbeat"] is not None
    print(
        f"running shown {shown_after:.2f}s after the task started; "
        f"stalled {stalled_after:.2f}s after SIGKILL"
    )


# -- a worker stopped as a service manager stops it -------------------------------------------


def test_stopping_the_worker_group_while_a_pool_process_flushes_loses_none_of_its_tasks(
    otlp_sink, tmp_path
):
    """systemd and ``docker stop`` signal the worker's whole process group: a pool process on its
    way out is flushing then (billiard's SIGTERM handler raises ``SystemExit`` there).  The
    sink's first answer is a 503, so the flush is still retrying when the signal arrives."""
    otlp_sink.mode = "down"
    env = child_environment(
        otlp_sink.endpoint,
        TASKTREE_CELERY_BROKER=BROKER,
        TASKTREE_CELERY_QUEUE=f"tasktree-celery-stop-{uuid.uuid4().hex[:8]}",
        PYTHONPATH=scripts_on_path(),
    )
    with celery_worker(env, tmp_path / "worker.log", "--max-tasks-per-child", "1") as worker:
        job = subprocess.Popen(
            [sys.executable, str(ENGINE_SCRIPTS / "celery_job.py"), "one"],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        with job:
            deadline = time.monotonic() + RUN_TIMEOUT
            while otlp_sink.requests == 0:  # the pool process's exit flush, its first try
                assert time.monotonic() < deadline and job.poll() in (None, 0), "nothing sent"
                time.sleep(0.01)
            otlp_sink.mode = "up"
            os.killpg(worker.pid, signal.SIGTERM)
            out = json.loads(job.stdout.read().splitlines()[-1])
            assert job.wait(RUN_TIMEOUT) == 0
        worker.wait(RUN_TIMEOUT)
    ran = out["results"]["one"]
    records = otlp_sink.wait_for(lambda rs: {"delayed", "helper"} <= {r.name for r in rs})
    delivered = {r.name: r for r in records if r.trace_id == ran["trace_id"]}
    assert delivered["delayed"].span_id == ran["span_id"]
    assert delivered["helper"].parent == ran["span_id"]


# -- bad input -------------------------------------------------------------------------------


def test_messages_without_or_with_a_malformed_context_run_as_runs_of_their_own(
    tasktree_server, tmp_path
):
    env = celery_environment(tasktree_server, f"tasktree-celery-bad-{uuid.uuid4().hex[:8]}")
    log = tmp_path / "worker.log"
    with celery_worker(env, log):
        out = run_job(env, "bad")
    for kind in ("missing", "malformed"):
        result = out["results"][kind]
        assert result["parent"] is None, kind
        wait_for_shape(
            tasktree_server,
            result["trace_id"],
            Counter({("delayed", None, "ok"): 1, ("helper", "delayed", "ok"): 1}),
        )
    text = log.read_text()
    assert "tasktree celery: a malformed traceparent '00-not-a-trace-context'" in text
    assert "tasktree celery: work submitted without a task context" in text


# -- the OpenTelemetry Celery instrumentor -----------------------------------------------------


def test_the_integration_stands_aside_while_the_opentelemetry_celery_instrumentor_is_active(
    monkeypatch,
):
    """Both write ``traceparent`` into the same headers: with that instrumentor active in the
    process (faked here: it is not installed), tasktree writes nothing and gives no parent."""
    import types

    import celery  # noqa: F401 - the integration is installed for an imported celery only
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from tasktree.instrumentation.integrations import celery as integration

    tracer = TracerProvider().get_tracer("test")
    instrumentor = types.SimpleNamespace(is_instrumented_by_opentelemetry=False)
    fake = types.ModuleType("opentelemetry.instrumentation.celery")
    fake.CeleryInstrumentor = type("CeleryInstrumentor", (), {"_instance": instrumentor})
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.celery", fake)
    with trace.use_span(tracer.start_span("submitter"), end_on_exit=True):
        written: dict = {"id": "a"}
        integration._write_carrier(headers=written)
        assert written["traceparent"].startswith("00-")
        instrumentor.is_instrumented_by_opentelemetry = True
        untouched: dict = {"id": "b"}
        integration._write_carrier(headers=untouched)
        assert untouched == {"id": "b"}
