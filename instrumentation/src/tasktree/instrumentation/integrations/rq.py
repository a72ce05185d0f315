"""RQ (Redis Queue): a job's tasks under the task that enqueued it, also when RQ retries it.

Installed by ``configure()`` when the job imports ``rq``:

- where a job is created (``Queue.enqueue``, ``enqueue_call``, ``enqueue_at``/``enqueue_in``,
  ``enqueue_many``, ``@job(...).delay``: all go through ``Queue.create_job``), the current task is
  written into the job's ``meta`` under ``"tasktree"`` as a W3C carrier, unless the caller put one
  there already (a job enqueued outside any task gets none), and ``Retry(max=...)`` under
  ``"tasktree.retries"`` (RQ itself only keeps the retries left).  In a job that is no ``@task``,
  the carrier is the job's own (its enqueuer's), as a ``@task`` it called would have;
- in the worker, the first task started with no current task takes that carrier as its parent
  (the job is found with ``rq.get_current_job()``), with ``tasktree.attempt`` (1, then 2, ... for
  each retry), ``rq.job.id`` and ``rq.queue``: a retry runs the job again, so it is a new task
  under the same parent.  The job's ``on_success``/``on_failure`` callbacks, which RQ runs after
  the job, sit under the same parent, beside it;
- the work horse RQ forks (or spawns) per job leaves through ``os._exit``: what the job recorded
  is flushed (bounded by ``TASKTREE_FLUSH_TIMEOUT``) when the job's execution ends, before RQ
  stores its result, and what a callback recorded right after it.
  ``SimpleWorker`` runs jobs in the worker process, which exports as usual.

The worker sets itself up through the jobs' module: ``configure()`` at the top level of the
module that defines the jobs runs in the work horse that imports a job from it, so a plain
``rq worker`` needs nothing more.  ``opentelemetry-instrument rq worker ...`` sets the worker up
once, before it forks, instead of once per work horse (which costs the imports, ~0.3 s a job).

A job with no carrier, or a malformed one, runs normally as a run of its own (logged once per
process: with the forking worker, once per job).  A job created with ``Job.create`` and enqueued
with ``Queue.enqueue_job`` bypasses ``create_job`` and carries nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from opentelemetry.context import Context
from wrapt import wrap_function_wrapper

from tasktree.instrumentation import configuration
from tasktree.instrumentation.integrations import _context

_logger = logging.getLogger(__name__)

ENGINE = "rq"
META_KEY = "tasktree"
"""The key of ``job.meta`` holding the carrier (``{"traceparent": ..., "tracestate": ...}``)."""
RETRIES_KEY = "tasktree.retries"
"""The key of ``job.meta`` holding ``Retry(max=...)``: RQ only keeps the retries left."""

JOB_ID = "rq.job.id"
QUEUE = "rq.queue"

_installed = False
_lock = threading.Lock()
_in_callback = threading.local()  # .job: the job whose callback this thread runs
_CALLBACK_RUNNERS = ("execute_success_callback", "execute_failure_callback")


def install() -> None:
    """Hooks tasktree into RQ in this process; idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    # RQ has no hook where a job is created and no hook in the work horse after a job: both are
    # patched (a custom job or worker class would need every Queue(...) and `rq worker` changed).
    wrap_function_wrapper("rq.queue", "Queue.create_job", _create_job_with_carrier)
    wrap_function_wrapper("rq.worker", "BaseWorker.handle_execution_ended", _flush_in_work_horse)
    # No hook around a job's callbacks either: the functions the worker runs them with (looked
    # up in its module at each call: a worker that imported tasktree mid-job still finds them).
    for name in _CALLBACK_RUNNERS:
        wrap_function_wrapper("rq.worker.base", name, _run_callback)
    _context.register_ambient_parent(_current_job_parent)


# -- where the job is enqueued -----------------------------------------------------------------


def _create_job_with_carrier(wrapped, instance, args, kwargs):
    job = wrapped(*args, **kwargs)
    try:
        added = {}
        carrier = _context.carrier() or _carrier_of_performed_job()
        if carrier and META_KEY not in job.meta:
            added[META_KEY] = carrier
        if job.retries_left is not None and RETRIES_KEY not in job.meta:
            added[RETRIES_KEY] = job.retries_left
        if added:
            # A copy: job.meta is the caller's ``meta=`` dict, which may be reused for other jobs.
            job.meta = {**job.meta, **added}
    except Exception:
        _logger.exception("tasktree rq: cannot write the task context into job %s", job.id)
    return job


# -- where the job runs ------------------------------------------------------------------------


def _run_callback(wrapped, instance, args, kwargs):
    """A job's ``on_success``/``on_failure`` callback, which RQ runs after the job (its current
    job has ended): the job is known to this thread meanwhile, and what the callback recorded
    is flushed at once (a work horse leaves through ``os._exit`` soon after)."""
    _in_callback.job = args[0] if args else kwargs.get("job")
    try:
        return wrapped(*args, **kwargs)
    finally:
        _in_callback.job = None
        configuration.flush()


def _current_job_parent() -> Context | None:
    """The parent of a task started by the RQ job running on this thread, or by its callbacks
    (the task that enqueued it, or an empty context: a run of its own); None outside a job."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        called_back = getattr(_in_callback, "job", None)
        if called_back is None:
            return None
        return _context.parent_from(_carrier_of(called_back), ENGINE)  # beside the job
    return _context.with_attributes(
        _context.parent_from(_carrier_of(job), ENGINE),
        {_context.ATTEMPT: _attempt(job), JOB_ID: job.id, QUEUE: job.origin},
    )


def _carrier_of_performed_job() -> dict[str, str]:
    """In a job (or its callback) that is no ``@task``: the carrier it was enqueued with."""
    from rq import get_current_job

    job = get_current_job() or getattr(_in_callback, "job", None)
    meta = getattr(job, "meta", None)
    found = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    return dict(found) if isinstance(found, Mapping) and found.get(_context.TRACEPARENT) else {}


def _attempt(job) -> int:
    """1 for the first run; one more for each retry after an exception (``Retry(max=...)``) or
    after the job returned a ``Retry``."""
    retried_after_exception = 0
    retries = job.meta.get(RETRIES_KEY) if isinstance(job.meta, Mapping) else None
    if isinstance(retries, int) and isinstance(job.retries_left, int):
        retried_after_exception = max(0, retries - job.retries_left)
    return 1 + retried_after_exception + (getattr(job, "number_of_retries", None) or 0)


def _carrier_of(job) -> Mapping[str, str] | None:
    """The carrier in the job's meta; something else there is passed on as a malformed one."""
    meta = job.meta if isinstance(job.meta, Mapping) else {}
    found = meta.get(META_KEY)
    if found is None or isinstance(found, Mapping):
        return found
    return {_context.TRACEPARENT: repr(found)}


def _flush_in_work_horse(wrapped, instance, args, kwargs):
    """After a job ran in a work horse (which ends in ``os._exit``): export what it recorded."""
    try:
        return wrapped(*args, **kwargs)
    finally:
        if getattr(instance, "is_horse", False):
            configuration.flush()
