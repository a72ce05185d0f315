"""Celery: every Celery task of a job under the task current where it was submitted.

Installed when the job (or the worker, through the app module it imports) imports ``celery``
after ``configure()``; it uses Celery's own extension points, no patch:

- ``before_task_publish`` writes the carrier into the message headers (``traceparent``,
  ``tracestate``: the keys the OpenTelemetry Celery instrumentor uses too).  The carrier is the
  current task's, except when a worker publishes for the Celery task it is running:
  - the same task again (``task.retry()``: same task id) carries that task's own carrier, so that
    every attempt sits under the original parent, never under the attempt that retried;
  - with no task current (the next task of a chain, a chord's callback, a link: Celery publishes
    them after the task's body returned) it carries the running task's carrier, so that every
    task of a canvas sits under the task where the canvas was submitted.

  A retry the worker's main process publishes after losing the process running the task
  (``task_retry_on_worker_lost``, Celery 5.7) copies the message's headers, carrier included,
  and has no task current: it keeps the original parent as it is.
- On the worker, the first ``@task`` started with no current task inside a Celery task takes the
  message's carrier as its parent (an ambient-parent provider reading the request of
  ``celery.current_task``, per thread), with ``tasktree.attempt`` (``retries + 1``, one more
  when the broker redelivered the message, e.g. after the process running it died under
  ``acks_late``) and ``celery.task_id``; not Celery's task name: the node's name (the function's)
  says it, and every attribute costs each task in the worker and in the sink.  A message without a
  carrier, or with a malformed one, runs normally as a run of its own (logged once).
- ``@task`` over ``@app.task``: the Celery task object stays (``delay`` and all) and its ``run``
  becomes the task, so either order gives one node per execution.
- Prefork pool processes leave through ``os._exit`` (``max_tasks_per_child``, shutdown):
  ``worker_process_shutdown`` flushes what they recorded first.
- ``Ignore`` (``self.replace()`` raises it, as does a task that is to leave its state alone) ends
  the node ``ok``: Celery counts it as no failure (registered with ``_context``, which ``@task``
  asks).  ``Retry`` and ``Reject`` end it ``error``: that attempt did not do the task's work
  (another attempt will, or the message is requeued or dropped).

With the OpenTelemetry Celery instrumentor active in a process, this integration stands aside
there: that instrumentor writes the same headers and makes its own ``run/<task>`` span current in
the worker, and two writers of one header would link tasks to the wrong parents.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping

from celery import signals
from celery._state import _task_stack, get_current_task
from opentelemetry.context import Context

from tasktree.instrumentation.integrations import _context

_logger = logging.getLogger(__name__)

ENGINE = "celery"
TASK_ID = "celery.task_id"
REDELIVERED = "celery.redelivered"

_CARRIER_KEYS = (_context.TRACEPARENT, "tracestate")
_DISPATCH_UID = "tasktree.instrumentation.integrations.celery"
_RUN_IS_TASK = "_tasktree_celery_run"
_PARENTS_KEPT = 1024

_parents: dict[tuple[str | None, ...], Context] = {}


def install() -> None:
    """Connects the Celery signals and registers the worker-side parent; once per process."""
    signals.before_task_publish.connect(
        _write_carrier, weak=False, dispatch_uid=_DISPATCH_UID + ".carrier"
    )
    signals.worker_process_shutdown.connect(
        _flush_pool_process, weak=False, dispatch_uid=_DISPATCH_UID + ".flush"
    )
    _context.register_ambient_parent(_ambient_parent)
    _context.register_decoration(_decorate_celery_task)
    from celery.exceptions import Ignore

    _context.register_not_a_failure(Ignore)


# -- submission --------------------------------------------------------------------------------


def _write_carrier(sender=None, headers=None, **_signal) -> None:
    """``before_task_publish``: the parent of the task being published, into its headers."""
    if not isinstance(headers, dict) or _otel_celery_active():
        return
    try:
        headers.update(_carrier_for(headers))
    except Exception:
        _logger.exception("tasktree celery: cannot write the parent of %s", sender)


def _carrier_for(headers: Mapping) -> dict[str, str]:
    current = _context.carrier()
    running = _running_request()
    if running is None:
        return current
    if not current or headers.get("id") == running.id:
        # Celery publishing for the task it runs (a retry; a chain's next task, a chord's
        # callback, a link): the parent stays the one the running task was submitted under.
        return _request_carrier(running)
    return current


# -- execution ---------------------------------------------------------------------------------


def _running_request():
    """The request of the Celery task this thread is running for a worker, below any task it
    called directly or with ``apply()`` (a new-style errback too: Celery calls it inside the
    failed task); None when the thread runs none."""
    # Celery's stack of the tasks running on this thread, as its get_current_worker_task walks it
    # (which takes a task run by apply() for the worker's).
    for celery_task in reversed(_task_stack.stack):
        request = celery_task.request
        if request is not None and not request.called_directly and not request.is_eager:
            return request
    return None


def _request_carrier(request) -> dict[str, str]:
    return {
        key: str(value)
        for key in _CARRIER_KEYS
        if (value := getattr(request, key, None)) is not None
    }


def _ambient_parent() -> Context | None:
    """The parent of a task started with no current task inside a Celery task: its submitter."""
    request = _running_request()
    if request is None or _otel_celery_active():
        return None
    parent = _parent_of(_request_carrier(request))
    if get_current_task().request is not request:  # a task it called: the attempt is not its
        return parent
    return _context.with_attributes(parent, _attributes(request))


def _parent_of(carrier: dict[str, str]) -> Context:
    """``parent_from(carrier)``, remembered: the tasks a job submits share a few carriers (one
    per submitting task), and a Context is immutable."""
    key = tuple(carrier.get(field) for field in _CARRIER_KEYS)
    parent = _parents.get(key)
    if parent is None:
        if len(_parents) >= _PARENTS_KEPT:
            _parents.clear()
        parent = _parents[key] = _context.parent_from(carrier, ENGINE)
    return parent


def _attributes(request) -> dict[str, object]:
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    attributes: dict[str, object] = {
        _context.ATTEMPT: (request.retries or 0) + 1 + redelivered,
        TASK_ID: str(request.id),
    }
    if redelivered:
        attributes[REDELIVERED] = True
    return attributes


def _flush_pool_process(**_signal) -> None:
    """``worker_process_shutdown``: a pool process is about to leave through ``os._exit``."""
    from tasktree.instrumentation import configuration

    configuration.end_of_process("the Celery pool process exited")


# -- @task over @app.task ----------------------------------------------------------------------


def _decorate_celery_task(target: object, decorate: Callable[[Callable], Callable]):
    """``@task`` applied to a Celery task: the task object itself, its ``run`` made the task."""
    from celery.app.task import Task
    from celery.local import PromiseProxy, Proxy

    # Test the proxy types first: isinstance() against another class would evaluate the proxy.
    if isinstance(target, PromiseProxy):  # app.task before the app is finalized
        target.__then__(_make_run_a_task, target, decorate)
        return target
    if isinstance(target, Proxy):  # shared_task: another task object for every app
        _logger.warning(
            "tasktree celery: @task over @shared_task is not supported (%r); put @task under "
            "@shared_task",
            target,
        )
        return target
    if isinstance(target, Task):
        _make_run_a_task(target, decorate)
        return target
    return None


def _make_run_a_task(celery_task, decorate: Callable[[Callable], Callable]) -> None:
    run = celery_task.run
    if getattr(run, _RUN_IS_TASK, False):
        return
    wrapped = decorate(run)
    setattr(wrapped, _RUN_IS_TASK, True)
    celery_task.run = wrapped  # the worker and Task.__call__ both call task.run


# -- the OpenTelemetry Celery instrumentor -----------------------------------------------------


def _otel_celery_active() -> bool:
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    instrumentor = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
    return bool(instrumentor is not None and instrumentor.is_instrumented_by_opentelemetry)
