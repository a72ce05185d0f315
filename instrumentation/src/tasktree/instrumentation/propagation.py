"""The right parent everywhere: what stock OpenTelemetry leaves out, patched in once.

- ``threading.Thread``, ``Timer`` and ``ThreadPoolExecutor``: the threading instrumentor
  (opentelemetry-instrumentation-threading), plus ``Thread._bootstrap_inner`` so that
  subclasses overriding ``run()`` get the context too.
- ``multiprocessing`` ``Process`` (fork, spawn, forkserver): ``start()`` captures the current
  context into the process object (pickled along with it under spawn/forkserver); in the child,
  ``_bootstrap`` runs the target in that context and flushes before the process leaves through
  ``os._exit``.
- ``multiprocessing.Pool`` (``apply_async``/``map``/``map_async``/``starmap``/``starmap_async``/
  ``imap``/``imap_unordered``) and ``ProcessPoolExecutor.submit`` (and so ``map``): the function
  is wrapped in a picklable :class:`_InContext` carrying the caller's context; in a worker process
  it flushes when the call ends, before the result goes back (workers leave through ``os._exit``
  or are terminated).
- ``subprocess.Popen`` (so ``run``, ``call``, ``check_output``, asyncio subprocesses): the child
  gets a copy of the environment with ``TRACEPARENT`` (``TRACESTATE``, ``BAGGAGE``) of the current
  task; ``os.environ`` is never modified.
- A process started with ``TRACEPARENT`` takes it as the parent of its tasks.
- Where no task is current but engine work runs (a Celery task, Dask task or RQ job that is no
  ``@task`` itself), each of the above carries that work's submitter instead
  (``integrations._context.parent_to_hand_on``); threads get it handed on beside the context.

asyncio tasks, ``gather`` and ``TaskGroup`` need nothing: they copy the context already.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import multiprocessing.util
import os
import subprocess
import threading
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import pool as mp_pool
from multiprocessing import process as mp_process

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from wrapt import wrap_function_wrapper

from tasktree.instrumentation.integrations import _context as _engines

_logger = logging.getLogger(__name__)

_installed = False
_threading_by_loader = False  # opentelemetry-instrument's loader instruments threading itself
_install_lock = threading.Lock()
_process_parent: Context | None = None  # from TRACEPARENT when this process started


# -- the environment carrier (OTel "environment variables as context propagation carriers") ------


def _env_key(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).upper()


class _EnvironmentGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(_env_key(key))
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class _EnvironmentSetter(Setter[MutableMapping[str, str]]):
    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[_env_key(key)] = value


_GETTER = _EnvironmentGetter()
_SETTER = _EnvironmentSetter()


def _has_span(ctx: Context | None = None) -> bool:
    return trace.get_current_span(ctx).get_span_context().is_valid


def child_env(env: Mapping | None = None) -> dict:
    """A copy of ``env`` (default ``os.environ``) carrying the current task as ``TRACEPARENT``.

    For launchers tasktree does not patch (``os.exec*``, ``os.posix_spawn``, a ``docker run -e``):
    pass the result as the child's environment.  ``os.environ`` itself is never modified.  Without
    a current task the copy is returned unchanged (an inherited ``TRACEPARENT`` stays).
    """
    return _child_env(env, _engines.parent_to_hand_on())


def _child_env(env: Mapping | None, parent: Context) -> dict:
    result = dict(os.environ if env is None else env)
    if not _has_span(parent):
        return result
    fields = {_env_key(field) for field in propagate.get_global_textmap().fields}
    injected: dict[str, str] = {}
    propagate.inject(injected, context=parent, setter=_SETTER)
    if result and isinstance(next(iter(result)), bytes):  # os.environb-style mapping
        for field in fields:
            result.pop(field.encode(), None)
        result.update({k.encode(): v.encode() for k, v in injected.items()})
        return result
    for field in fields:
        result.pop(field, None)
    result.update(injected)
    return result


def read_process_parent(environ: Mapping[str, str] | None = None) -> Context | None:
    """The context in ``TRACEPARENT`` (etc.) of this process's environment, if valid."""
    ctx = propagate.extract(
        os.environ if environ is None else environ, getter=_GETTER, context=Context()
    )
    return ctx if _has_span(ctx) else None


def forget_process_parent() -> None:
    """Tasks that find no parent are runs of their own here, not under this process's
    ``TRACEPARENT``: for an engine worker, whose work belongs to other runs than the task that
    started it (the ``TRACEPARENT`` is still not taken for a task current)."""
    global _process_parent
    _process_parent = None


def _adopt_process_parent() -> None:
    """Reads ``TRACEPARENT`` once; makes it current on this thread unless a task already is."""
    global _process_parent
    _process_parent = read_process_parent()
    _engines.set_process_parent(_process_parent)
    if _process_parent is not None and not _has_span():
        context.attach(_process_parent)  # for the whole life of the thread: never detached


