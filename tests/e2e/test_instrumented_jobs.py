"""Through a real ``tasktree serve``: the propagation matrix, SIGKILL → stalled, SIGTERM → flushed.

Uses the ``tasktree_server`` / ``start_tasktree`` fixtures of the repository's conftest.py (a
fresh PostgreSQL database per session) and the instrumentation's test jobs (``job_support``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from engine_support import wait_for_task
from job_support import SCRIPTS, child_environment, run_script
from propagation_matrix import assert_matrix, records_from_api

pytestmark = pytest.mark.slow


def test_propagation_matrix_through_tasktree_serve(tasktree_server):
    code, out, err = run_script("matrix_job.py", env=child_environment(tasktree_server.otlp_http))
    assert code == 0, err
    trace_id = out["trace_id"]
    tasktree_server.wait_folded()
    assert_matrix(records_from_api(tasktree_server, trace_id))
    run = tasktree_server.get(f"/api/runs/{trace_id}")
    assert run["status"] == "ok" and run["job"] == "matrix"
    assert run["counts"]["running"] == run["counts"]["stalled"] == 0


def start_long_task(server, **env):
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "long_task.py")],
        env=child_environment(server.otlp_http, **env), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    ids = json.loads(process.stdout.readline())
    return process, ids


STALL_AFTER = 1.5  # the server's --stall-after, seconds
HEARTBEAT = 0.5  # the job's heartbeat interval, seconds
SWEEP_EVERY = 1.0  # how often the server looks for stalled tasks (background._SWEEP_EVERY_S)


def test_a_task_shows_running_then_a_sigkill_leaves_it_stalled_after_stall_after(
    start_tasktree, private_db
):
    # Its own database: no server with another stall window folds these tasks.
    server = start_tasktree(extra_args=("--stall-after", str(STALL_AFTER)), database=private_db)
    process, ids = start_long_task(
        server, TASKTREE_SNAPSHOT_DELAY="1", TASKTREE_HEARTBEAT_INTERVAL=str(HEARTBEAT)
    )
    with process:
        started = time.monotonic()
        wait_for_task(server, ids["trace_id"], ids["span_id"], lambda t: t["status"] == "running")
        shown_after = time.monotonic() - started
        process.kill()
    killed = time.monotonic()
    task = wait_for_task(
        server, ids["trace_id"], ids["span_id"], lambda t: t["status"] == "stalled"
    )
    stalled_after = time.monotonic() - killed
    print(
        f"running shown {shown_after:.2f}s after start; stalled {stalled_after:.2f}s after SIGKILL"
        f" (--stall-after {STALL_AFTER}s)"
    )
    run = server.get(f"/api/runs/{ids['trace_id']}")
    assert run["counts"]["stalled"] == 2  # long and long-root, both left running by the kill
    assert task["last_heartbeat"] is not None
    # Not before its last heartbeat (at most a heartbeat or two before the kill) is stall_after
    # old; and within stall_after plus one sweep, with room for a loaded machine.
    assert stalled_after >= STALL_AFTER - 2 * HEARTBEAT, "stalled while its heartbeat was fresh"
    assert stalled_after <= 2 * (STALL_AFTER + SWEEP_EVERY), "stalled far later than stall_after"


def test_sigterm_flushes_the_running_tasks_as_errors(tasktree_server):
    process, ids = start_long_task(tasktree_server)
    with process:
        wait_for_task(
            tasktree_server, ids["trace_id"], ids["span_id"], lambda t: t["status"] == "running"
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    task = wait_for_task(
        tasktree_server, ids["trace_id"], ids["span_id"], lambda t: t["status"] != "running"
    )
    assert task["status"] == "error"
    assert task["status_message"] == "terminated by SIGTERM"


def test_a_job_exporting_over_grpc_delivers_a_task_whose_name_is_not_utf8(tasktree_server):
    # os.fsdecode of a file name that is not UTF-8 holds a lone surrogate: OpenTelemetry's gRPC
    # exporter refused the whole batch for it, and with it every other task of the run.
    code = (
        "import json, os\n"
        "from opentelemetry import trace\n"
        "from tasktree.instrumentation import configure, task\n"
        "configure()\n"
        "with task('grpc-root'):\n"
        "    ids = trace.get_current_span().get_span_context()\n"
        "    with task('load ' + os.fsdecode(b'report-\\xff.csv')):\n"
        "        pass\n"
        "    for i in range(3):\n"
        "        with task(f'after-{i}'):\n"
        "            pass\n"
        "print(json.dumps({'trace_id': format(ids.trace_id, '032x')}))\n"
    )
    env = child_environment(
        tasktree_server.otlp_grpc,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_INSECURE="true",
    )
    job = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0, job.stderr
    assert "Traceback" not in job.stderr and "Failed to export" not in job.stderr, job.stderr
    trace_id = json.loads(job.stdout.splitlines()[-1])["trace_id"]
    tasktree_server.wait_folded()
    nodes = records_from_api(tasktree_server, trace_id)
    assert sorted(node.name for node in nodes) == [
        "after-0", "after-1", "after-2", "grpc-root", "load report-\\udcff.csv"
    ]  # fmt: skip
    run = tasktree_server.get(f"/api/runs/{trace_id}")
    assert run["status"] == "ok" and run["counts"]["ok"] == 5
