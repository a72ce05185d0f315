"""Child-process behaviour through a real OTLP socket: the propagation matrix, exits, signals,
TRACEPARENT, a sink that is down, and ``opentelemetry-instrument``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from job_support import SCRIPTS, child_environment, run_script
from propagation_matrix import assert_matrix, records_from_sink

from tasktree.instrumentation.snapshot import ABANDONED_MESSAGE

BIN = Path(sys.executable).parent


def finals_named(sink, *names):
    """Waits until a final record of each name arrived; returns {name: record}."""
    records = sink.wait_for(lambda rs: set(names) <= {r.name for r in rs if not r.running})
    return {r.name: r for r in records if not r.running and r.name in names}


def test_propagation_matrix_every_task_under_its_exact_parent(otlp_sink):
    code, out, err = run_script("matrix_job.py", env=child_environment(otlp_sink.endpoint))
    assert code == 0, err
    finals = finals_named(otlp_sink, "matrix")  # the root ends last
    assert finals["matrix"].trace_id == out["trace_id"]
    assert_matrix(records_from_sink(otlp_sink.snapshot()))
    # A forked child's records carry its own pid in their resource, not its parent's.
    forked = finals_named(otlp_sink, "process-fork-leaf")["process-fork-leaf"]
    assert forked.resource["process.pid"] != finals["matrix"].resource["process.pid"]
    assert "process.pid" not in forked.attributes


@pytest.mark.parametrize(
    "mode, exit_code, status, message",
    [
        ("normal", 0, "unset", ""),
        ("sys-exit", 3, "error", "SystemExit: 3"),
        ("exception", 1, "error", "RuntimeError: unhandled"),
    ],
)
def test_every_way_of_exiting_flushes_what_was_recorded(
    otlp_sink, mode, exit_code, status, message
):
    code, _, err = run_script("exit_modes.py", mode, env=child_environment(otlp_sink.endpoint))
    assert code == exit_code, err
    records = finals_named(otlp_sink, f"exit-{mode}", "done-before")
    assert records[f"exit-{mode}"].status == status
    assert records[f"exit-{mode}"].status_message == message
    assert records["done-before"].status == "unset"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_child_that_alone_calls_configure_delivers_its_tasks(otlp_sink, method):
    code, report, err = run_script("configured_in_child.py", method,
                                   env=child_environment(otlp_sink.endpoint))  # fmt: skip
    assert code == 0 and report == {"exitcode": 0}, err
    records = finals_named(otlp_sink, "child-outer", "child-inner")
    assert records["child-inner"].parent == records["child-outer"].span_id
    assert "Traceback" not in err


def test_a_task_still_running_in_a_daemon_thread_at_exit_is_recorded_as_abandoned(otlp_sink):
    code, _, err = run_script(
        "exit_modes.py", "daemon-thread", env=child_environment(otlp_sink.endpoint)
    )
    assert code == 0, err
    records = finals_named(otlp_sink, "daemon-task", "exit-daemon-thread")
    assert records["daemon-task"].status == "error"
    assert records["daemon-task"].status_message == ABANDONED_MESSAGE


def start_long_task(sink):
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "long_task.py")],
        env=child_environment(sink.endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    ids = json.loads(process.stdout.readline())
    # Running within the snapshot delay, then heartbeats: wait for two of them.
    sink.wait_for(lambda rs: sum(r.running and r.span_id == ids["span_id"] for r in rs) >= 2)
    return process, ids


def test_sigterm_flushes_running_tasks_as_terminated_and_the_process_still_dies_of_it(otlp_sink):
    process, ids = start_long_task(otlp_sink)
    with process:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    records = finals_named(otlp_sink, "long", "long-root")
    assert records["long"].span_id == ids["span_id"]
    assert records["long"].status == "error"
    assert records["long"].status_message == "terminated by SIGTERM"
    assert records["long-root"].status_message == "terminated by SIGTERM"
    assert records["long"].parent == records["long-root"].span_id


@pytest.mark.parametrize("lock", ["processor", "attributes"])
def test_sigterm_inside_a_lock_the_flush_needs_still_flushes_at_once_and_dies(otlp_sink, lock):
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "sigterm_inside_lock.py"), lock],
        env=child_environment(otlp_sink.endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    with process:
        signalled_at = json.loads(process.stdout.readline())["signalled_at"]
        assert process.wait(30) == -signal.SIGTERM, process.stderr.read()
        assert time.time() - signalled_at < 3  # not the flush timeout + 1 s (6 s), waiting
    records = finals_named(otlp_sink, "inner", "root")
    assert records["inner"].status_message == "terminated by SIGTERM"
    assert records["inner"].attributes["rows"] == 3
    assert records["root"].status_message == "terminated by SIGTERM"


def test_sigkill_leaves_the_task_running_with_heartbeats_that_stop(otlp_sink):
    process, ids = start_long_task(otlp_sink)
    with process:
        process.kill()
    records = otlp_sink.snapshot()
    beats = [r for r in records if r.span_id == ids["span_id"]]
    assert beats and all(r.running for r in beats)  # no final record: the sink will mark it stalled
    assert [r.end_ns for r in beats] == sorted(r.end_ns for r in beats)


def test_sigterm_during_the_exit_flush_waits_for_it_instead_of_cutting_it_short(otlp_sink):
    # A service manager stopping a whole process group (a Celery worker's pool processes, a
    # multiprocessing pool's terminate()) signals processes that are already flushing on their
    # way out; the records of the tasks they finished must still arrive.
    otlp_sink.mode = "down"  # the exit flush's first attempt gets a 503 and retries after ~1 s
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "exit_modes.py"), "normal"],
        env=child_environment(otlp_sink.endpoint), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with process:
        deadline = time.monotonic() + 30
        while otlp_sink.requests == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the job never tried to export"
            time.sleep(0.01)
        otlp_sink.mode = "up"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM, process.stderr.read()
    records = finals_named(otlp_sink, "exit-normal", "done-before")
    assert records["done-before"].parent == records["exit-normal"].span_id


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sink_down_for_the_whole_run_lets_the_job_finish_with_bounded_memory():
    env = child_environment(f"http://127.0.0.1:{closed_port()}", OTEL_BSP_MAX_QUEUE_SIZE="1000")
    code, out, err = run_script("sink_down_job.py", "20000", env=env)
    assert code == 0, err
    assert out["queue"] <= out["max_queue"] == 1000
    assert out["dropped"] >= 20000 - 1000 - 512
    assert out["rss_growth_kib"] < 30_000  # keeping 20,000 spans of this size takes ~60 MB
    assert "not delivered so far" in err


def test_a_pool_renewing_its_processes_is_not_held_up_by_a_sink_that_is_down():
    """With maxtasksperchild=1 every task runs in a new process, whose flush after the task is
    its first export: each waited the whole flush timeout (5 s a task) while the exporter retried
    a sink where nothing listens, and 10 tiny tasks took 30 s instead of 0.2 s."""
    code = (
        "import multiprocessing as mp, time\n"
        "from tasktree.instrumentation import configure, task\n"
        "@task\n"
        "def tiny(i): return i\n"
        "if __name__ == '__main__':\n"
        "    configure()\n"
        "    started = time.monotonic()\n"
        "    with mp.Pool(2, maxtasksperchild=1) as pool:\n"
        "        pool.map(tiny, range(6), chunksize=1)\n"
        "    print(time.monotonic() - started)\n"
    )
    env = child_environment(f"http://127.0.0.1:{closed_port()}", TASKTREE_FLUSH_TIMEOUT="20")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # 3 processes in turn on each of the 2 workers: 60 s at the flush timeout, not 3 or so
    assert float(proc.stdout.strip()) < 20, proc.stderr


def test_progress_set_in_a_pool_worker_outside_a_task_is_said_to_be_lost(otlp_sink):
    """In a thread, set_progress from a plain function reaches the submitting task; in a process
    pool's worker that task lives in another process, and the progress was lost without a word."""
    code = (
        "import multiprocessing as mp\n"
        "from tasktree.instrumentation import configure, set_progress, task\n"
        "def plain(i):\n"
        "    set_progress(i, 4)\n"
        "    set_progress(i + 1, 4)\n"
        "if __name__ == '__main__':\n"
        "    configure()\n"
        "    with task('submitter'):\n"
        "        with mp.get_context('fork').Pool(1) as pool:\n"
        "            pool.map(plain, range(2))\n"
    )
    env = child_environment(otlp_sink.endpoint)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = "outside a task of this process"
    warnings = [line for line in proc.stderr.splitlines() if said in line]
    assert len(warnings) == 1, proc.stderr  # once per process, however many calls
    assert "make the function a @task" in warnings[0]


