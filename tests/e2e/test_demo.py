"""The README's first command: ``tasktree demo`` serves and stores an instrumented sample job; the
embedded PostgreSQL it runs on stops with the last tasktree using it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import psycopg
import pytest


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    "host, url",
    [
        ("127.0.0.1", "http://127.0.0.1:"),
        pytest.param(
            "::1",
            "http://[::1]:",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
)
def test_demo_stores_an_instrumented_run_of_thousands_of_tasks_and_prints_the_url(
    clean_db, host, url
):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tasktree.exporter",
            "demo",
            "--exit",
            "--host",
            host,
            "--database-url",
            clean_db,
            "--port",
            "0",
            "--otlp-http-port",
            "0",
            "--otlp-grpc-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"tasktree is running: {url}" in out.stdout
    assert "is not a valid URL" not in out.stderr
    with psycopg.connect(clean_db) as conn:
        [(job, status, tasks, errors, roots)] = conn.execute(
            "SELECT job, status, task_count, n_error, root_count FROM runs"
        ).fetchall()
        names = dict(conn.execute("SELECT name, count(*) FROM tasks GROUP BY name").fetchall())
        report_parent = conn.execute(
            "SELECT p.name FROM tasks c JOIN tasks p ON p.trace_id = c.trace_id"
            " AND p.span_id = c.parent_span_id WHERE c.name = 'render-report'"
        ).fetchone()
    assert (job, status, roots) == ("demo-etl", 3, 1)  # one root, ended ok
    assert tasks > 2500 and errors > 0
    assert names["transform-chunk"] == 1000 and names["load-batch"] == 1000  # process pool, threads
    assert report_parent == ("report",)  # the child program hangs under its launcher


_DEMO = [sys.executable, "-m", "tasktree.exporter", "demo",
         "--port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", "0"]  # fmt: skip


def _embedded_environment(data_dir, **env) -> dict[str, str]:
    """No database URL: the embedded PostgreSQL under ``data_dir``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TASKTREE_")}
    environment.update(TASKTREE_DATA_DIR=str(data_dir), **env)
    return environment


def _demo_on_embedded_database(data_dir, **env) -> subprocess.CompletedProcess:
    """``tasktree demo --exit`` on the embedded PostgreSQL under ``data_dir``."""
    return subprocess.run(
        [*_DEMO, "--exit"], env=_embedded_environment(data_dir, **env),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _embedded_pid(stderr: str) -> int:
    found = re.search(r"embedded PostgreSQL \(pid (\d+)", stderr)
    assert found, f"the demo does not say which PostgreSQL it started:\n{stderr[-3000:]}"
    return int(found.group(1))


def _processes_using(data_dir) -> list[str]:
    """Every process whose command line names ``data_dir`` (the postmaster's ``-D``)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if str(data_dir) in " ".join(process.info["cmdline"] or ()):
            found.append(f"{process.info['pid']}: {' '.join(process.info['cmdline'])}")
    return found


def _wait_until(condition, log, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def _ends_soon(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` is gone within ``timeout`` (``pg_ctl stop -w`` returns as the
    postmaster removes its pid file, a moment before the process itself ends)."""
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_the_demo_on_the_embedded_database_leaves_no_server_running(tmp_path):
    out = _demo_on_embedded_database(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    pid = _embedded_pid(out.stderr)
    assert _ends_soon(pid), f"the embedded PostgreSQL {pid} outlived the demo"
    assert _processes_using(tmp_path) == []


def test_a_kept_embedded_database_says_how_to_stop_it_and_that_command_stops_it(tmp_path):
    out = _demo_on_embedded_database(tmp_path, TASKTREE_KEEP_DATABASE="true")
    assert out.returncode == 0, out.stderr[-3000:]
    pid = _embedded_pid(out.stderr)
    try:
        assert psutil.pid_exists(pid), "TASKTREE_KEEP_DATABASE=true: the server should stay up"
        stop = re.search(r"stop it with: (.+)", out.stderr)
        assert stop, out.stderr[-3000:]
        subprocess.run(stop.group(1), shell=True, check=True)
        assert _ends_soon(pid, 30.0)
        assert _processes_using(tmp_path) == []
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()


@contextlib.contextmanager
def _serving(argv, data_dir, log, ready: str) -> Iterator[subprocess.Popen]:
    """``argv`` (a tasktree command) on the embedded PostgreSQL under ``data_dir`` (stderr to
    ``log``), once it prints a line starting with ``ready``; killed afterwards if still running."""
    with log.open("w") as stderr, subprocess.Popen(
        argv, env=_embedded_environment(data_dir), stdout=subprocess.PIPE, stderr=stderr,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(ready):
                    break
            else:
                raise AssertionError(f"{argv[3]} ended early:\n{log.read_text()[-3000:]}")
            yield process
        finally:
            if process.poll() is None:
                process.kill()


_DEMO_READY = "press Ctrl-C to stop"


def test_a_demo_stopped_with_sigterm_stops_its_embedded_database(tmp_path):
    """``kill``, ``docker stop`` and systemd stop a program with SIGTERM, not Ctrl-C."""
    data_dir, log = tmp_path / "data", tmp_path / "stderr.log"
    with _serving(_DEMO, data_dir, log, _DEMO_READY) as demo:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0, log.read_text()[-3000:]
    pid = _embedded_pid(log.read_text())
    assert _ends_soon(pid), f"the embedded PostgreSQL {pid} outlived the demo"
    assert _processes_using(data_dir) == []


def test_an_embedded_database_left_by_a_killed_demo_is_stopped_by_the_next_one(tmp_path):
    """SIGKILL (or the OOM killer) gives tasktree no chance to stop the server it started; the
    next tasktree on the same data reuses it and, when it exits, stops it."""
    data_dir, log = tmp_path / "data", tmp_path / "stderr.log"
    with _serving(_DEMO, data_dir, log, _DEMO_READY) as demo:
        demo.kill()
        demo.wait(60)
    pid = _embedded_pid(log.read_text())
    try:
        assert not _ends_soon(pid, 2.0), "a killed demo cannot have stopped its PostgreSQL"
        out = _demo_on_embedded_database(data_dir)
        assert out.returncode == 0, out.stderr[-3000:]
        assert f"left running by tasktree (pid {demo.pid})" in out.stderr, out.stderr[-3000:]
        assert _ends_soon(pid), f"the embedded PostgreSQL {pid} outlived the second demo"
        assert _processes_using(data_dir) == []
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def test_a_fold_worker_outliving_a_killed_server_stops_the_embedded_database(tmp_path):
    """``--workers 2``: the server is killed with SIGKILL, its fold worker notices and leaves,
    and the last of them to leave stops the database they shared."""
    data_dir, log = tmp_path / "data", tmp_path / "stderr.log"
    serve = [sys.executable, "-m", "tasktree.exporter", "serve", "--workers", "2",
             "--port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", "0"]  # fmt: skip
    with _serving(serve, data_dir, log, "TASKTREE_READY") as server:
        [worker] = psutil.Process(server.pid).children()
        _wait_until(lambda: log.read_text().count("stops when tasktree exits") == 2, log)
        server.kill()  # both on the database's list of users
        server.wait(60)
    pid = _embedded_pid(log.read_text())
    try:
        assert _ends_soon(worker.pid, 30.0), "the fold worker outlived its server"
        assert _ends_soon(pid), f"the embedded PostgreSQL {pid} outlived every tasktree"
        assert _processes_using(data_dir) == []
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
