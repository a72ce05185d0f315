"""tasktree-run: any program as a task, through a real OTLP socket."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from job_support import SCRIPTS, child_environment

from tasktree.instrumentation.runner import STDERR_TAIL_ATTRIBUTE, job_name

RUNNER = str(Path(sys.executable).with_name("tasktree-run"))


def run(sink, *command, name="job", extra=(), **env):
    return subprocess.run(
        [RUNNER, "--name", name, *extra, "--", *command],
        env=child_environment(sink.endpoint, **env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def final(sink, name):
    records = sink.wait_for(lambda rs: any(r.name == name and not r.running for r in rs))
    return next(r for r in records if r.name == name and not r.running)


def test_success_passes_stdout_and_exit_code_through_and_ends_ok(otlp_sink):
    proc = run(otlp_sink, sys.executable, "-c", "print('hello')")
    assert proc.returncode == 0 and proc.stdout == "hello\n"
    record = final(otlp_sink, "job")
    assert record.status == "unset" and record.parent is None
    assert record.attributes["process.exit.code"] == 0
    assert STDERR_TAIL_ATTRIBUTE not in record.attributes
    assert record.resource["service.name"] == "job"


def test_failure_tees_stderr_keeps_its_tail_and_passes_the_exit_code(otlp_sink):
    script = "import sys; sys.stderr.write('x' * 20000 + 'the end\\n'); sys.exit(4)"
    proc = run(otlp_sink, sys.executable, "-c", script)
    assert proc.returncode == 4
    assert (
        proc.stderr.endswith("the end\n") and proc.stderr.count("x") == 20000
    )  # passed through whole
    record = final(otlp_sink, "job")
    assert record.status == "error" and record.status_message == "exit code 4"
    tail = record.attributes[STDERR_TAIL_ATTRIBUTE]
    assert tail.endswith("the end\n") and len(tail) == 8192


def test_without_a_stderr_tail_the_program_has_the_runner_s_own_stderr(otlp_sink, tmp_path):
    """stderr through the tee is a pipe: no terminal for the program (colours, progress bars),
    lines reordered against stdout in one file.  --no-stderr-tail leaves it alone."""
    script = "import os, sys; print(os.readlink('/proc/self/fd/2')); sys.exit(3)"
    log = tmp_path / "stderr.log"
    for extra, expected in (((), "pipe:"), (("--no-stderr-tail",), str(log))):
        with open(log, "w") as stderr:
            proc = subprocess.run(
                [RUNNER, "--name", f"job{len(extra)}", *extra, "--", sys.executable, "-c", script],
                env=child_environment(otlp_sink.endpoint), stdout=subprocess.PIPE,
                stderr=stderr, text=True, timeout=60,
            )  # fmt: skip
        assert proc.returncode == 3 and proc.stdout.startswith(expected)
    teed, left_alone = final(otlp_sink, "job0"), final(otlp_sink, "job1")
    assert left_alone.status == "error" and left_alone.status_message == "exit code 3"
    assert STDERR_TAIL_ATTRIBUTE not in left_alone.attributes
    assert teed.status == "error"


def test_a_program_killed_by_a_signal_is_an_error_named_after_the_signal(otlp_sink):
    proc = run(
        otlp_sink, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert proc.returncode == 128 + 9
    assert final(otlp_sink, "job").status_message == "killed by SIGKILL"


def test_a_background_process_the_program_leaves_behind_is_not_waited_for(otlp_sink):
    started = time.monotonic()
    proc = run(otlp_sink, "sh", "-c", "sleep 6 >/dev/null & echo started; echo bye >&2")
    assert time.monotonic() - started < 4  # not the 6 s of the background sleep
    assert proc.returncode == 0 and proc.stdout == "started\n" and proc.stderr == "bye\n"
    record = final(otlp_sink, "job")
    assert record.status == "unset" and (record.end_ns - record.start_ns) / 1e9 < 2


@pytest.mark.parametrize(
    ("program", "code", "message"),
    [
        ("/nonexistent/program", 127, "command not found: /nonexistent/program"),
        ("{script}/x", 127, "command not found: {script}/x"),  # a path through a file
        ("{script}", 126, "cannot execute {script}: Exec format error (a script needs a #! line)"),
        ("{folder}", 126, "cannot execute {folder}: Permission denied"),
    ],
)
def test_a_program_that_cannot_start_is_an_error_with_a_shell_s_exit_code(
    otlp_sink, tmp_path, program, code, message
):
    script = tmp_path / "no-shebang.sh"
    script.write_text("echo hello\n")
    script.chmod(0o755)
    paths = {"script": str(script), "folder": str(tmp_path)}
    proc = run(otlp_sink, program.format(**paths))
    assert proc.returncode == code
    assert proc.stderr == f"tasktree-run: {message.format(**paths)}\n"  # no traceback
    record = final(otlp_sink, "job")
    assert record.status == "error" and record.status_message == message.format(**paths)
    assert record.attributes["process.exit.code"] == code


# Flags 00: an upstream service with head sampling hands on "not sampled"; the job must still be
# recorded (OpenTelemetry's default sampler would drop every task of it silently).
@pytest.mark.parametrize("flags", ["01", "00"])
def test_runner_is_a_child_of_traceparent_and_passes_its_own_task_on(otlp_sink, flags):
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    proc = run(
        otlp_sink, sys.executable, str(SCRIPTS / "child_task.py"), "inner-program",
        TRACEPARENT=f"00-{trace_id}-{span_id}-{flags}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runner, child = final(otlp_sink, "job"), final(otlp_sink, "inner-program")
    assert runner.trace_id == child.trace_id == trace_id
    assert runner.parent == span_id and child.parent == runner.span_id
    assert f"-{runner.span_id}-" in proc.stdout  # the program saw the runner's task as TRACEPARENT
    failed = run(otlp_sink, "sh", "-c", "exit 4", name="failing",
                 TRACEPARENT=f"00-{trace_id}-{span_id}-{flags}")  # fmt: skip
    assert failed.returncode == 4 and final(otlp_sink, "failing").status == "error"


def test_otel_traces_sampler_still_decides_when_it_is_set(otlp_sink):
    proc = run(otlp_sink, sys.executable, str(SCRIPTS / "child_task.py"), "unsampled-program",
               name="dropped", OTEL_TRACES_SAMPLER="always_off")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    kept = run(otlp_sink, "true", name="kept")
    assert kept.returncode == 0 and final(otlp_sink, "kept")
    assert not [r for r in otlp_sink.records if r.name in ("dropped", "unsampled-program")]


def test_with_the_sink_down_a_short_program_exits_at_once_with_one_line_about_it():
    """Nothing listens at the endpoint: the program's exit code, about 1 s more (not the flush
    timeout while OpenTelemetry's exporter retries 1, 2, 4 s), and one line on its stderr instead
    of the exporter's retry warnings."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = child_environment(endpoint, TASKTREE_FLUSH_TIMEOUT="20")
    started = time.monotonic()
    proc = subprocess.run([RUNNER, "--name", "offline", "--", "sh", "-c", "exit 7"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 7
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tasktree: not delivered so far: 1 final")
    assert "Connection refused" in lines[0]
    assert took < 5  # the exporter's own retries would last 7 s (1 + 2 + 4) before it gave up


def test_the_runner_heartbeats_while_the_program_runs(otlp_sink):
    proc = run(
        otlp_sink,
        sys.executable,
        "-c",
        "import time; time.sleep(1.5)",
        extra=("--heartbeat", "0.3"),
    )
    assert proc.returncode == 0
    record = final(otlp_sink, "job")
    beats = [r for r in otlp_sink.snapshot() if r.running and r.span_id == record.span_id]
    assert len(beats) >= 2


@pytest.mark.parametrize(
    "command, name",
    [
        (["python3", "etl.py", "--date", "x"], "etl"),
        (["/usr/bin/python3.11", "-u", "-m", "pkg.job"], "pkg.job"),
        (["bash", "-c", "echo"], "bash"),
        (["/opt/bin/make", "all"], "make"),
        (["python", "-W", "ignore", "-X", "dev", "etl.py"], "etl"),  # options with a value
        (["bash", "-e", "-o", "pipefail", "deploy.sh"], "deploy"),  # -e is errexit, not code
        (["node", "-r", "dotenv/config", "app.js"], "app"),
        (["node", "-e", "console.log(1)"], "node"),
        (["/usr/bin/env", "-u", "HOME", "BATCH=1", "python3", "-m", "pkg.job"], "pkg.job"),
        (["env", "make", "all"], "make"),
        (["pypy3", "--", "job.py"], "job"),
    ],
)
def test_job_name_comes_from_the_script_of_an_interpreter(command, name):
    assert job_name(command) == name


def test_secrets_in_the_command_never_reach_the_sink(otlp_sink):
    script = "true --password=hunter2a; echo 'Authorization: Bearer hunter2b' >/dev/null"
    proc = subprocess.run(
        [RUNNER, "--", "sh", "-c", script, "postgresql://etl:p@ss-hunter2c@db/x"],
        env=child_environment(otlp_sink.endpoint, TASKTREE_CAPTURE_ENV="*",
                              OTEL_EXPORTER_OTLP_HEADERS="x-team=hunter2d"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = otlp_sink.wait_for(lambda rs: any(not r.running for r in rs))
    [record] = [r for r in records if not r.running]
    assert "hunter2" not in repr((record.name, record.attributes, record.resource))
    assert "--password=[redacted]" in record.attributes["tasktree.command"]


def test_under_opentelemetry_instrument_the_runner_s_own_options_still_apply(otlp_sink):
    """A program a job starts under opentelemetry-instrument inherits its loader: tasktree-run
    is then configured before its main, and its --name and --heartbeat were ignored."""
    instrument = str(Path(sys.executable).with_name("opentelemetry-instrument"))
    proc = subprocess.run(
        [instrument, RUNNER, "--name", "nightly-step", "--heartbeat", "0.3", "--",
         sys.executable, "-c", "import time; time.sleep(1.5)"],
        env=child_environment(otlp_sink.endpoint), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "are ignored" not in proc.stderr
    record = final(otlp_sink, "nightly-step")
    assert record.resource["service.name"] == "nightly-step"  # the job is named after --name
    beats = [r for r in otlp_sink.snapshot() if r.running and r.span_id == record.span_id]
    assert len(beats) >= 2  # every 0.3 s, not every 10 s


def test_secrets_a_failing_program_prints_on_stderr_are_masked_in_its_tail(otlp_sink):
    script = ('curl -sf -H "Authorization: Bearer $DEPLOY_TOKEN" https://h/none 2>/dev/null;'
              ' true "$DATABASE_URL" --password hunter2c; echo "could not deploy" >&2; exit 3')
    proc = run(
        otlp_sink, "sh", "-xc", script, name="deploy",
        DEPLOY_TOKEN="hunter2a_deploy_token", DATABASE_URL="postgresql://app:hunter2b@db/app",
    )  # fmt: skip
    assert proc.returncode == 3 and "hunter2a" in proc.stderr  # passed through as it was
    tail = final(otlp_sink, "deploy").attributes[STDERR_TAIL_ATTRIBUTE]
    assert "hunter2" not in tail
    assert "Authorization: Bearer [redacted]" in tail and "could not deploy" in tail
    assert "postgresql://app:[redacted]@db/app --password [redacted]" in tail
