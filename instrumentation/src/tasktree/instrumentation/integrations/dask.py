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
- Attempts: the scheduler preloads this module too (``distributed.scheduler.preload``; by hand:
  ``dask scheduler --preload ...``): a scheduler plugin counts each time a carrying task becomes
  ``waiting`` for a run (its first run, a rerun after ``retries=`` or a lost worker; not when the
  scheduler merely queues it) into the annotation, and the task's first span carries it as
  ``tasktree.attempt``.  A rerun is a new task under the same parent, beside the attempt before
  it.

A task with no carrier, or a malformed one, runs normally as a run of its own (logged once per
worker).  Tasks defined as coroutines run on the worker's event loop, where the running key is not
known: they are runs of their own.  Calls to an actor's methods are not under their caller either:
Dask sends each in an RPC of its own (``actor_execute``: the method's name and arguments, no
annotation, no hook), so nothing carries the caller there (README: bind the work with
``in_context`` instead).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping

import dask
import wrapt
from distributed.diagnostics.plugin import SchedulerPlugin
from opentelemetry import context, propagate, trace
from opentelemetry.context import Context

from tasktree.instrumentation import propagation
from tasktree.instrumentation.integrations import _context

_logger = logging.getLogger(__name__)

ENGINE = "dask"
ANNOTATION = "tasktree"
"""The Dask annotation carrying the submitter (a W3C trace-context carrier dict)."""

PRELOAD = __name__
"""What workers preload (``dask worker --preload tasktree.instrumentation.integrations.dask``)."""

ATTEMPT_ANNOTATION = "tasktree-attempt"
"""The Dask annotation the scheduler counts a carrying task's attempts in (1 for the first)."""

_PRELOADS = ("distributed.worker.preload", "distributed.scheduler.preload")
_SETUP_CONFIG = "tasktree-worker-setup"  # the job's configure() arguments, as JSON, for workers

_installed = False
_install_lock = threading.Lock()
_thread_state = None  # distributed.worker.thread_state: .key is the task running on a thread
_get_worker = None  # distributed.worker.get_worker: the worker running this thread's task
_parents: dict[tuple, Context] = {}  # (carrier, attempt) -> parent: a graph's tasks share one
_PARENTS_KEPT = 1024


def install() -> None:
    """Carries the submitter in every graph this process submits, preloads tasktree in the
    workers this process starts, and finds the parent of the Dask task running on a thread."""
    global _installed, _thread_state, _get_worker
    with _install_lock:
        if _installed:
            return
        _installed = True
    from distributed.worker import get_worker, thread_state

    _thread_state, _get_worker = thread_state, get_worker
    _context.register_ambient_parent(_parent_of_running_task)
    _annotate_submissions()
    _preload_in_workers()
    _warn_of_clusters_started_before()


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
        found = _submitter()
    except Exception:  # never break the job's submission
        _logger.exception("tasktree dask: cannot read the current task")
        found = None
    if not found:
        return wrapped(*args, **kwargs)
    with dask.annotate(**{ANNOTATION: found}):
        return wrapped(*args, **kwargs)


def _submitter() -> dict[str, str]:
    """The carrier of the current task; in a Dask task that is no ``@task`` itself, that of its
    own submitter (as a ``@task`` it called would be)."""
    found = _context.carrier()
    if found:
        return found
    ambient = _parent_of_running_task()
    if ambient:  # an empty Context (a run of its own) is falsy
        propagate.inject(found, context=ambient)
    return found


# -- workers -----------------------------------------------------------------------------------


def _preload_in_workers() -> None:
    """Makes every worker and scheduler started from this process's configuration (LocalCluster,
    Nanny) preload this module; workers are set up like this process."""
    from tasktree.instrumentation import configuration

    updates: dict[str, object] = {}
    for option in _PRELOADS:
        preloads = dask.config.get(option, default=None) or []
        preloads = [preloads] if isinstance(preloads, str) else list(preloads)  # Dask takes both
        if PRELOAD in preloads:
            continue
        updates[option] = [*preloads, PRELOAD]
        argv = list(dask.config.get(option + "-argv", default=None) or [])
        if argv and not isinstance(argv[0], str):  # one argument list per preload: add ours
            updates[option + "-argv"] = [*argv, []]
    setup = configuration.child_setup()
    if setup is not None:
        updates[_SETUP_CONFIG] = json.dumps(setup)
    if updates:
        dask.config.set(updates)


