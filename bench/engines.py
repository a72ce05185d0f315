"""Overhead of tasktree on the engines batch work runs on (issue 12), in one run.

    .venv/bin/python bench/engines.py [--dask 10000] [--celery 2000] [--ray 2000] [--rq 500]
                                      [--only dask celery ...]

Each engine's module (``bench/engine_<name>.py``) times the same number of no-op tasks submitted
and awaited twice, once with no tasktree and once with tasktree configured and exporting to a real
sink, and returns the two wall times; this prints them and their ratio.  Targets: Dask (10,000
tasks) ≤ 1.10×, Celery (2,000 tasks) ≤ 1.05×; Ray and RQ have none and are reported.

The machine is shared and noisy: compare the ratio, not the seconds.  An engine that cannot start
here is reported with the error, and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import traceback

DEFAULTS = {"dask": 10_000, "celery": 2_000, "ray": 2_000, "rq": 500}
TARGETS = {"dask": 1.10, "celery": 1.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for engine, count in DEFAULTS.items():
        parser.add_argument(f"--{engine}", type=int, default=count, help=f"tasks (default {count})")
    parser.add_argument("--only", nargs="+", choices=sorted(DEFAULTS), default=list(DEFAULTS))
    args = parser.parse_args()
    print(f"{'engine':8} {'tasks':>7} {'without':>10} {'with':>10} {'ratio':>7}  target")
    for engine in args.only:
        _report(engine, getattr(args, engine))


def _report(engine: str, tasks: int) -> None:
    try:
        result = importlib.import_module(f"engine_{engine}").measure(tasks)
    except Exception:  # noqa: BLE001 - one engine failing must not hide the others' figures
        print(f"{engine:8} failed:\n{traceback.format_exc()}")
        return
    target = TARGETS.get(engine)
    verdict = (
        ""
        if target is None
        else f"≤ {target:.2f} {'met' if result['ratio'] <= target else 'MISSED'}"
    )
    print(
        f"{engine:8} {tasks:>7} {result['without_s']:>9.2f}s {result['with_s']:>9.2f}s"
        f" {result['ratio']:>6.3f}×  {verdict}"
    )
    print("  " + json.dumps(result))


if __name__ == "__main__":
    main()
