"""Overhead of tasktree on RQ: n no-op jobs, with and without tasktree.

    .venv/bin/python bench/engine_rq.py [jobs] [--rounds 3]

The clock covers enqueueing the jobs and waiting until the last one finished, one worker already
running and warmed up by a first job.  Three workers:

- ``SimpleWorker`` (jobs in the worker process; the headline ``ratio``), n jobs;
- the default forking ``Worker`` (a work horse forked per job, which imports the jobs module:
  with tasktree, each horse runs the module's ``configure()`` and flushes at the end), n // 5
  jobs since it is ~100× slower;
- the same forking worker started as ``opentelemetry-instrument rq worker``: set up once in the
  worker, so a horse only flushes.

*Without*: a plain function, tasktree never imported.  *With*: the jobs module calls
``configure()`` at import and the function is a ``@task``; the jobs are enqueued under a root
``@task`` by a job that called ``configure()``; everything exports to a real ``tasktree serve``
(scratch database).  Rounds alternate without/with; the best of each is kept.  Redis db 6.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REDIS_URL = "redis://127.0.0.1:6379/6"
WITH_TASKTREE = "BENCH_RQ_TASKTREE"  # set: this module is the jobs module of the "with" variant
BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RQ_WORKER = [str(BIN / "rq"), "worker"]
WORKERS = {
    "simple": [*RQ_WORKER, "--worker-class", "rq.SimpleWorker"],
    "fork": RQ_WORKER,
    "fork_preloaded": [str(BIN / "opentelemetry-instrument"), *RQ_WORKER],
}


def _noop(i):
    return i


noop = _noop
if os.environ.get(WITH_TASKTREE) == "1":
    from tasktree.instrumentation import configure, task

    configure()
    noop = task(name="noop")(_noop)


def measure(n: int, rounds: int = 3) -> dict:
    """Wall seconds of n no-op jobs (enqueue + run), best of ``rounds``, per worker kind."""
    from scratch import scratch_database, start_server  # bench/scratch.py: the script's folder

    best: dict[str, float] = {}
    counts = {"simple": n, "fork": max(1, n // 5), "fork_preloaded": max(1, n // 5)}
    with scratch_database("bench_rq") as url:
        server, urls = start_server(url)
        try:
            endpoint = urls["otlp_http"].removesuffix("/v1/traces")
            for _ in range(rounds):
                for worker, jobs in counts.items():
                    for variant in ("without", "with"):
                        if worker == "fork_preloaded" and variant == "without":
                            continue
                        seconds = _run(worker, variant, jobs, endpoint)
                        key = f"{worker}_{variant}"
                        best[key] = min(seconds, best.get(key, seconds))
        finally:
            server.terminate()
            server.wait(30)
    return {
        "engine": "rq",
        "tasks": n,
        "worker": "SimpleWorker",
        "without_s": best["simple_without"],
        "with_s": best["simple_with"],
        "ratio": best["simple_with"] / best["simple_without"],
        "fork_tasks": counts["fork"],
        "fork_without_s": best["fork_without"],
        "fork_with_s": best["fork_with"],
        "fork_ratio": best["fork_with"] / best["fork_without"],
        "fork_preloaded_with_s": best["fork_preloaded_with"],
        "fork_preloaded_ratio": best["fork_preloaded_with"] / best["fork_without"],
    }


def _environment(variant: str, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_"))}
    env.pop("TRACEPARENT", None)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="bench-rq",
        PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")])),
    )
    if variant == "with":
        env[WITH_TASKTREE] = "1"
    return env


def _run(worker: str, variant: str, n: int, endpoint: str) -> float:
    """Starts the worker, runs the timed job against it, stops the worker."""
    queue = f"bench-rq-{uuid.uuid4().hex[:12]}"
    env = _environment(variant, endpoint)
    command = [*WORKERS[worker], "--url", REDIS_URL, queue]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--job", variant, "--queue", queue, str(n)],
                env=env, capture_output=True, text=True, timeout=1200,
            )  # fmt: skip
        finally:
            _stop(process)
        if proc.returncode != 0:
            log.seek(0)
            worker_log = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(
                f"the {worker}/{variant} job failed:\n{proc.stderr[-3000:]}\nworker:\n{worker_log}"
            )
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def _stop(worker: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL: an idle ``rq worker`` sometimes takes a minute to leave (its pubsub
    thread waits up to 60 s for a subscription after the unsubscribe)."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)


# -- the job (its own process) ----------------------------------------------------------------


def _job(variant: str, queue_name: str, n: int) -> float:
    import contextlib

    from redis import Redis
    from rq import Queue

    scope = contextlib.nullcontext()
    if variant == "with":
        scope = task("bench")  # configure() ran at import
    queue = Queue(queue_name, connection=Redis.from_url(REDIS_URL))
    with scope:
        _wait(queue.enqueue("engine_rq.noop", -1), timeout=120)  # the worker is up and warm
        started = time.perf_counter()
        jobs = [queue.enqueue("engine_rq.noop", i) for i in range(n)]
        _wait(jobs[-1], timeout=1200)
        seconds = time.perf_counter() - started
    assert all(job.get_status() == "finished" for job in jobs)
    return seconds


def _wait(job, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while job.get_status() not in ("finished", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.id} still {job.get_status()} after {timeout}s")
        time.sleep(0.01)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jobs", type=int, nargs="?", default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job", choices=("without", "with"), help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps({"seconds": _job(args.job, args.queue, args.jobs)}))
    else:
        print(json.dumps(measure(args.jobs, args.rounds)))
