"""Enqueues RQ jobs from inside a task: ``rq_submit.py <scenario> <redis url> <queue>``.

Scenarios: ``tree`` (jobs, a job enqueueing more, a failing job, a retried job; waits for all),
``sleep`` (one long job; does not wait), ``bad`` (a job enqueued outside any task and one whose
meta holds a malformed traceparent; waits).  Prints the ids as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import rq_jobs
from opentelemetry import trace
from redis import Redis
from rq import Queue, Retry
from rq.job import JobStatus

from tasktree.instrumentation import task

DONE = {JobStatus.FINISHED, JobStatus.FAILED}


def wait_for(jobs, timeout=120.0):
    """Waits until every job ended; follows the ids a job returns (jobs it enqueued)."""
    deadline = time.monotonic() + timeout
    pending = list(jobs)
    while pending:
        job = pending.pop()
        while job.get_status() not in DONE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} ({job.func_name}) is {job.get_status()}")
            time.sleep(0.05)
        result = job.return_value()
        if isinstance(result, list):
            pending += [job.fetch(child, connection=job.connection) for child in result]


def _trace_id():
    return f"{trace.get_current_span().get_span_context().trace_id:032x}"


@task(name="rq-submit")
def tree(queue):
    jobs = [queue.enqueue(rq_jobs.double, i) for i in range(3)]
    jobs.append(queue.enqueue(rq_jobs.fan_out, 2))
    jobs.append(queue.enqueue(rq_jobs.plain_enqueuer, 2))
    jobs.append(queue.enqueue(rq_jobs.double, 5, on_success=rq_jobs.on_ok))
    jobs.append(queue.enqueue(rq_jobs.fail, on_failure=rq_jobs.on_failed))
    jobs.append(queue.enqueue(rq_jobs.flaky, f"{queue.name}:flaky", retry=Retry(max=2)))
    wait_for(jobs)
    return {"trace_id": _trace_id()}


@task(name="rq-submit")
def sleep(queue):
    job = queue.enqueue(rq_jobs.sleeper, 120, job_timeout=300)
    return {"trace_id": _trace_id(), "job_id": job.id}


def bad(queue):
    no_carrier = queue.enqueue(rq_jobs.whoami)
    with task("rq-submit") as submit:
        malformed = queue.enqueue(
            rq_jobs.whoami, meta={"tasktree": {"traceparent": "00-not-a-trace-context"}}
        )
    wait_for([no_carrier, malformed])
    return {
        "trace_id": f"{submit.get_span_context().trace_id:032x}",
        "no_carrier": no_carrier.return_value(),
        "malformed": malformed.return_value(),
    }


def main(scenario, url, queue_name):
    queue = Queue(queue_name, connection=Redis.from_url(url))
    print(json.dumps({"tree": tree, "sleep": sleep, "bad": bad}[scenario](queue)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