# -- carrying a context across pickling ---------------------------------------------------------


def _capture() -> dict[str, str]:
    carrier: dict[str, str] = {}
    parent = _engines.parent_to_hand_on()
    if _has_span(parent):
        propagate.inject(carrier, context=parent)
    return carrier


def _restore(carrier: dict[str, str]) -> Context:
    # An empty carrier means "no task was current": run with no parent, not the worker's.
    return propagate.extract(carrier, context=Context())


# -- what handing work to another process needs from the set-up ----------------------------------


@dataclass(frozen=True)
class ProcessHooks:
    """Given by ``configuration`` when it is imported (the package imports it first, also in a
    spawned child unpickling a call), so that this module never imports it back."""

    child_setup: Callable[[], dict | None]  # what a spawned child needs to set up as this one
    setup_child: Callable[[dict], None]  # in the child: set up like that
    flush: Callable[[], bool]  # everything recorded so far, sent (bounded)
    end_of_process: Callable[[], None]  # running tasks closed, everything sent (bounded)


_hooks: ProcessHooks | None = None


def set_process_hooks(hooks: ProcessHooks) -> None:
    global _hooks
    _hooks = hooks


def _child_setup() -> dict | None:
    return None if _hooks is None else _hooks.child_setup()


def _ensure_setup(setup: dict | None) -> None:
    """In a spawned child: set tasktree up as its parent was, unless that is done already."""
    if setup is None or _installed or _hooks is None:
        return
    _hooks.setup_child(setup)


def _in_child_process() -> bool:
    return multiprocessing.parent_process() is not None


def _flush_before_handoff() -> None:
    if _hooks is not None:
        _hooks.flush()


class _InContext:
    """Calls ``fn`` in the context captured where it was submitted; picklable if ``fn`` is.

    In a worker process, everything recorded is flushed (bounded) before the call returns, so
    that the tasks are exported before the result goes back to the parent.
    """

    __slots__ = ("fn", "carrier", "setup")

    def __init__(self, fn: Callable, carrier: dict[str, str], setup: dict | None):
        self.fn, self.carrier, self.setup = fn, carrier, setup

    def __reduce__(self):
        return _restore_in_context, (self.fn, self.carrier, self.setup)

    def __call__(self, *args, **kwargs):
        token = context.attach(_restore(self.carrier))
        try:
            # Submitted with no parent: none either from engine state this pool's thread or
            # process holds from before (a pool process forked inside a Celery task).
            handed = None if self.carrier else _engines.NO_PARENT
            return _engines.run_handed(handed, self.fn, *args, **kwargs)
        finally:
            context.detach(token)
            if _in_child_process():
                _flush_before_handoff()


def _restore_in_context(fn: Callable, carrier: dict[str, str], setup: dict | None) -> _InContext:
    _ensure_setup(setup)
    return _InContext(fn, carrier, setup)


def in_context(fn: Callable) -> _InContext:
    """``fn`` bound to the current context, to hand to any executor or queue tasktree does not
    patch; picklable when ``fn`` is."""
    if isinstance(fn, _InContext):
        return fn
    return _InContext(fn, _capture(), _child_setup())


class _ProcessContext:
    """Stored on a ``multiprocessing`` process object by ``start()``; pickled with it."""

    __slots__ = ("carrier", "setup")

    def __init__(self, carrier: dict[str, str], setup: dict | None):
        self.carrier, self.setup = carrier, setup

    def __reduce__(self):
        return _restore_process_context, (self.carrier, self.setup)


def _restore_process_context(carrier: dict[str, str], setup: dict | None) -> _ProcessContext:
    # Runs while the child unpickles its process object, before _bootstrap: install here.
    _ensure_setup(setup)
    return _ProcessContext(carrier, setup)


# -- the patches ---------------------------------------------------------------------------------


def _wrap_process_start(wrapped, instance, args, kwargs):
    try:
        instance._tasktree_context = _ProcessContext(_capture(), _child_setup())
    except Exception:
        _logger.exception("tasktree: cannot capture the context for %r", instance)
    return wrapped(*args, **kwargs)


def flush_when_this_child_ends() -> None:
    """In a ``multiprocessing`` child whose parent never set tasktree up (``configure()`` first
    called in the child's target): end and flush its tasks when the target returns.  A fork or
    forkserver child leaves through ``os._exit`` with no atexit, and the ``_bootstrap`` wrapper
    that does this for children of a set-up parent is not around this one; multiprocessing's own
    finalizers (``util.Finalize``, run by ``_bootstrap`` before it exits) are."""
    process = multiprocessing.current_process()
    if not _in_child_process() or getattr(process, "_tasktree_context", None) is not None:
        return
    if _hooks is not None:
        multiprocessing.util.Finalize(None, _hooks.end_of_process, exitpriority=100)


