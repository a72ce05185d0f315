"""Ray: every remote task and actor method call under the task current where ``.remote()`` ran.

Installed by ``configure()`` when the job imports ``ray``; the job needs nothing more than
``configure()`` and ``ray.init(...)``:

- ``ray.init`` gets a ``worker_process_setup_hook`` in the job's runtime environment (chained
  before the job's own hook, if any) that calls ``configure()`` in every Ray worker as in the
  driver; ``OTEL_*`` and ``TASKTREE_*`` variables of the driver are passed to the workers too
  (values the job set in ``runtime_env["env_vars"]`` win), so that a cluster started elsewhere
  exports to the same sink;
- a remote function, an actor's methods and its ``__init__`` are wrapped once, just before Ray
  reads their signatures and pickles them at their first submission (so also when they were
  decorated before ``configure()``): the wrapper takes one more keyword argument,
  ``_tasktree_carrier``, and runs the call under that parent (the actor class wrapped is Ray's
  subclass, never the job's class);
- each ``.remote()`` (function, actor method, actor creation) passes the current task there as a
  W3C carrier (``{}`` when no task is current);
- in the worker, the call runs with the carrier's task as the current task, carrying
  ``tasktree.attempt`` (1, then 2, ... when Ray retries the task: every attempt is a new task
  under the same parent) for the tasks started directly under it; threads and asyncio tasks
  started inside inherit it as usual.  Nested ``.remote()`` calls inside carry the task current
  there.  The records of a call are flushed (bounded) when it ends, before the result goes back:
  Ray ends idle and shut-down workers without running ``atexit``.

No tracing span is added per call: the tree holds exactly the job's ``@task`` calls.  A call with
an empty or malformed carrier runs normally as a run of its own (logged once per worker); a
function or class Ray had already used before ``configure()`` is left alone (its calls carry
nothing and run as runs of their own).  Not covered: async generator methods, Ray Client
(``ray://``) and ``ray.init`` called before ``configure()`` (logged).

``@task`` can also be applied over ``@ray.remote`` (``@task`` on top): the remote function's body
becomes the task.  ``@ray.method(...)`` over ``@task`` sets its options on the task's wrapper, where
Ray (which unwraps actor methods) does not look: they are handed down to the function under it
when the class is prepared.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Mapping

from opentelemetry import context
from opentelemetry.context import Context
from wrapt import wrap_function_wrapper

from tasktree.instrumentation import configuration
from tasktree.instrumentation.decorator import each_step_in
from tasktree.instrumentation.integrations import _context

_logger = logging.getLogger(__name__)

ENGINE = "ray"
CARRIER = "_tasktree_carrier"
"""The keyword argument carrying the submitter (a W3C carrier dict) into the worker."""

_MARK = "__tasktree_carrier__"
_FORWARDED_PREFIXES = ("OTEL_", "TASKTREE_")

_installed = False
_install_lock = threading.Lock()
_prepare_lock = threading.Lock()


def install() -> None:
    """Hooks tasktree into Ray in this process (driver or worker); idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    import ray

    # Ray has no per-task metadata a worker can read, and no submission hook: like Ray's own
    # tracing (ray.util.tracing.tracing_helper), the context travels as a keyword argument added
    # at submission and removed by a wrapper around the function.  Each patch is on the one
    # method every submission of its kind goes through (.remote(), .options(...).remote(), from
    # the driver or a worker); Ray's tracing decorates the first and the last too.
    wrap_function_wrapper("ray.remote_function", "RemoteFunction._remote", _submit_function)
    wrap_function_wrapper("ray.actor", "ActorHandle._actor_method_call", _submit_actor_method)
    wrap_function_wrapper("ray.actor", "ActorClass._remote", _create_actor)
    # ray.init has no hook either; the setup hook it installs in the workers is Ray's own.
    wrap_function_wrapper("ray", "init", _init_with_worker_setup)
    _context.register_decoration(_task_over_remote_function)
    if ray.is_initialized() and not _in_worker():
        _logger.warning(
            "tasktree ray: ray.init() ran before configure(): Ray workers will not be set up "
            "and their tasks will not be recorded; call configure() before ray.init()"
        )


