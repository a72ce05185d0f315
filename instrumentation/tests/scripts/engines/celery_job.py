"""A Celery job: only ``@task``, ``configure()`` (in celery_app) and Celery's own API.

    python celery_job.py tree              every kind of submission under the task "main"
    python celery_job.py slow TASK REPORT SECS  one acks_late task the test kills mid-way
    python celery_job.py bad               tasks submitted with no context / a malformed one
    python celery_job.py one               one task submitted with no context (a run of its own)

Prints one JSON line: {"trace_id": ... of "main", "results": ...}.
"""

from __future__ import annotations

import json
import sys

from celery import chain, chord, group
from celery_app import (
    applied,
    boom,
    chain_first,
    chain_second,
    chord_part,
    chord_sum,
    delayed,
    flaky,
    ids,
    in_group,
    on_error,
    on_error_old,
    plain_calls,
    replaced,
    slow,
    slow_retried,
    submits,
)

from tasktree.instrumentation import task

TIMEOUT = 90


@task
def main_tree() -> dict:
    results = {
        "delayed": delayed.delay(),
        "applied": applied.apply_async(),
        "group": group(in_group.s(i) for i in range(3)).apply_async(),
        "chain": chain(chain_first.s(), chain_second.s()).apply_async(),
        "chord": chord([chord_part.s(i) for i in range(2)])(chord_sum.s()),
        "flaky": flaky.delay(2),
        "submits": submits.delay(),
        "plain_calls": plain_calls.delay(),
        "replaced": replaced.delay(),  # its result is that of the task replacing it
    }
    failed = boom.apply_async(link_error=[on_error_old.s(), on_error.s()])
    got = {name: result.get(timeout=TIMEOUT) for name, result in results.items()}
    # Submitted by a task in the worker: waited for too, so the worker is not stopped before.
    got["submitted"] = submits.AsyncResult(got["submits"]["child"]).get(timeout=TIMEOUT)
    try:
        failed.get(timeout=TIMEOUT)
    except ValueError as exc:
        got["boom"] = str(exc)
    return {**ids(), "results": got}


@task
def main_slow(name: str, report_path: str, seconds: float) -> dict:
    result = {"slow": slow, "slow_retried": slow_retried}[name].delay(report_path, seconds)
    print(json.dumps(ids()), flush=True)  # the test watches this run while the task runs
    return {**ids(), "results": result.get(timeout=TIMEOUT)}


def bad_input() -> dict:
    """No task is current here: one message carries nothing, one a malformed traceparent."""
    missing = delayed.delay()
    malformed = delayed.apply_async(headers={"traceparent": "00-not-a-trace-context"})
    return {"results": {"missing": missing.get(TIMEOUT), "malformed": malformed.get(TIMEOUT)}}


def one() -> dict:
    return {"results": {"one": delayed.delay().get(TIMEOUT)}}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "tree":
        out = main_tree()
    elif mode == "one":
        out = one()
    elif mode == "slow":
        out = main_slow(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        out = bad_input()
    print(json.dumps(out), flush=True)
