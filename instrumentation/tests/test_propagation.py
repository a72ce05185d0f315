"""The environment carrier, context capture for pools, and configure()'s two modes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from job_support import child_environment, run_script
from opentelemetry import context, trace

from tasktree.instrumentation import child_env, in_context, task
from tasktree.instrumentation.propagation import read_process_parent
from tasktree.instrumentation.testing import TaskRecorder

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def current_ids():
    ctx = trace.get_current_span().get_span_context()
    return (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) if ctx.is_valid else None


def test_child_env_injects_the_current_task_into_a_copy_and_never_touches_os_environ():
    with TaskRecorder():
        before = dict(os.environ)
        with task("parent") as span:
            env = child_env({"PATH": "/bin", "TRACEPARENT": "stale", "TRACESTATE": "stale"})
        assert dict(os.environ) == before
    ctx = span.get_span_context()
    assert set(env) == {"PATH", "TRACEPARENT"} and env["PATH"] == "/bin"
    assert env["TRACEPARENT"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")


def test_child_env_without_a_current_task_is_a_plain_copy():
    assert child_env({"TRACEPARENT": TRACEPARENT}) == {"TRACEPARENT": TRACEPARENT}


def test_subprocesses_get_the_current_task_as_traceparent():
    with TaskRecorder():
        with task("spawner") as span:
            out = subprocess.run(
                [sys.executable, "-c", "import os; print(os.environ.get('TRACEPARENT'))"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
    assert f"-{span.get_span_context().span_id:016x}-" in out
    assert "TRACEPARENT" not in os.environ


def test_read_process_parent_accepts_valid_and_ignores_invalid_values():
    ctx = read_process_parent({"TRACEPARENT": TRACEPARENT})
    token = context.attach(ctx)
    try:
        assert current_ids() == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    finally:
        context.detach(token)
    for bad in (
        "",
        "garbage",
        TRACEPARENT.upper(),
        "ff" + TRACEPARENT[2:],
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
    ):
        assert read_process_parent({"TRACEPARENT": bad}) is None


def test_in_context_is_picklable_and_runs_the_function_under_the_submitting_task():
    with TaskRecorder() as recorder:
        with task("submitter"):
            bound = in_context(current_ids)
        restored = pickle.loads(pickle.dumps(bound))
        ids = restored()
    submitter = recorder.get("submitter").context
    assert ids == (f"{submitter.trace_id:032x}", f"{submitter.span_id:016x}")
    assert current_ids() is None  # detached again


def test_in_context_without_a_task_runs_with_no_parent_even_inside_another_task():
    bound = in_context(current_ids)
    with TaskRecorder():
        with task("unrelated"):
            assert bound() is None


def test_configure_on_an_application_provider_only_adds_running_snapshots(otlp_sink):
    code, out, err = run_script("attach_mode.py", env=child_environment(otlp_sink.endpoint))
    assert code == 0, err
    assert out == {"same_provider": True, "app_finals": ["attached"]}
    otlp_sink.wait_for(lambda rs: any(r.running and r.name == "attached" for r in rs))
    assert [r for r in otlp_sink.snapshot() if not r.running] == []  # finals stay the app's
