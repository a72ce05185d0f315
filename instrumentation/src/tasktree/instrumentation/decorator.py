"""``task``: one object that is a decorator and a context manager, and the current-task helpers.

A task is one OpenTelemetry span.  Its parent is the task current where it is called: the
ambient OpenTelemetry context, which tasktree carries into threads, pools, processes and child
programs (see ``propagation``); in a process started with ``TRACEPARENT`` and no current task
(a thread nobody passed a context to), that parent.

Generators and async generators: the parent is the task current where the generator function is
*called* (where the generator object is created), like any other call, and it does not depend on
who happens to iterate it or in which thread.  The span covers the body: it starts at the first
``next()`` and ends at exhaustion, ``close()`` (also on garbage collection) or an exception.
Inside the body the generator's task is current at every resumption, wherever that happens, and
the consumer's context is restored at each ``yield``.  A generator that is never iterated records
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import math
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from tasktree.instrumentation import propagation
from tasktree.instrumentation.environment import redacted_text
from tasktree.instrumentation.integrations import _context as _engines

_logger = logging.getLogger(__name__)
_tracer = trace.get_tracer("tasktree.instrumentation")
_ENTRY_KEY = context.create_key("tasktree-task-entry")

PROGRESS_DONE = "tasktree.progress.done"
PROGRESS_TOTAL = "tasktree.progress.total"
PROGRESS_RATIO = "tasktree.progress"


def _parent() -> Context | None:
    """The parent context for a new task: the current task; with none (or only this process's
    TRACEPARENT), the submitter of the engine work running on this thread (Celery, Dask, Ray,
    RQ), else this process's TRACEPARENT.  None means the current context."""
    _leave_blocks_exited_elsewhere()
    engine_parent = _engines.parent_to_hand()  # None while a task is current
    if engine_parent is not None:
        return engine_parent
    if trace.get_current_span().get_span_context().is_valid:  # a task, or the TRACEPARENT
        return None
    return propagation._process_parent


class _Entry:
    """One entry into a ``with task(...)`` block: its task, and the context it made current."""

    __slots__ = ("owner", "span", "attached", "token", "exited_elsewhere")

    def __init__(self, owner: task, span: Span, attached: Context):
        self.owner, self.span, self.attached = owner, span, attached
        self.token: contextvars.Token[Context] | None = None
        self.exited_elsewhere = False  # left in another thread or asyncio task than entered


def _detach(token: contextvars.Token[Context]) -> bool:
    """Restore the context from before ``token``'s attach; False when this is another Context
    than the one it was attached in (another thread, or asyncio task), which cannot be changed
    from here.  OpenTelemetry's ``context.detach`` would log that as an error and not say it
    failed, so the contextvars token it gave is reset here directly, as ``detach`` does."""
    try:
        token.var.reset(token)
    except (ValueError, RuntimeError):  # "created in a different Context", "already used"
        return False
    return True


def _leave_blocks_exited_elsewhere() -> None:
    """A ``with task()`` block inside a generator (or coroutine) that was resumed and left on
    another thread could not restore this thread's context: its task, ended, stayed current here
    and every later task of this thread went under it.  Restore it here, in the Context where it
    was entered, while nothing has been attached on top of it since."""
    entry = context.get_value(_ENTRY_KEY)
    while (
        isinstance(entry, _Entry)
        and entry.exited_elsewhere
        and context.get_current() is entry.attached
        and entry.token is not None
        and _detach(entry.token)
    ):
        entry = context.get_value(_ENTRY_KEY)