def _wrap_process_bootstrap(wrapped, instance, args, kwargs):
    carried = getattr(instance, "_tasktree_context", None)
    if carried is None:
        return wrapped(*args, **kwargs)
    token = context.attach(_restore(carried.carrier))
    try:
        return wrapped(*args, **kwargs)
    finally:
        context.detach(token)
        if _hooks is not None:
            _hooks.end_of_process()  # fork children leave through os._exit: no atexit


def _wrap_first_argument(wrapped, instance, args, kwargs):
    try:
        if args:
            args = (in_context(args[0]), *args[1:])
        elif "func" in kwargs:
            kwargs["func"] = in_context(kwargs["func"])
    except Exception:
        _logger.exception("tasktree: cannot wrap %r", wrapped)
    return wrapped(*args, **kwargs)


def _wrap_thread_start(wrapped, instance, args, kwargs):
    try:
        instance._tasktree_handed = _engines.parent_to_hand()
    except Exception:
        _logger.exception("tasktree: cannot hand the engine parent to %r", instance)
    return wrapped(*args, **kwargs)


def _wrap_thread_bootstrap_inner(wrapped, instance, args, kwargs):
    # ThreadingInstrumentor stores the starter's context on the thread and attaches it in
    # Thread.run, which a subclass overriding run() never calls: attach it one level earlier.
    handed = getattr(instance, "_tasktree_handed", None)
    ctx = getattr(instance, "_otel_context", None)
    if ctx is None:
        return _engines.run_handed(handed, wrapped, *args, **kwargs)
    token = context.attach(ctx)
    try:
        return _engines.run_handed(handed, wrapped, *args, **kwargs)
    finally:
        context.detach(token)


def _wrap_thread_pool_submit(wrapped, instance, args, kwargs):
    # Beside ThreadingInstrumentor's context, whichever of the two wraps the other.
    try:
        if args:
            args = (_engines.handed_on(args[0]), *args[1:])
    except Exception:
        _logger.exception("tasktree: cannot hand the engine parent to %r", args[:1])
    return wrapped(*args, **kwargs)


_POPEN_ENV_INDEX = list(inspect.signature(subprocess.Popen.__init__).parameters).index("env") - 1


def _wrap_popen_init(wrapped, instance, args, kwargs):
    try:
        parent = _engines.parent_to_hand_on()
        if _has_span(parent):
            if len(args) > _POPEN_ENV_INDEX:
                args = (
                    *args[:_POPEN_ENV_INDEX],
                    _child_env(args[_POPEN_ENV_INDEX], parent),
                    *args[_POPEN_ENV_INDEX + 1 :],
                )
            else:
                kwargs["env"] = _child_env(kwargs.get("env"), parent)
    except Exception:
        _logger.exception("tasktree: cannot pass TRACEPARENT to %r", args[:1])
    return wrapped(*args, **kwargs)


_POOL_METHODS = (
    "apply_async",
    "map",
    "map_async",
    "starmap",
    "starmap_async",
    "imap",
    "imap_unordered",
)


def leave_threading_to_loader() -> None:
    """``install`` leaves the threading instrumentor to ``opentelemetry-instrument``, which loads
    it among the installed instrumentors and warns ("Attempting to instrument while already
    instrumented") when it was instrumented before."""
    global _threading_by_loader
    _threading_by_loader = True


def install() -> None:
    """Installs every patch above once per process (idempotent) and reads ``TRACEPARENT``."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        instrumentor = ThreadingInstrumentor()
        if not (_threading_by_loader or instrumentor.is_instrumented_by_opentelemetry):
            instrumentor.instrument()
        wrap_function_wrapper(threading.Thread, "_bootstrap_inner", _wrap_thread_bootstrap_inner)
        for thread_class in (threading.Thread, threading.Timer):
            wrap_function_wrapper(thread_class, "start", _wrap_thread_start)
        wrap_function_wrapper(ThreadPoolExecutor, "submit", _wrap_thread_pool_submit)
        wrap_function_wrapper(mp_process.BaseProcess, "start", _wrap_process_start)
        wrap_function_wrapper(mp_process.BaseProcess, "_bootstrap", _wrap_process_bootstrap)
        for name in _POOL_METHODS:
            wrap_function_wrapper(mp_pool.Pool, name, _wrap_first_argument)
        wrap_function_wrapper(ProcessPoolExecutor, "submit", _wrap_first_argument)
        wrap_function_wrapper(subprocess.Popen, "__init__", _wrap_popen_init)
        _adopt_process_parent()
