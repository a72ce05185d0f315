"""Dask distributed: every task under the task that was current where it was submitted.

Installed when the job imports ``distributed`` (``dask.distributed`` imports it too):

- Submission (client side, also a task submitting more from a worker with ``get_client()``):
  ``Client.submit``, ``map``, ``compute``, ``persist`` and ``get`` (so ``dask.compute()``,
  ``delayed(...).compute()``, bags) all build their graph in ``Client._graph_to_futures``.  Dask
  offers no submission hook, so that one function is wrapped: while it runs, the current task's
  carrier is a Dask annotation (``dask.annotate(tasktree={"traceparent": ...})``), one per
  submission, which the scheduler gives to every task of the graph and sends to the worker with
  each task.  A graph therefore runs under the task current where it was submitted or computed.
- Workers: installing adds this module to the ``distributed.worker.preload`` configuration, which
  the job's ``LocalCluster`` (or any Nanny it starts) hands to every worker; a ``dask worker``
  started by hand takes ``--preload tasktree.instrumentation.integrations.dask``.  There
  :func:`dask_setup` sets tasktree up as the job did and registers the parent provider: the first
  task started on a thread running a Dask task finds the task's key
  (``distributed.worker.thread_state.key``), its annotations on the worker, and takes the
  submitter as its parent.

A rerun (``retries=``, a worker lost mid-task) is a new task under the same parent.  A task with
no carrier, or a malformed one, runs normally as a run of its own (logged once per worker).
Tasks defined as coroutines run on the worker's event loop, where the running key is not known:
they are runs of their own.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping

import dask
import wrapt
from opentelemetry import context, trace
from opentelemetry.context import Context

from tasktree.instrumentation.integrations import _context

_logger = logging.getLogger(__name__)

ENGINE = "dask"
ANNOTATION = "tasktree"
"""The Dask annotation carrying the submitter (a W3C trace-context carrier dict)."""

PRELOAD = __name__
"""What workers preload (``dask worker --preload tasktree.instrumentation.integrations.dask``)."""

_WORKER_PRELOAD = "distributed.worker.preload"
_SETUP_CONFIG = "tasktree-worker-setup"  # the job's configure() arguments, as JSON, for workers

_installed = False
_install_lock = threading.Lock()
_thread_state = None  # distributed.worker.thread_state: .key is the task running on a thread


def install() -> None:
    """Carries the submitter in every graph this process submits, preloads tasktree in the
    workers this process starts, and finds the parent of the Dask task running on a thread."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    global _thread_state
    from distributed.worker import thread_state

    _thread_state = thread_state
    _context.register_ambient_parent(_parent_of_running_task)
    _annotate_submissions()
    _preload_in_workers()


# -- submission --------------------------------------------------------------------------------


def _annotate_submissions() -> None:
    # Not an extension point: Dask has no submission hook.  _graph_to_futures is the one function
    # submit, map, compute, persist and get all go through, in the submitting thread.
    try:
        wrapt.wrap_function_wrapper(
            "distributed.client", "Client._graph_to_futures", _with_submitter
        )
    except AttributeError:
        _logger.warning(
            "tasktree dask: this version of distributed has no Client._graph_to_futures; tasks "
            "will run as runs of their own (supported: distributed 2024.1 and later)"
        )


def _with_submitter(wrapped, instance, args, kwargs):
    try:
        found = _context.carrier()
    except Exception:  # noqa: BLE001 - never break the job's submission
        _logger.exception("tasktree dask: cannot read the current task")
        found = None
    if not found:
        return wrapped(*args, **kwargs)
    with dask.annotate(**{ANNOTATION: found}):
        return wrapped(*args, **kwargs)


# -- workers -----------------------------------------------------------------------------------


def _preload_in_workers() -> None:
    """Makes every worker started from this process's configuration (LocalCluster, Nanny) preload
    this module, set up like this process."""
    from tasktree.instrumentation import configuration

    preloads = list(dask.config.get(_WORKER_PRELOAD, default=None) or [])
    updates: dict[str, object] = {}
    if PRELOAD not in preloads:
        updates[_WORKER_PRELOAD] = [*preloads, PRELOAD]
    setup = configuration.child_setup()
    if setup is not None:
        updates[_SETUP_CONFIG] = json.dumps(setup)
    if updates:
        dask.config.set(updates)


def dask_setup(worker) -> None:
    """Dask's preload hook, in each worker: tasktree set up as the job was (else from the
    environment), and the worker's own context cleared of any task it inherited."""
    from tasktree.instrumentation import configuration

    try:
        configuration.setup_child(_job_setup())
        install()
        _forget_inherited_task()
    except Exception:  # noqa: BLE001 - a worker must run even if tasktree cannot
        _logger.exception("tasktree dask: cannot set up worker %s", getattr(worker, "name", ""))


def dask_teardown(worker) -> None:
    """Dask's preload hook when a worker closes: exports what it recorded."""
    from tasktree.instrumentation import configuration

    configuration.flush()


def _job_setup() -> dict:
    raw = dask.config.get(_SETUP_CONFIG, default=None)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw))
    except (TypeError, ValueError):
        _logger.warning("tasktree dask: ignoring the malformed %s config %r", _SETUP_CONFIG, raw)
        return {}


def _forget_inherited_task() -> None:
    # A worker process may inherit a current task from whoever started it: a LocalCluster created
    # inside a task (multiprocessing carries the context into the Nanny's worker process), or a
    # `dask worker` started with TRACEPARENT.  Every task the worker runs derives its context from
    # the one this hook runs in (it runs before the worker connects to the scheduler): without
    # this, every task would run under that task instead of its submitter.
    if trace.get_current_span().get_span_context().is_valid:
        context.attach(Context())  # for the worker's life: never detached


def _parent_of_running_task() -> Context | None:
    """The submitter of the Dask task running on this thread; None when it runs none."""
    key = getattr(_thread_state, "key", None)
    if key is None:
        return None
    from distributed.worker import get_worker

    try:
        state = get_worker().state.tasks.get(key)
    except ValueError:  # not in a worker
        return None
    annotations = getattr(state, "annotations", None) or {}
    found = annotations.get(ANNOTATION)
    if found is not None and not isinstance(found, Mapping):
        _context.warn_once(ENGINE, "malformed", "a malformed %r annotation %r", ANNOTATION, found)
        return Context()
    return _context.parent_from(found, ENGINE)