def _warn_of_clusters_started_before() -> None:
    """A LocalCluster of worker processes started before ``configure()`` has workers without
    tasktree: their tasks are lost, so say it once, as Ray's integration does."""
    try:
        from distributed import Nanny
        from distributed.deploy.spec import SpecCluster  # _instances: every cluster not closed

        started = any(
            spec.get("cls") is Nanny
            for cluster in list(SpecCluster._instances)
            for spec in cluster.worker_spec.values()
        )
    except Exception:  # noqa: BLE001 - a layout of distributed this does not know: no warning
        return
    if started:
        _logger.warning(
            "tasktree dask: a Dask cluster was started before configure(): its worker processes "
            "do not record tasks; call configure() before LocalCluster() or Client()"
        )


def dask_setup(server) -> None:
    """Dask's preload hook.  In a worker: tasktree set up as the job was (else from the
    environment), and the worker's own context cleared of any task it inherited.  In a scheduler:
    the plugin counting attempts."""
    from distributed import Scheduler

    try:
        if isinstance(server, Scheduler):
            server.add_plugin(_Attempts(server), name=_Attempts.name)
        else:
            _set_up_worker()
    except Exception:  # a worker must run even if tasktree cannot
        _logger.exception(
            "tasktree dask: cannot set tasktree up in %r; its tasks will not be linked", server
        )


def dask_teardown(server) -> None:
    """Dask's preload hook when a worker (or scheduler) closes: exports what it recorded."""
    from tasktree.instrumentation import configuration

    configuration.flush()


def _set_up_worker() -> None:
    from tasktree.instrumentation import configuration

    configuration.setup_child(_job_setup())
    install()
    _forget_inherited_task()


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
    # Nor as the parent of a task that finds none (a coroutine task, on the event loop).
    propagation.forget_process_parent()


class _Attempts(SchedulerPlugin):
    """Counts the attempts of each carrying task in its annotations: a task becomes ``waiting``
    once before each run (first run, ``retries=``, rerun after its worker was lost).  It also
    becomes ``waiting`` without a new run: ``waiting`` -> ``waiting`` as the scheduler queues it
    for want of a free thread, and back from ``queued`` or ``no-worker`` when a dependency is
    lost; so after the first, only a task given to a worker (``processing``) since counts."""

    name = "tasktree-attempts"
    idempotent = True

    def __init__(self, scheduler):
        self._scheduler = scheduler
        self._given_out: set = set()  # carrying tasks given to a worker since last counted

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "forgotten":
            self._given_out.discard(key)
        if finish not in ("waiting", "processing"):
            return
        state = self._scheduler.tasks.get(key)
        annotations = state.annotations if state is not None else None
        if not annotations or ANNOTATION not in annotations:
            return
        if finish == "processing":
            self._given_out.add(key)
        elif ATTEMPT_ANNOTATION not in annotations or key in self._given_out:
            self._given_out.discard(key)
            # This task's own dict (built per task by the scheduler), read when it is sent to
            # a worker, after this transition.
            annotations[ATTEMPT_ANNOTATION] = annotations.get(ATTEMPT_ANNOTATION, 0) + 1


def _parent_of_running_task() -> Context | None:
    """The submitter of the Dask task running on this thread; None when it runs none."""
    key = getattr(_thread_state, "key", None)
    if key is None or _get_worker is None:
        return None
    try:
        state = _get_worker().state.tasks.get(key)
    except ValueError:  # not in a worker
        return None
    annotations = getattr(state, "annotations", None) or {}
    found = annotations.get(ANNOTATION)
    attempt = annotations.get(ATTEMPT_ANNOTATION)
    try:
        cache_key = (frozenset(found.items()), attempt)  # type: ignore[union-attr]
    except (AttributeError, TypeError):  # no carrier, or not a dict of strings
        return _parent_from(found, attempt)
    parent = _parents.get(cache_key)
    if parent is None:
        if len(_parents) >= _PARENTS_KEPT:
            _parents.clear()
        parent = _parents[cache_key] = _parent_from(found, attempt)
    return parent


def _parent_from(found, attempt) -> Context:
    if found is not None and not isinstance(found, Mapping):
        _context.warn_once(ENGINE, "malformed", "a malformed %r annotation %r", ANNOTATION, found)
        return Context()
    parent = _context.parent_from(found, ENGINE)
    if attempt and parent:  # an empty Context (a run of its own) is falsy
        return _context.with_attributes(parent, {_context.ATTEMPT: attempt})
    return parent
