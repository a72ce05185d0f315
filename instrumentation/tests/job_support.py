"""Running the child job scripts of ``tests/scripts/`` against a sink or a ``tasktree serve``: the
environment a child job gets and a runner that returns its report (used here and by
``tests/e2e/``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"


def child_environment(endpoint: str, **extra: str) -> dict[str, str]:
    """A child job's environment: the sink's endpoint, fast heartbeats, no inherited context."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_"))}
    for key in ("TRACEPARENT", "TRACESTATE", "BAGGAGE"):
        env.pop(key, None)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        TASKTREE_SNAPSHOT_DELAY="0.2",
        TASKTREE_HEARTBEAT_INTERVAL="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_script(
    name: str, *args: str, env: dict[str, str], timeout: float = 120
) -> tuple[int, dict, str]:
    """Runs ``tests/scripts/<name>``; returns (exit code, its last stdout line as JSON, stderr)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), proc.stderr


_ONE_TASK_JOB = (
    "from tasktree.instrumentation import configure, task\n"
    "configure()\n"
    "with task('one'):\n"
    "    pass\n"
)


def one_task_job(**environment: str) -> str:
    """Runs a job of one task, named ``one``, with ``environment`` (and no endpoint but one given
    there); asserts it exits 0 and returns its stderr."""
    return job_stderr(_ONE_TASK_JOB, **environment)


def job_stderr(code: str, **environment: str) -> str:
    """Runs the Python job ``code`` with ``environment`` (and no endpoint but one given there);
    asserts it exits 0 and returns its stderr."""
    env = child_environment("")
    del env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    env.update(environment)
    job = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0, job.stderr
    return job.stderr
