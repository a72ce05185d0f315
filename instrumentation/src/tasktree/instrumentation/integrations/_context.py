"""What every engine integration shares: the carrier written at submission, the parent read
where the work runs, and the engine attributes given to the first task there.

The carrier is the W3C trace context (``traceparent``, ``tracestate``) of the task current at
submission, as a plain ``dict[str, str]``, so that it travels in any message header, annotation
or job field.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context

_logger = logging.getLogger(__name__)

ATTEMPT = "tasktree.attempt"
"""Attribute: the attempt number (1 for the first run) of a task an engine runs again."""

TRACEPARENT = "traceparent"

AmbientParent = Callable[[], Context | None]

DecorationAdapter = Callable[[object, Callable[[Callable], Callable]], object | None]

_providers: list[AmbientParent] = []
_decoration_adapters: list[DecorationAdapter] = []
_ATTRIBUTES_KEY = context.create_key("tasktree-engine-attributes")
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
# The last carrier built, with the context and propagator it was built from: a job submits its
# work in loops under one task, and a Context never changes once made.
_last_carrier: tuple[Context, object, dict[str, str]] | None = None


def carrier() -> dict[str, str]:
    """The current task as a W3C trace-context carrier; empty when no task is current."""
    global _last_carrier
    current, propagator = context.get_current(), propagate.get_global_textmap()
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


def register_ambient_parent(provider: AmbientParent) -> None:
    """Adds ``provider``: called when a task starts with no current task; returns the parent
    context of the engine work running on this thread (an empty context: a run of its own), or
    None when this thread runs no such work."""
    if provider not in _providers:
        _providers.append(provider)


def ambient_parent() -> Context | None:
    """The parent given by the first provider that knows the work running on this thread."""
    for provider in _providers:
        try:
            found = provider()
        except Exception:
            _logger.exception("tasktree: the parent provider %r failed", provider)
            continue
        if found is not None:
            return found
    return None
