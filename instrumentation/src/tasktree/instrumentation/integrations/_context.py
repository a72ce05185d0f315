"""What every engine integration shares: the carrier written at submission, the parent read
where the work runs, and the engine attributes given to the first task there.

The carrier is the W3C trace context (``traceparent``, ``tracestate``) of the task current at
submission, as a plain ``dict[str, str]``, so that it travels in any message header, annotation
or job field.

Where no task of this process is current, engine work running on a thread stands in for one:
its submitter is the parent of what it starts, a ``@task`` it calls as much as a thread, a pool
call or a child program it starts, or further engine work it submits (:func:`parent_to_hand_on`).
A ``TRACEPARENT`` the process was started with counts as no task there: a worker started from a
task (by ``subprocess``, ``tasktree-run``, a CI job) runs work for other runs.  A thread started
there (``Thread``, ``ThreadPoolExecutor``) gets that parent handed to it (:func:`handed_on`), in
a thread-local rather than the OpenTelemetry context, which the threading instrumentor sets.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

_logger = logging.getLogger(__name__)

ATTEMPT = "tasktree.attempt"
"""Attribute: the attempt number (1 for the first run) of a task an engine runs again."""

TRACEPARENT = "traceparent"

AmbientParent = Callable[[], Context | None]

DecorationAdapter = Callable[[object, Callable[[Callable], Callable]], object | None]

_providers: list[AmbientParent] = []
_decoration_adapters: list[DecorationAdapter] = []
_not_failures: tuple[type[BaseException], ...] = ()
_ATTRIBUTES_KEY = context.create_key("tasktree-engine-attributes")
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
# The last carrier built, with the context and propagator it was built from: a job submits its
# work in loops under one task, and a Context never changes once made.
_last_carrier: tuple[Context, object, dict[str, str]] | None = None
_process_span: SpanContext | None = None  # the TRACEPARENT this process started with
_handed = threading.local()  # .parent: the engine work's submitter handed to this thread


def set_process_parent(parent: Context | None) -> None:
    """Tells which parent came from this process's ``TRACEPARENT`` (``propagation``)."""
    global _process_span
    _process_span = None if parent is None else trace.get_current_span(parent).get_span_context()


def task_current(ctx: Context | None = None) -> bool:
    """Whether a task of this process (any span but the ``TRACEPARENT`` it started with) is
    current in ``ctx`` (default: the current context)."""
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context.is_valid and span_context != _process_span


def parent_to_hand() -> Context | None:
    """The engine parent to hand to a thread started here: the submitter of the engine work
    running on this thread, when no task of this process is current; else None."""
    return None if task_current() else ambient_parent()


def parent_to_hand_on() -> Context:
    """The context that work started here belongs under: the current one while a task of this
    process is current; else the submitter of the engine work running on this thread, if any;
    else the current one (which may hold the process's ``TRACEPARENT``)."""
    engine_parent = parent_to_hand()
    return context.get_current() if engine_parent is None else engine_parent


NO_PARENT = Context()
"""Handed to a work item submitted where no task and no engine work was current: it is a run of
its own (or under the process's ``TRACEPARENT``), whatever engine state its thread or process
holds from before (a pool thread started by other work, a pool process forked from a worker)."""


