"""Overhead of tasktree on Celery: n no-op Celery tasks, with and without tasktree.

    .venv/bin/python bench/engine_celery.py [tasks] [--rounds 3]

Two real workers (``celery worker -c 2``, prefork) on Redis (db 5, a queue each), started before
the clock, one per variant; each measurement is a fresh job process that submits n ``delay()``
calls and waits for every result (``ResultSet.join_native``), after a warm-up of 200 tasks.
*Without*: a plain ``@app.task``, tasktree never imported, neither in the job nor in the worker.
*With*: the same task under ``@task``, submitted under a root ``@task``, tasktree configured in
both (the worker through this module, its app module) and exporting to a real ``tasktree serve``
(scratch database), so that every message carries the submitter and every task records a span in
its pool process.  Rounds alternate without/with (then with/without); the best of each is
kept, and each round's pair also gives a ratio (``round_ratios``, their median
``median_round_ratio``).
Target (issue 12): ratio ≤ 1.05.

The machine is shared: beside the wall times, the CPU seconds per task of the job (its timed
part), of the worker's processes (main and pool, over the whole job, warm-up included) and of
the sink (``tasktree serve`` and its PostgreSQL backends, until it has stored the job's records)
are reported, best of the rounds too; they move far less than seconds when others load the
machine.  The sink runs on the same two cores as the workers, so its CPU is part of the "with"
wall time.  After each job the next one waits for the sink to go quiet, so that one round's last
export is never counted in the next round.
So do the ``in_process_*`` figures: CPU µs per task of Celery's own publish (memory transport) and
execution path (its tracer, as a pool process runs a message) in one process, where tasktree's
share of the work is measured without brokers and pools around it.  Their records are discarded
instead of sent: at the ~10,000 tasks a second of that loop one process cannot send them all, and
the figure would depend on how many it dropped (the sending is in the workers' CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

BROKER = "redis://127.0.0.1:6379/5"
WARM_UP = 200
VARIANT = os.environ.get("TASKTREE_BENCH_CELERY")  # set in the job and worker processes only
IN_PROCESS_FLAG = "--in-process"  # the in-process job: its records are discarded
HERE = Path(__file__).resolve().parent


def measure(n: int, rounds: int = 3) -> dict:
    """Wall seconds of n no-op Celery tasks submitted and awaited, best of ``rounds``."""
    from scratch import scratch_database, start_server  # bench/scratch.py: the script's folder

    best: dict[str, dict[str, float]] = {"without": {}, "with": {}}
    seconds: dict[str, list[float]] = {"without": [], "with": []}  # every round's
    with scratch_database("bench_celery") as url:
        server, urls = start_server(url)
        endpoint = urls["otlp_http"].removesuffix("/v1/traces")
        sink = _Sink(server.pid, url)
        try:
            with _workers(endpoint) as workers:
                for env, _ in workers.values():  # both workers up and warm before any clock
                    _run_job(env, WARM_UP)
                for round_ in range(rounds):
                    order = list(workers.items())[:: 1 if round_ % 2 == 0 else -1]
                    for variant, (env, worker) in order:
                        measured = _measured_job(env, worker, sink, n)
                        seconds[variant].append(measured["seconds"])
                        for figure, value in measured.items():
                            best[variant][figure] = min(value, best[variant].get(figure, value))
                        for figure, value in _run_job(env, n, IN_PROCESS_FLAG).items():
                            best[variant][figure] = min(value, best[variant].get(figure, value))
        finally:
            server.terminate()
            server.wait(30)
    without, with_ = best["without"], best["with"]
    return {
        "engine": "celery",
        "tasks": n,
        "without_s": without["seconds"],
        "with_s": with_["seconds"],
        "ratio": with_["seconds"] / without["seconds"],
        # Each round's with/without pair ran back to back: the median of their ratios moves less
        # than the ratio of the bests when the machine's load changes from minute to minute.
        "median_round_ratio": statistics.median(
            w / wo for w, wo in zip(seconds["with"], seconds["without"], strict=True)
        ),
        "round_ratios": [
            round(w / wo, 3) for w, wo in zip(seconds["with"], seconds["without"], strict=True)
        ],
        **{
            f"{figure}_{variant}_us": round(best[variant][figure] * 1e6 / count, 1)
            for figure, count in (("job_cpu", n), ("worker_cpu", n + WARM_UP), ("sink_cpu", n))
            for variant in best
        },
        **{
            f"{figure}_{variant}_us": round(best[variant][figure] * 1e6 / n, 1)
            for figure in ("in_process_publish", "in_process_execute")
            for variant in best
        },
    }


def _measured_job(
    env: dict[str, str], worker: subprocess.Popen, sink: _Sink, n: int
) -> dict[str, float]:
    sink_before = sink.quiet_cpu_seconds()  # also: the previous round's export is stored
    before = _cpu_seconds(worker.pid)
    figures = _run_job(env, n)
    sink_cpu = sink.quiet_cpu_seconds() - sink_before  # the pool processes' last export included
    return {**figures, "worker_cpu": _cpu_seconds(worker.pid) - before, "sink_cpu": sink_cpu}


def _cpu_seconds(*pids: int) -> float:
    """CPU seconds used so far by processes and their children (a vanished one counts 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            main = psutil.Process(pid)
            processes = (main, *main.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


class _Sink:
    """The CPU of the sink: ``tasktree serve`` and the PostgreSQL backends serving its database."""

    _WINDOW = 1.5  # seconds: longer than the 1 s between a pool process's exports
    _QUIET = 0.03  # CPU seconds in a window below which the sink counts as idle
    _SETTLE_LIMIT = 15.0

    def __init__(self, pid: int, url: str):
        self._pid, self._database = pid, url.rsplit("/", 1)[1]

    def cpu_seconds(self) -> float:
        import psycopg
        from scratch import ADMIN

        with psycopg.connect(ADMIN, autocommit=True) as conn:
            backends = [
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self._database,)
                )
            ]
        return _cpu_seconds(self._pid, *backends)

    def quiet_cpu_seconds(self) -> float:
        """``cpu_seconds`` once the sink has gone idle (bounded): every record sent is stored."""
        deadline = time.monotonic() + self._SETTLE_LIMIT
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(self._WINDOW)
            now = self.cpu_seconds()
            if now - last < self._QUIET:
                return now
            last = now
        return last