def _in_worker() -> bool:
    import ray

    return ray._private.worker.global_worker.mode == ray._private.worker.WORKER_MODE


# -- worker processes ----------------------------------------------------------------------------


def _init_with_worker_setup(wrapped, instance, args, kwargs):
    try:
        kwargs = {**kwargs, "runtime_env": _runtime_env_with_setup(kwargs.get("runtime_env"))}
    except Exception:
        _logger.exception("tasktree ray: cannot add the worker setup hook; workers not recorded")
    return wrapped(*args, **kwargs)


def _runtime_env_with_setup(runtime_env: Mapping | None) -> dict:
    """The job's runtime environment plus tasktree's worker setup hook and exporter settings."""
    runtime_env = dict(runtime_env or {})
    own_hook = runtime_env.get("worker_process_setup_hook")
    if getattr(own_hook, _MARK, False):
        return runtime_env  # ray.init called again with the env tasktree already completed
    runtime_env["worker_process_setup_hook"] = _worker_setup_hook(
        configuration.child_setup() or {}, own_hook
    )
    env_vars = dict(runtime_env.get("env_vars") or {})
    for name, value in os.environ.items():
        if name.startswith(_FORWARDED_PREFIXES):
            env_vars.setdefault(name, value)
    runtime_env["env_vars"] = env_vars
    return runtime_env


def _worker_setup_hook(setup: dict, own_hook: Callable | str | None) -> Callable[[], None]:
    """The hook Ray runs in each worker at start: tasktree as in the driver, then the job's."""

    def tasktree_worker_setup() -> None:
        set_up_worker(setup)
        if callable(own_hook):
            own_hook()
        elif own_hook:
            module, _, name = own_hook.rpartition(".")
            getattr(__import__(module, fromlist=[name]), name)()

    setattr(tasktree_worker_setup, _MARK, True)
    return tasktree_worker_setup


def set_up_worker(setup: dict) -> None:
    """In a Ray worker: ``configure()`` as the driver did; never raises."""
    configuration.setup_child(setup)
    install()


# -- wrapping functions and actor classes ----------------------------------------------------------


def _takes_carrier(function: Callable) -> bool:
    return getattr(function, _MARK, False)


def _carrying(function: Callable) -> Callable:
    """``function`` taking the ``_tasktree_carrier`` keyword: the call runs under that parent.

    Same kind of function (plain, coroutine, generator) so that Ray treats it the same way; no
    ``__wrapped__``, so that Ray reads the wrapper's signature (it unwraps actor methods)."""
    if _takes_carrier(function) or inspect.isasyncgenfunction(function):
        return function
    try:
        signature = _with_carrier_parameter(inspect.signature(function))
    except (TypeError, ValueError):  # no signature (a builtin): left alone
        return function
    if inspect.iscoroutinefunction(function):
        wrapper = _coroutine_wrapper(function)
    elif inspect.isgeneratorfunction(function):
        wrapper = _generator_wrapper(function)
    else:
        wrapper = _function_wrapper(function)
    functools.update_wrapper(wrapper, function)
    del wrapper.__wrapped__  # type: ignore[attr-defined]
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    setattr(wrapper, _MARK, True)
    return wrapper


