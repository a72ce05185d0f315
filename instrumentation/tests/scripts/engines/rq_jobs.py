"""The RQ jobs of the tests: plain ``@task`` functions and the one line a jobs module adds,
``configure()`` at import, which sets up every work horse that imports a job from here."""

from __future__ import annotations

import os
import time

from opentelemetry import trace
from rq import Queue, get_current_job

from tasktree.instrumentation import configure, task

configure()


@task
def double(x):
    return 2 * x


@task
def square(x):
    return x * x


@task
def fan_out(n):
    """Enqueues ``n`` more jobs from inside the worker; returns their ids (not waited for: one
    worker cannot run them while this job holds it)."""
    job = get_current_job()
    queue = Queue(job.origin, connection=job.connection)
    square(n)
    return [queue.enqueue(double, i).id for i in range(n)]


def plain_enqueuer(n):
    """A job that is no ``@task``: the jobs it enqueues are under its own enqueuer."""
    job = get_current_job()
    queue = Queue(job.origin, connection=job.connection)
    return [queue.enqueue(double, i).id for i in range(n)]


@task
def on_ok(job, connection, result):
    """A success callback: RQ runs it after the job, in the work horse."""


@task
def on_failed(job, connection, kind, value, traceback):
    """A failure callback."""


@task
def fail():
    raise ValueError("this job fails on purpose")


@task
def flaky(counter_key):
    """Fails on its first two attempts."""
    if get_current_job().connection.incr(counter_key) < 3:
        raise RuntimeError("not yet")
    return "done"


def _ids():
    context = trace.get_current_span().get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


@task
def whoami():
    """Its own task's ids: where it landed."""
    return _ids()


@task
def sleeper(seconds):
    """Publishes its process id and task ids in the job's meta, then sleeps."""
    job = get_current_job()
    job.meta.update(pid=os.getpid(), started=time.time(), **_ids())
    job.save_meta()
    time.sleep(seconds)