def _start(name: str, attributes: Mapping | None, parent: Context | None) -> Span:
    engine_attributes = _engines.attributes_for(parent)
    if engine_attributes:
        attributes = {**engine_attributes, **(attributes or {})}
    return _tracer.start_span(
        name,
        context=parent,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def _refuse_what_is_no_function(target: Any) -> None:
    """``@task`` over a property or a class would turn it into a function, silently; say so
    where the decorator is applied instead (a mistake in the code, not in a run)."""
    if isinstance(target, (property, functools.cached_property, functools.singledispatchmethod)):
        kind = type(target).__name__
        raise TypeError(f"@task cannot wrap a {kind}: put @task under @{kind}, on its function")
    if isinstance(target, type):
        raise TypeError(f"@task cannot wrap a class ({target.__qualname__}): decorate its methods")
    if not callable(target):
        raise TypeError(f"@task wraps functions, not {type(target).__name__} objects")


def _name_of(function: Any) -> str:
    """A task name that is the same at every run: the qualified name of the function, of the
    function inside a ``functools.partial``, or of a callable object's class (never a repr with
    a memory address)."""
    while isinstance(function, functools.partial):
        function = function.func
    name = getattr(function, "__qualname__", None)
    return name if isinstance(name, str) else type(function).__qualname__


def _is_coroutine_function(function: Any) -> bool:
    """A coroutine function, a partial of one, or a callable object whose ``__call__`` is one."""
    while isinstance(function, functools.partial):
        function = function.func
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(type(function), "__call__", None)  # noqa: B004 - the class's, not callable()
    return not inspect.isfunction(function) and inspect.iscoroutinefunction(call)


def _is_clean_exit(exc: BaseException) -> bool:
    return (
        isinstance(exc, GeneratorExit)
        or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        or _engines.is_not_a_failure(exc)  # an engine's own way to end a task (Celery's Ignore)
    )


def _record_failure(span: Span, exc: BaseException) -> None:
    """Marks ``span`` as failed by ``exc`` (with its stack trace); SystemExit(0) is no failure,
    nor an exception an engine ends a task with on purpose (Celery's ``Ignore``)."""
    if _is_clean_exit(exc):
        return
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - the user's __str__ failed; the task failed all the same
        message = _UNREADABLE_MESSAGE
    message = redacted_text(message)  # a connection error names its URL, password and all
    span.set_status(Status(StatusCode.ERROR, f"{name}: {message}" if message else name))
    try:
        span.add_event("exception", {  # what record_exception writes, secrets masked
            "exception.type": name,
            "exception.message": message,
            "exception.stacktrace": redacted_text(  # format_exception copes with a bad __str__
                "".join(traceback.format_exception(exc))
            ),
            "exception.escaped": "True",
        })  # fmt: skip
    except Exception:
        _logger.exception("tasktree: cannot record the stack trace of %s", name)


_UNREADABLE_MESSAGE = "(its message could not be read: its __str__ raised)"


class task:  # noqa: N801 - used like a function: @task, @task(...), with task("name")
    """A task: decorator for functions, methods, coroutines, generators and async generators,
    and context manager (``with`` / ``async with``), in one object.

    ``@task`` names the task after the function's qualified name; ``@task(name=..., attributes=
    {...})`` sets both; ``with task("load", attributes={...}) as span:`` for a block (without a
    name: the calling function's name).  An exception is recorded with its stack trace, the task
    ends ``error`` and the exception propagates unchanged; ``SystemExit(0)`` is not an error, nor
    is Celery's ``Ignore`` (``self.replace()``).

    One ``task`` object may be entered concurrently from several threads or asyncio tasks: each
    entry keeps its own span in its own context.
    """

    __slots__ = ("name", "attributes", "_entries")

    def __new__(
        cls,
        name_or_function: Any = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping | None = None,
    ):
        if name_or_function is not None and not isinstance(name_or_function, str):
            return cls(name=name, attributes=attributes)(name_or_function)  # bare @task
        return super().__new__(cls)

    def __init__(
        self,
        name_or_function: str | None = None,
        /,
        *,
        name: str | None = None,
        attributes: Mapping | None = None,
    ):
        self.name = name_or_function if name_or_function is not None else name
        self.attributes = dict(attributes) if attributes else None
        # The entries open now, by id, in the order entered.  Entered from several threads at
        # once: each change is one dict operation, atomic under the GIL (no lock, which a
        # signal handler entering a task on the interrupted thread could deadlock on).
        self._entries: dict[int, _Entry] = {}

    def __repr__(self) -> str:
        return f"task({self.name!r})"

    # -- decorator ---------------------------------------------------------------------------

    def __call__(self, function: Any) -> Any:
        if isinstance(function, (classmethod, staticmethod)):
            return type(function)(self(function.__func__))
        adapted = _engines.decorate_engine_object(function, self)
        if adapted is not None:  # e.g. @task over @app.task: the engine's object, body wrapped
            return adapted
        _refuse_what_is_no_function(function)  # after the engines': it would evaluate a proxy
        name = self.name or _name_of(function)
        attributes = self.attributes
        if inspect.isasyncgenfunction(function):
            wrapper = _wrap_async_generator(function, name, attributes)
        elif inspect.isgeneratorfunction(function):
            wrapper = _wrap_generator(function, name, attributes)
        elif _is_coroutine_function(function):
            wrapper = _wrap_coroutine(function, name, attributes)
        else:
            wrapper = _wrap_function(function, name, attributes)
        return _with_signature_of(function, wrapper)

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> Span:
        return self._enter(sys._getframe(1))

    def _enter(self, caller) -> Span:
        name = self.name or caller.f_code.co_qualname
        parent = _parent()
        span = _start(name, self.attributes, parent)
        current = trace.set_span_in_context(span, parent)
        entry = _Entry(self, span, current)
        entry.attached = context.set_value(_ENTRY_KEY, entry, current)
        entry.token = context.attach(entry.attached)
        self._entries[id(entry)] = entry
        return span

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        entry = self._take_entry(context.get_value(_ENTRY_KEY))
        if entry is None:
            _logger.warning("tasktree: %r exited without being entered", self)
            return False
        span = entry.span
        # Left elsewhere (a generator resumed on another thread): the Context it was entered in
        # is put right by the next task started there (_leave_blocks_exited_elsewhere).
        entry.exited_elsewhere = entry.token is not None and not _detach(entry.token)
        try:
            if exc is not None:
                _record_failure(span, exc)
        finally:  # even when reading the exception raises a BaseException (a __str__ that does)
            span.end()
        return False

    def _take_entry(self, current: object) -> _Entry | None:
        """Removes and returns the entry the current context names (this thread's, this asyncio
        task's); else, when someone attached a context inside the block without detaching it,
        this object's innermost entry; None if there is none."""
        if isinstance(current, _Entry) and current.owner is self:
            entry = self._entries.pop(id(current), None)
            if entry is not None:
                return entry
        while self._entries:
            try:  # another thread may take or add an entry between the two steps: try again
                return self._entries.pop(next(reversed(self._entries)))
            except (KeyError, StopIteration, RuntimeError):
                continue
        return None

    async def __aenter__(self) -> Span:
        return self._enter(sys._getframe(1))

    async def __aexit__(self, exc_type, exc, traceback) -> Literal[False]:
        return self.__exit__(exc_type, exc, traceback)


@contextlib.contextmanager
def _task_scope(name: str, attributes: Mapping | None) -> Iterator[Span]:
    """One task around a call: started under the caller's task, current inside, failure recorded."""
    parent = _parent()
    span = _start(name, attributes, parent)
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    except BaseException as exc:
        _record_failure(span, exc)
        raise
    finally:
        context.detach(token)
        span.end()


def _with_signature_of(function: Callable, wrapper: Callable) -> Callable:
    """``wrapper`` stating ``function``'s signature itself: ``inspect.getfullargspec`` ignores
    ``__wrapped__``, and engines read a task's arguments with it (Celery checks the arguments of
    ``delay`` and tells old-style errbacks from new ones by their count)."""
    try:
        wrapper.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # no signature to state (some builtins)
        pass
    return wrapper


def _wrap_function(function: Callable, name: str, attributes: Mapping | None) -> Callable:
    @functools.wraps(function)
    def run_task(*args, **kwargs):
        with _task_scope(name, attributes):
            return function(*args, **kwargs)

    return run_task


def _wrap_coroutine(function: Callable, name: str, attributes: Mapping | None) -> Callable:
    @functools.wraps(function)
    async def run_task(*args, **kwargs):
        with _task_scope(name, attributes):
            return await function(*args, **kwargs)

    return run_task


def _wrap_generator(function: Callable, name: str, attributes: Mapping | None) -> Callable:
    @functools.wraps(function)
    def create_task_generator(*args, **kwargs):
        parent = _parent()
        if parent is None:  # an empty Context (a run of its own) is falsy
            parent = context.get_current()
        return _run_generator(function(*args, **kwargs), name, attributes, parent)

    return create_task_generator


def _run_generator(generator, name: str, attributes: Mapping | None, parent: Context):
    span = _start(name, attributes, parent)
    try:
        # The body's own context (its task current), kept across yields.
        return (yield from each_step_in(trace.set_span_in_context(span, parent), generator))
    except BaseException as exc:
        _record_failure(span, exc)
        raise
    finally:
        span.end()


def each_step_in(body: Context, generator):
    """Drives ``generator`` with ``body`` current while its body runs, and only then (the
    consumer's context is back at each ``yield``); ``body`` follows what the body left current at
    its last ``yield`` (a ``with task(...)`` open across it).  Sends, throws and close pass on."""
    sent = thrown = None
    while True:
        token = context.attach(body)
        try:
            value = generator.send(sent) if thrown is None else generator.throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            body = context.get_current()
            context.detach(token)
        try:
            sent, thrown = (yield value), None
        except GeneratorExit:
            token = context.attach(body)
            try:
                generator.close()
            finally:
                context.detach(token)
            raise
        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer: pass it on
            sent, thrown = None, exc


def _wrap_async_generator(function: Callable, name: str, attributes: Mapping | None) -> Callable:
    @functools.wraps(function)
    def create_task_generator(*args, **kwargs):
        parent = _parent()
        if parent is None:  # an empty Context (a run of its own) is falsy
            parent = context.get_current()
        return _run_async_generator(function(*args, **kwargs), name, attributes, parent)

    return create_task_generator


async def _run_async_generator(generator, name: str, attributes: Mapping | None, parent: Context):
    span = _start(name, attributes, parent)
    body = trace.set_span_in_context(span, parent)
    sent = thrown = None
    try:
        while True:
            token = context.attach(body)
            try:
                step = generator.asend(sent) if thrown is None else generator.athrow(thrown)
                value = await step
            except StopAsyncIteration:
                return
            finally:
                body = context.get_current()
                context.detach(token)
            try:
                sent, thrown = (yield value), None
            except GeneratorExit:
                token = context.attach(body)
                try:
                    await generator.aclose()
                finally:
                    context.detach(token)
                raise
            except BaseException as exc:  # noqa: BLE001
                sent, thrown = None, exc
    except BaseException as exc:
        _record_failure(span, exc)
        raise
    finally:
        span.end()


# -- the current task --------------------------------------------------------------------------


def set_attributes(attributes: Mapping[str, Any] | None = None, /, **more: Any) -> None:
    """Adds attributes to the current task: ``set_attributes({"rows.read": 10})`` or
    ``set_attributes(batch="2024-01-01")``.  Does nothing outside a task (said once when the
    current task is another process's: a pool worker's plain function); never raises."""
    try:
        _leave_blocks_exited_elsewhere()
        span = trace.get_current_span()
        if not span.is_recording():
            _warn_once_if_the_task_is_elsewhere(span)
        if attributes:
            span.set_attributes(attributes)
        if more:
            span.set_attributes(more)
    except Exception:
        _logger.exception("tasktree: cannot set attributes")


_elsewhere_warned = threading.Event()


def _warn_once_if_the_task_is_elsewhere(span: Span) -> None:
    """A process pool's worker runs plain code under its submitter's task, which lives in the
    submitting process: attributes and progress set there were lost without a word (in a
    thread, the same call reaches the task)."""
    if span.get_span_context().is_valid and not _elsewhere_warned.is_set():
        _elsewhere_warned.set()
        _logger.warning(
            "tasktree: set_attributes/set_progress outside a task of this process (the current"
            " task runs in another process, as in a process pool's worker): nothing is recorded;"
            " make the function a @task to record on it"
        )


def set_progress(done: float, total: float | None = None) -> None:
    """Reports progress on the current task: ``done`` units out of ``total`` (if known).

    Recorded as ``tasktree.progress.done``, ``tasktree.progress.total`` and the ratio
    ``tasktree.progress`` (0..1); the next running snapshot carries them to the sink.  Numbers
    (or numeric strings, Decimals) only; anything else is logged once and ignored: never raises.
    """
    try:
        done_number = _number(done)
        total_number = None if total is None else _number(total)
    except (TypeError, ValueError, OverflowError):
        if not _progress_warned.is_set():
            _progress_warned.set()
            _logger.warning(
                "tasktree: set_progress(%r, %r) ignored: done and total must be numbers",
                done, total,
            )  # fmt: skip
        return
    attributes: dict[str, float] = {PROGRESS_DONE: done_number}
    if total_number:
        attributes[PROGRESS_TOTAL] = total_number
        attributes[PROGRESS_RATIO] = min(1.0, max(0.0, done_number / total_number))
    set_attributes(attributes)


_progress_warned = threading.Event()


def _number(value: Any) -> float:
    """An int stays an int (it is shown as one); anything else becomes a finite float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number