def _with_carrier_parameter(signature: inspect.Signature) -> inspect.Signature:
    parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    parameters.append(inspect.Parameter(CARRIER, inspect.Parameter.KEYWORD_ONLY, default=None))
    parameters += [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    return signature.replace(parameters=parameters)


def _function_wrapper(function: Callable) -> Callable:
    def run_with_carrier(*args, _tasktree_carrier=None, **kwargs):
        if _tasktree_carrier is None:  # a direct Python call, not a Ray task: nothing to do
            return function(*args, **kwargs)
        parent = _parent(_tasktree_carrier)
        token = context.attach(parent)
        try:
            result = function(*args, **kwargs)
        except BaseException:
            context.detach(token)
            _flush()
            raise
        context.detach(token)
        if inspect.isgenerator(result):  # e.g. @task over a generator: Ray iterates it after
            return _flushed_after(each_step_in(parent, result))
        _flush()
        return result

    return run_with_carrier


def _coroutine_wrapper(function: Callable) -> Callable:
    async def run_with_carrier(*args, _tasktree_carrier=None, **kwargs):
        if _tasktree_carrier is None:
            return await function(*args, **kwargs)
        token = context.attach(_parent(_tasktree_carrier))
        try:
            return await function(*args, **kwargs)
        finally:
            context.detach(token)
            _flush()

    return run_with_carrier


def _generator_wrapper(function: Callable) -> Callable:
    def run_with_carrier(*args, _tasktree_carrier=None, **kwargs):
        if _tasktree_carrier is None:
            return (yield from function(*args, **kwargs))
        parent = _parent(_tasktree_carrier)
        return (yield from _flushed_after(each_step_in(parent, function(*args, **kwargs))))

    return run_with_carrier


def _flushed_after(generator):
    try:
        return (yield from generator)
    finally:
        _flush()


def _wrap_methods(actor_class: type) -> list[str]:
    """Replaces the methods of Ray's subclass of the job's actor class (never the job's class)
    by wrappers taking the carrier; returns their names."""
    wrapped = []
    for name, method in inspect.getmembers(actor_class, inspect.isfunction):
        if name.startswith("__ray") or name == "__del__" or _takes_carrier(method):
            continue
        if isinstance(inspect.getattr_static(actor_class, name), (staticmethod, classmethod)):
            continue
        carrying = _carrying(method)
        if carrying is not method:
            setattr(actor_class, name, carrying)
            wrapped.append(name)
    return wrapped


# -- submission ------------------------------------------------------------------------------------


def _submit_function(wrapped, instance, args, kwargs):
    try:
        _prepare(instance)
        if _takes_carrier(instance._function):
            args, kwargs = _with_carrier(args, kwargs)
    except Exception as exc:  # noqa: BLE001 - the submission must go on, unlinked if need be
        _cannot_link("a remote function", exc)
    return wrapped(*args, **kwargs)


def _cannot_link(what: str, exc: Exception) -> None:
    _context.warn_once(
        ENGINE, "submit", "cannot pass the current task to %s (%s: %s)", what,
        type(exc).__name__, exc,
    )  # fmt: skip


def _prepare(remote_function) -> None:
    """Wraps the function of a ``RemoteFunction`` before Ray reads its signature and pickles it
    (Ray does both at its first submission); never one Ray has already used."""
    if remote_function.__dict__.get("_tasktree_prepared"):
        return
    with getattr(remote_function, "_inject_lock", None) or _prepare_lock:
        if remote_function.__dict__.get("_tasktree_prepared"):
            return
        if remote_function._function_signature is None and not getattr(
            remote_function, "_is_cross_language", False
        ):
            remote_function._function = _carrying(remote_function._function)
        remote_function._tasktree_prepared = True


def _submit_actor_method(wrapped, instance, args, kwargs):
    try:
        method_name = args[0] if args else kwargs.get("method_name")
        if _accepts_carrier(instance._ray_method_signatures.get(method_name)):
            args, kwargs = _with_carrier(args, kwargs, first=1)
    except Exception as exc:  # noqa: BLE001
        _cannot_link("an actor method", exc)
    return wrapped(*args, **kwargs)


def _create_actor(wrapped, instance, args, kwargs):
    try:
        meta = instance.__ray_metadata__
        _prepare_actor_class(meta)
        if _accepts_carrier(meta.method_meta.signatures.get("__init__")):
            args, kwargs = _with_carrier(args, kwargs)
    except Exception as exc:  # noqa: BLE001
        _cannot_link("an actor's creation", exc)
    return wrapped(*args, **kwargs)


def _accepts_carrier(signature: list[inspect.Parameter] | None) -> bool:
    return any(parameter.name == CARRIER for parameter in signature or ())


def _prepare_actor_class(meta) -> None:
    """Wraps the methods of an actor class before Ray pickles it for its first actor (also a
    class decorated before ``configure()``), and adds the carrier to their signatures, which Ray
    checks every call against; never a class Ray has already sent to the cluster."""
    if meta.__dict__.get("_tasktree_prepared"):
        return
    with _prepare_lock:
        if meta.__dict__.get("_tasktree_prepared"):
            return
        if meta.modified_class is not None and meta.last_export_cluster_and_job is None:
            _forward_method_options(meta)
            signatures = meta.method_meta.signatures
            for name in _wrap_methods(meta.modified_class):
                if name in signatures:
                    signature = inspect.Signature(signatures[name])
                    signatures[name] = list(_with_carrier_parameter(signature).parameters.values())
        meta._tasktree_prepared = True


def _forward_method_options(meta) -> None:
    """``@ray.method(...)`` over ``@task`` sets its options (``__ray_num_returns__``, retries,
    concurrency group, ...) on the task's wrapper, but Ray reads them from the function
    ``inspect.unwrap`` finds under it (the wrapper keeps ``__wrapped__`` for signatures and
    generator detection): they are copied down to that function, and Ray reads the class's
    methods again, so that they hold as they do with ``@task`` over ``@ray.method``."""
    from ray.actor import _ActorClassMethodMetadata

    forwarded = False
    for method in meta.method_meta.methods.values():
        method = getattr(method, "__func__", method)  # a classmethod, as Ray lists it
        inner = inspect.unwrap(method)
        inner_attributes = getattr(inner, "__dict__", None)
        if inner is method or inner_attributes is None:
            continue
        for name, value in getattr(method, "__dict__", {}).items():
            if name.startswith("__ray_") and inner_attributes.get(name, _MISSING) != value:
                setattr(inner, name, value)
                forwarded = True
    if forwarded:
        descriptor = meta.actor_creation_function_descriptor
        _ActorClassMethodMetadata._cache.pop(descriptor, None)  # Ray's cache of what it read
        meta.method_meta = _ActorClassMethodMetadata.create(meta.modified_class, descriptor)


_MISSING = object()


def _with_carrier(args: tuple, kwargs: dict, first: int = 0) -> tuple[tuple, dict]:
    """The ``_remote(args, kwargs, ...)`` arguments with the current task added to the call's
    keyword arguments, unless the caller passed ``_tasktree_carrier`` itself (a copy: the job's
    dict is not changed); ``first``: the position of ``args``."""
    if len(args) > first + 1:
        call_kwargs = _kwargs_with_carrier(args[first + 1])
        return (*args[: first + 1], call_kwargs, *args[first + 2 :]), kwargs
    return args, {**kwargs, "kwargs": _kwargs_with_carrier(kwargs.get("kwargs"))}


def _kwargs_with_carrier(call_kwargs: Mapping | None) -> dict:
    call_kwargs = dict(call_kwargs or {})
    if CARRIER not in call_kwargs:
        call_kwargs[CARRIER] = _context.carrier()
    return call_kwargs


# -- in the worker ---------------------------------------------------------------------------------


def _parent(carrier: Mapping[str, str]) -> Context:
    """The submitter's task (empty: a run of its own, logged once) with the attempt number."""
    if not isinstance(carrier, Mapping):  # not what tasktree sends: treated as malformed
        carrier = {_context.TRACEPARENT: repr(carrier)}
    parent = _context.parent_from(carrier, ENGINE)
    attempt = _attempt()
    return (
        parent if attempt is None else _context.with_attributes(parent, {_context.ATTEMPT: attempt})
    )


def _attempt() -> int | None:
    """1 for the first run of the Ray task running here, 2 for its first retry, ..."""
    try:
        import ray

        core_worker = ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]
        return core_worker.get_current_task_attempt_number() + 1
    except Exception:  # noqa: BLE001 - an internal API: without it, no attempt attribute
        return None


def _flush() -> None:
    """Exports what the call recorded before its result goes back (at once if it recorded
    nothing): Ray ends idle workers and the workers of a job that shuts down without running
    ``atexit`` (without this, a job that calls ``ray.shutdown()`` right after its last
    ``ray.get`` loses the records of its last tasks)."""
    configuration.flush()


# -- @task over @ray.remote ------------------------------------------------------------------------


def _task_over_remote_function(target: object, decorate: Callable[[Callable], Callable]):
    from ray.remote_function import RemoteFunction

    if not isinstance(target, RemoteFunction):
        return None
    with getattr(target, "_inject_lock", None) or _prepare_lock:
        if target._function_signature is not None:
            _logger.warning(
                "tasktree ray: @task over %s after its first .remote(): not a task; put @task "
                "under @ray.remote",
                target._function_name,
            )
            return target
        target._function = decorate(target._function)
    return target