def test_a_short_job_whose_sink_is_down_says_at_exit_what_was_not_delivered():
    """Every record of a short job is in its exit flush: the export cut short at exit must be
    counted before the report, or the job ends saying nothing of the records it lost."""
    code = (
        "from tasktree.instrumentation import configure, task\n"
        "configure()\n"
        "with task('short'):\n"
        "    for i in range(10):\n"
        "        with task('step'):\n"
        "            pass\n"
    )
    env = child_environment(f"http://127.0.0.1:{closed_port()}")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tasktree: not delivered so far: 11 final span records" in proc.stderr, proc.stderr


def test_a_process_started_with_traceparent_hangs_its_tasks_under_it(otlp_sink):
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = child_environment(otlp_sink.endpoint, TRACEPARENT=f"00-{trace_id}-{span_id}-01")
    code, _, err = run_script("child_task.py", "adopted", env=env)
    assert code == 0, err
    records = finals_named(otlp_sink, "adopted", "adopted/inner")
    assert records["adopted"].trace_id == trace_id and records["adopted"].parent == span_id
    assert records["adopted/inner"].parent == records["adopted"].span_id


def test_an_invalid_traceparent_is_ignored(otlp_sink):
    env = child_environment(
        otlp_sink.endpoint, TRACEPARENT="00-00000000000000000000000000000000-00f067aa0ba902b7-01"
    )
    code, _, err = run_script("child_task.py", "fresh", env=env)
    assert code == 0, err
    assert finals_named(otlp_sink, "fresh")["fresh"].parent is None


def test_opentelemetry_instrument_picks_up_live_tasks_and_propagation_without_code_changes(
    otlp_sink,
):
    env = child_environment(otlp_sink.endpoint, OTEL_SERVICE_NAME="plain")
    proc = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(SCRIPTS / "plain_job.py")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    trace_id = json.loads(proc.stdout.splitlines()[-1])["trace_id"]
    records = finals_named(otlp_sink, "plain-job", "plain-slow", "plain-leaf", "plain-thread")
    assert records["plain-job"].trace_id == trace_id
    assert records["plain-leaf"].parent == records["plain-job"].span_id  # a spawned process
    assert records["plain-thread"].parent == records["plain-job"].span_id
    # The threading instrumentor is instrumented once, by the loader: no warning in the job's log.
    assert "already instrumented" not in proc.stderr, proc.stderr
    assert records["plain-job"].resource["service.name"] == "plain"
    assert any(r.running and r.name == "plain-slow" for r in otlp_sink.snapshot())
