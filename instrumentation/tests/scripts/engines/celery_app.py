"""The Celery app of the engine tests: imported by the job (``celery_job.py``) and by the worker
(``celery -A celery_app worker``), which is why it calls ``configure()`` at module level.

Broker and result backend: ``TASKTREE_CELERY_BROKER`` (Redis db 5 by default); every test uses
its own queue (``TASKTREE_CELERY_QUEUE``).  Every task returns the ids of the tasktree task it ran
in (``{"trace_id", "span_id", "parent"}``), so that the job can tell where each one went.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from celery import Celery
from opentelemetry import trace

from tasktree.instrumentation import configure, task

configure(service_name="celery-job")

BROKER = os.environ.get("TASKTREE_CELERY_BROKER", "redis://127.0.0.1:6379/5")
QUEUE = os.environ.get("TASKTREE_CELERY_QUEUE", "tasktree-celery")

app = Celery("celery_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=600,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


def ids() -> dict:
    span = trace.get_current_span()
    context = span.get_span_context()
    parent = getattr(span, "parent", None)
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent": format(parent.span_id, "016x") if parent else None,
    }


@task
def helper():
    return ids()


@app.task
@task
def delayed(*_previous):
    return {**ids(), "helper": helper()}


@app.task
@task
def applied():
    return ids()


@app.task
@task
def in_group(i):
    return ids()


@app.task
@task
def chain_first():
    return ids()


@task  # the other order: @task over the Celery task object
@app.task
def chain_second(previous):
    return ids()


@app.task
@task
def chord_part(i):
    return ids()


@app.task
@task
def chord_sum(parts):
    return ids()


@app.task(bind=True, max_retries=5)
@task
def flaky(self, fail_times):
    if self.request.retries < fail_times:
        raise self.retry(countdown=0)
    return ids()


@app.task
@task
def boom():
    raise ValueError("boom: the task failed on purpose")


@app.task
@task
def on_error_old(task_id):
    """An old-style errback (one argument): Celery sends it as a task of its own, because it
    counts one argument, which ``@task`` must leave visible."""
    return ids()


@app.task
@task
def on_error(request, exc, traceback):
    """A new-style errback: Celery calls it in the worker, within the failed task."""
    return ids()


@app.task(bind=True)
@task
def replaced(self):
    """Replaced by ``replacement``: Celery ends it by raising ``Ignore``, which is no failure."""
    return self.replace(replacement.s())


@app.task
@task
def replacement():
    return ids()


@app.task
@task
def called(how):
    return ids()


@app.task
def plain_calls():
    """A Celery task that is no ``@task``: what it calls directly, with ``apply()`` or in a
    thread it starts is under its submitter, as a ``@task`` function it called would be."""
    with ThreadPoolExecutor(1) as pool:
        in_thread = pool.submit(called, "thread").result()
    return {"direct": called("direct"), "apply": called.apply(("apply",)).result, "in": in_thread}


@app.task
@task
def submits():
    return {**ids(), "child": submitted.delay().id}


@app.task
@task
def submitted():
    return ids()


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
@task
def slow(self, report_path, seconds):
    """The test kills the process running its first attempt: the broker redelivers it."""
    return _report_and_sleep(self.request, report_path, seconds)


@app.task(bind=True, acks_late=True, retry_on_worker_lost=True, default_retry_delay=0)
@task
def slow_retried(self, report_path, seconds):
    """The test kills the process running its first attempt: the worker retries it (Celery 5.7's
    ``task_retry_on_worker_lost``, published by the worker's main process)."""
    return _report_and_sleep(self.request, report_path, seconds)


def _report_and_sleep(request, report_path, seconds):
    """Appends the ids and pid to ``report_path``; sleeps ``seconds`` in the first attempt."""
    with open(report_path, "a") as report:
        report.write(json.dumps({**ids(), "pid": os.getpid()}) + "\n")
    if not request.delivery_info.get("redelivered") and not request.retries:
        time.sleep(seconds)
    return ids()


@app.task
def noop():
    """For the benchmark: no tasktree task at all, only the engine's cost."""
    return None


@app.task
@task
def noop_task():
    """For the benchmark: one tasktree task per Celery task."""
    return None
