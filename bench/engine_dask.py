"""Overhead of tasktree on Dask distributed: n no-op tasks, with and without tasktree.

    .venv/bin/python bench/engine_dask.py [tasks] [--rounds 3] [--delayed]

Each measurement is a fresh job process with a ``LocalCluster`` of two worker processes of one
thread each (started before the clock): ``client.gather(client.map(noop, range(n)))`` and, with
``--delayed``, the same n tasks as ``dask.delayed`` computed at once.  *Without*: a plain
function, tasktree never imported.  *With*: the function is a ``@task``, submitted under a root
``@task``, tasktree configured and exporting to a real ``tasktree serve`` (scratch database), so
each task carries the submitter and records a span in its worker.  Rounds alternate
without/with; the best of each is kept.  Target (issue 12): ``client.map`` ratio ≤ 1.10.

Besides wall time, the CPU time of the job process (client and scheduler) and of the two workers
over the same interval: on a shared machine it moves less than wall time does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

WARM_UP = 200  # tasks run before the clock: workers import, unpickle and warm their caches


def measure(n: int, rounds: int = 3, delayed: bool = False) -> dict:
    """Wall seconds of n no-op tasks (map + gather; with ``delayed``, delayed + compute too),
    best of ``rounds``, and the CPU seconds spent meanwhile."""
    from scratch import scratch_database, start_server  # bench/scratch.py: the script's folder

    best: dict[str, dict[str, float]] = {"without": {}, "with": {}}
    with scratch_database("bench_dask") as url:
        server, urls = start_server(url)
        try:
            endpoint = urls["otlp_http"].removesuffix("/v1/traces")
            for _ in range(rounds):
                for variant in best:
                    for figure, value in _run_job(variant, n, endpoint, delayed).items():
                        best[variant][figure] = min(value, best[variant].get(figure, value))
        finally:
            server.terminate()
            server.wait(30)
    return _summary(n, best["without"], best["with"])


def _summary(n: int, without: dict[str, float], with_: dict[str, float]) -> dict:
    result = {
        "engine": "dask",
        "tasks": n,
        "without_s": without["map"],
        "with_s": with_["map"],
        "ratio": with_["map"] / without["map"],
        "cpu_without_s": without["map_cpu"],
        "cpu_with_s": with_["map_cpu"],
        "cpu_ratio": with_["map_cpu"] / without["map_cpu"],
    }
    if "delayed" in without:
        result.update(
            delayed_without_s=without["delayed"],
            delayed_with_s=with_["delayed"],
            delayed_ratio=with_["delayed"] / without["delayed"],
        )
    return result


def _run_job(variant: str, n: int, endpoint: str, delayed: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TASKTREE_"))}
    env.pop("TRACEPARENT", None)
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="bench-dask")
    command = [sys.executable, __file__, str(n), "--job", variant]
    proc = subprocess.run(
        command + (["--delayed"] if delayed else []),
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the {variant} job failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the job (its own process) ----------------------------------------------------------------


def noop(i):
    return i


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _job(variant: str, n: int, delayed: bool) -> dict[str, float]:
    import dask
    from dask.distributed import Client, LocalCluster

    function, scope = noop, contextlib.nullcontext()
    if variant == "with":
        from tasktree.instrumentation import configure, task

        configure()
        function, scope = task(name="noop")(noop), task("bench")
    figures = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        as cluster,
        Client(cluster) as client,
        scope,
    ):  # fmt: skip
        client.gather(client.map(function, range(-WARM_UP, 0)))

        def cpu() -> float:
            return cpu_seconds() + sum(client.run(cpu_seconds).values())

        cpu_before, started = cpu(), time.perf_counter()
        assert len(client.gather(client.map(function, range(n)))) == n
        figures["map"] = time.perf_counter() - started
        figures["map_cpu"] = cpu() - cpu_before
        if delayed:
            started = time.perf_counter()
            assert len(dask.compute(*[dask.delayed(function)(i) for i in range(n, 2 * n)])) == n
            figures["delayed"] = time.perf_counter() - started
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", type=int, nargs="?", default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delayed", action="store_true", help="also time dask.delayed")
    parser.add_argument("--job", choices=("without", "with"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(_job(args.job, args.tasks, args.delayed)))
    else:
        print(json.dumps(measure(args.tasks, args.rounds, args.delayed)))