def _environment(variant: str, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_"))}
    env.pop("TRACEPARENT", None)
    env.update(
        TASKTREE_BENCH_CELERY=variant,
        TASKTREE_BENCH_CELERY_QUEUE=f"bench-celery-{variant}-{uuid.uuid4().hex[:8]}",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="bench-celery",
        PYTHONPATH=str(HERE),
    )
    return env


@contextlib.contextmanager
def _workers(endpoint: str):
    """One worker per variant, each on its own queue, as (environment, process); stopped by
    process group afterwards."""
    workers: dict[str, tuple[dict[str, str], subprocess.Popen]] = {}
    try:
        for variant in ("without", "with"):
            env = _environment(variant, endpoint)
            worker = subprocess.Popen(
                _worker_command(env["TASKTREE_BENCH_CELERY_QUEUE"]), env=env, cwd=HERE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            workers[variant] = (env, worker)
        yield workers
    finally:
        for _, worker in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(30)
        _purge(env["TASKTREE_BENCH_CELERY_QUEUE"] for env, _ in workers.values())


def _worker_command(queue: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "engine_celery", "worker", "-c", "2", "-P", "prefork",
        "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel", "WARNING",
    ]  # fmt: skip


def _purge(queues) -> None:
    import redis

    redis.Redis.from_url(BROKER).delete(*queues)


def _run_job(env: dict[str, str], n: int, *options: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--job", str(n), *options],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the {env['TASKTREE_BENCH_CELERY']} job failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the app (job and worker processes) -------------------------------------------------------


def _make_app():
    from celery import Celery

    app = Celery("engine_celery", broker=BROKER, backend=BROKER)
    app.conf.update(
        task_default_queue=os.environ["TASKTREE_BENCH_CELERY_QUEUE"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
    )
    return app


def _noop():
    return None


if VARIANT:
    app = _make_app()
    if VARIANT == "with":
        from instrumentation import Discard  # bench/instrumentation.py: the script's folder
        from tasktree.instrumentation import configure, task

        # At module level: the worker imports this module too.
        configure(exporter=Discard() if IN_PROCESS_FLAG in sys.argv else None)
        noop = app.task(name="bench.noop")(task(name="noop")(_noop))
    else:
        noop = app.task(name="bench.noop")(_noop)


def _job(n: int) -> dict[str, float]:
    from celery.result import ResultSet

    scope = contextlib.nullcontext()
    if VARIANT == "with":
        from tasktree.instrumentation import task

        scope = task("bench")
    with scope:
        ResultSet([noop.delay() for _ in range(WARM_UP)]).join_native(timeout=300)
        started, cpu = time.perf_counter(), time.process_time()
        ResultSet([noop.delay() for _ in range(n)]).join_native(timeout=600)
        return {"seconds": time.perf_counter() - started, "job_cpu": time.process_time() - cpu}


def _in_process_job(n: int) -> dict[str, float]:
    """CPU seconds of n publishes (Celery's memory transport) and n executions through Celery's
    own tracer (what a pool process runs for a message), in this one process: no broker, no
    pool, no other process, so steadier than wall time on a busy machine."""
    from celery import Celery, signals
    from celery.app.trace import build_tracer

    local = Celery("engine_celery_in_process", broker="memory://", backend="cache+memory://")
    body, scope = _noop, contextlib.nullcontext()
    if VARIANT == "with":
        from tasktree.instrumentation import task

        body, scope = task(name="noop")(_noop), task("bench")
    local_noop = local.task(name="bench.noop", ignore_result=True)(body)
    local.finalize()
    with scope:
        for _ in range(WARM_UP):
            local_noop.apply_async()
        cpu = time.process_time()
        for _ in range(n):
            local_noop.apply_async()
        publish = time.process_time() - cpu
        headers = dict(local.amqp.as_task_v2(str(uuid.uuid4()), "bench.noop").headers)
        signals.before_task_publish.send(sender="bench.noop", headers=headers)  # the carrier
    execute_task = build_tracer("bench.noop", local.tasks["bench.noop"], app=local, eager=False)
    request = {**headers, "delivery_info": {"redelivered": False}, "is_eager": False}
    cpu = time.process_time()
    for _ in range(n):
        request["id"] = str(uuid.uuid4())
        execute_task(request["id"], (), {}, request)
    return {"in_process_publish": publish, "in_process_execute": time.process_time() - cpu}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", type=int, nargs="?", default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)
    parser.add_argument(IN_PROCESS_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps((_in_process_job if args.in_process else _job)(args.job)))
    else:
        print(json.dumps(measure(args.tasks, args.rounds)))
