"""Overhead of tasktree on Ray: n no-op remote tasks, with and without tasktree.

    .venv/bin/python bench/engine_ray.py [tasks] [--rounds 2]

Each variant is its own job process on its own local Ray (``ray.init(num_cpus=2)``); the clock
covers submitting the n tasks and ``ray.get`` of all of them, after a warm-up of 20 tasks that
starts the workers.

*Without*: a plain ``@ray.remote`` function, tasktree never imported.  *With*: ``configure()``
before ``ray.init`` (so the workers are set up by the integration's setup hook), the function is
``@ray.remote`` over ``@task`` and the tasks are submitted under a root ``@task``; everything
exports to a real ``tasktree serve`` (scratch database).  Each call carries its submitter and the
worker flushes its record when the call ends (an export per task: Ray ends workers without
``atexit``).  Rounds alternate without/with; the best of each is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WARM_UP = 20


def measure(n: int, rounds: int = 2) -> dict:
    """Wall seconds of n no-op remote tasks (submit + get), best of ``rounds`` each way."""
    from scratch import scratch_database, start_server  # bench/scratch.py: the script's folder

    best: dict[str, float] = {}
    with scratch_database("bench_ray") as url:
        server, urls = start_server(url)
        try:
            endpoint = urls["otlp_http"].removesuffix("/v1/traces")
            for _ in range(rounds):
                for variant in ("without", "with"):
                    seconds = _run(variant, n, endpoint)
                    best[variant] = min(seconds, best.get(variant, seconds))
        finally:
            server.terminate()
            server.wait(30)
    return {
        "engine": "ray",
        "tasks": n,
        "without_s": best["without"],
        "with_s": best["with"],
        "ratio": best["with"] / best["without"],
    }


def _run(variant: str, n: int, endpoint: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_"))}
    env.pop("TRACEPARENT", None)
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="bench-ray")
    proc = subprocess.run(
        [sys.executable, __file__, "--job", variant, str(n)],
        env=env, capture_output=True, text=True, timeout=1800, start_new_session=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the {variant} job failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


# -- the job (its own process) ---------------------------------------------------------------


def _job(variant: str, n: int) -> float:
    import contextlib

    if variant == "with":
        from tasktree.instrumentation import configure, task

        configure()
        root = task("bench-ray")
    else:
        root = contextlib.nullcontext()

    import ray

    def _noop(i):
        return i

    noop = ray.remote(task(name="noop")(_noop) if variant == "with" else _noop)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with root:
            ray.get([noop.remote(i) for i in range(WARM_UP)])
            started = time.perf_counter()
            ray.get([noop.remote(i) for i in range(n)])
            return time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="?", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--job", choices=("without", "with"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps({"seconds": _job(args.job, args.tasks)}), flush=True)
        return
    sys.path.insert(0, str(BENCH))
    print(json.dumps(measure(args.tasks, args.rounds)))


if __name__ == "__main__":
    main()