def run_handed(parent: Context | None, fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` on this thread, with ``parent`` handed to it (see
    :func:`parent_to_hand`; None: nothing handed, the engines asked as usual; ``NO_PARENT``:
    nor asked)."""
    previous = getattr(_handed, "parent", None)
    _handed.parent = parent
    try:
        return fn(*args, **kwargs)
    finally:
        _handed.parent = previous


def handed_on(fn: Callable) -> Callable:
    """``fn``, to be run on another thread with this thread's :func:`parent_to_hand` (or with
    none: a pool thread started by other work must not keep that work's)."""
    return functools.partial(run_handed, parent_to_hand(), fn)


def carrier() -> dict[str, str]:
    """The parent of work submitted here (:func:`parent_to_hand_on`) as a W3C trace-context
    carrier; empty when there is none."""
    global _last_carrier
    current, propagator = parent_to_hand_on(), propagate.get_global_textmap()
    last = _last_carrier
    if last is not None and last[0] is current and last[1] is propagator:
        return dict(last[2])
    result: dict[str, str] = {}
    if trace.get_current_span(current).get_span_context().is_valid:
        propagate.inject(result, context=current)
    _last_carrier = (current, propagator, result)
    return dict(result)


def parent_from(carrier: Mapping[str, str] | None, engine: str) -> Context:
    """The parent context in ``carrier``; without a valid one, an empty context (the work becomes
    a run of its own), logged once per engine and kind of problem."""
    if carrier:
        try:
            extracted = propagate.extract(dict(carrier), context=Context())
        except Exception:  # noqa: BLE001 - a hostile carrier must not stop the work
            extracted = Context()
        if trace.get_current_span(extracted).get_span_context().is_valid:
            return extracted
        if carrier.get(TRACEPARENT):
            warn_once(engine, "malformed", "a malformed traceparent %r", carrier.get(TRACEPARENT))
            return Context()
    warn_once(engine, "missing", "work submitted without a task context")
    return Context()


def warn_once(engine: str, kind: str, message: str, *args) -> None:
    """Logs ``message`` the first time this engine meets this kind of problem in this process."""
    with _warned_lock:
        if (engine, kind) in _warned:
            return
        _warned.add((engine, kind))
    _logger.warning("tasktree %s: " + message + "; it runs as a run of its own", engine, *args)


def with_attributes(parent: Context, attributes: Mapping[str, object]) -> Context:
    """``parent`` carrying ``attributes`` for the tasks started directly under its span (not for
    their descendants)."""
    span_id = trace.get_current_span(parent).get_span_context().span_id
    return context.set_value(_ATTRIBUTES_KEY, (span_id, dict(attributes)), parent)


def attributes_for(parent: Context | None) -> Mapping[str, object] | None:
    """The engine attributes for a task started under ``parent`` (None: the current context)."""
    value = context.get_value(_ATTRIBUTES_KEY, parent)
    if not isinstance(value, tuple):
        return None
    span_id, attributes = value
    return (
        attributes if trace.get_current_span(parent).get_span_context().span_id == span_id else None
    )


def register_decoration(adapter: DecorationAdapter) -> None:
    """Adds ``adapter``: ``@task`` applied over an engine's own task object (``@task`` over
    ``@app.task``) asks it first; it returns the object to use instead of a plain wrapper (the
    engine's object, its body made a task by ``decorate``), or None when the object is not its."""
    if adapter not in _decoration_adapters:
        _decoration_adapters.append(adapter)


def decorate_engine_object(
    target: object, decorate: Callable[[Callable], Callable]
) -> object | None:
    """What ``@task`` returns for ``target`` if it is an engine's task object, else None."""
    for adapter in _decoration_adapters:
        adapted = adapter(target, decorate)
        if adapted is not None:
            return adapted
    return None


def register_not_a_failure(*types: type[BaseException]) -> None:
    """Adds exception types (and their subclasses) an engine raises to end a task's body as it
    means to, not as a failure (Celery's ``Ignore``, which ``self.replace()`` raises): a task that
    such an exception ends is ``ok``; the exception propagates unchanged."""
    global _not_failures
    _not_failures = tuple(dict.fromkeys((*_not_failures, *types)))


def is_not_a_failure(exc: BaseException) -> bool:
    """Whether an engine registered ``exc``'s type as ending a task without failing it."""
    return isinstance(exc, _not_failures)


def register_ambient_parent(provider: AmbientParent) -> None:
    """Adds ``provider``: called when a task starts with no current task; returns the parent
    context of the engine work running on this thread (an empty context: a run of its own), or
    None when this thread runs no such work."""
    if provider not in _providers:
        _providers.append(provider)


def ambient_parent() -> Context | None:
    """The parent given by the first provider that knows the work running on this thread, else
    the one handed to this thread by the thread that started it (:func:`handed_on`)."""
    handed = getattr(_handed, "parent", None)
    if handed is NO_PARENT:
        return None
    for provider in _providers:
        try:
            found = provider()
        except Exception:
            _logger.exception("tasktree: the parent provider %r failed", provider)
            continue
        if found is not None:
            return found
    return handed
