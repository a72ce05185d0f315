"""``tasktree demo``: the service on the embedded PostgreSQL plus a sample job, then the URL."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

from tasktree.exporter.receiver.otlp_http import TRACES_PATH
from tasktree.exporter.settings import Settings


def run_demo(settings: Settings, *, exit_when_done: bool = False) -> int:
    from tasktree.exporter.server import Service

    # kill, docker stop and systemd stop a program with SIGTERM: stop as on Ctrl-C, so that the
    # service stops and the embedded PostgreSQL with it (Python's default for SIGTERM exits at
    # once, and the embedded server stayed up).
    signal.signal(signal.SIGTERM, _interrupt)
    settings = dataclasses.replace(
        settings,
        port=_free_or_zero(settings.host, settings.port),
        otlp_http_port=_free_or_zero(settings.host, settings.otlp_http_port),
        otlp_grpc_port=_free_or_zero(settings.host, settings.otlp_grpc_port),
    )
    service = Service(settings).start()
    try:
        return _run_sample_job(service, exit_when_done)
    except KeyboardInterrupt:
        return 0
    finally:
        service.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_sample_job(service, exit_when_done: bool) -> int:
    """Run the sample job against ``service``; then return its exit code, or wait for Ctrl-C."""
    urls = service.urls()
    print(f"tasktree is running: {urls['ui']}  (API {urls['api']})", flush=True)
    print("running the sample job (a few thousand tasks)...", flush=True)
    env = dict(
        os.environ,
        OTEL_EXPORTER_OTLP_ENDPOINT=urls["otlp_http"].removesuffix(TRACES_PATH),
        TASKTREE_HEARTBEAT_INTERVAL="1",
    )
    started_ns = time.time_ns()
    job = subprocess.run([sys.executable, "-m", "tasktree.exporter.demo_job"], env=env)
    _wait_until_folded(service)
    if not _runs_since(service, started_ns):
        print("tasktree: the sample job's tasks did not arrive; see its messages above",
              file=sys.stderr, flush=True)  # fmt: skip
        return job.returncode or 1
    print(f"sample job finished (exit {job.returncode}); open {urls['ui']}", flush=True)
    if exit_when_done:
        return job.returncode
    print("press Ctrl-C to stop", flush=True)
    while True:
        time.sleep(3600)


def _free_or_zero(host: str, port: int) -> int:
    """Keep the configured port when it is free, else let the OS pick one (the demo prints it)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as sock:
            sock.bind(address)
            return port
    except OSError:
        return 0


def _runs_since(service, started_ns: int) -> bool:
    """Whether any run was received since ``started_ns`` (the data may hold earlier demos')."""
    with service.pool.connection() as conn:
        query = "SELECT EXISTS (SELECT 1 FROM runs WHERE last_received_ns >= %s)"
        return bool(conn.execute(query, (started_ns,)).fetchone()[0])


def _wait_until_folded(service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with service.pool.connection() as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM span_landing)").fetchone()[0]:
                return
            time.sleep(0.2)
