"""Setting tasktree up: ``configure()``, and the entry points ``opentelemetry-instrument`` loads.

``configure()`` has two modes:

- nothing set up OpenTelemetry yet: it creates the ``TracerProvider`` (resource from
  ``environment``), with one :class:`LiveSpanProcessor` exporting both running snapshots and
  final records through the exporter chosen by the ``OTEL_*`` variables (OTLP over HTTP/protobuf
  to http://127.0.0.1:4318 by default);
- the application or ``opentelemetry-instrument`` already installed an SDK ``TracerProvider``:
  it adds a snapshots-only :class:`LiveSpanProcessor` to it and leaves everything else alone.

Either way it installs the propagation patches, adopts ``TRACEPARENT``, activates the engine
integrations (Celery, Dask, Ray, RQ: see ``integrations``) and (by default) a SIGTERM handler that
flushes before the process dies.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

from opentelemetry import context, trace
from opentelemetry.instrumentation.environment_variables import (
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS,
)
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # (the package ships no type information for it)
)
from opentelemetry.sdk.environment_variables import OTEL_TRACES_SAMPLER
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from opentelemetry.trace.propagation import _SPAN_KEY as _CURRENT_SPAN_KEY  # no public name

from tasktree.instrumentation import _settings, integrations, propagation
from tasktree.instrumentation.environment import build_resource
from tasktree.instrumentation.environment_variables import TASKTREE_HANDLE_SIGTERM
from tasktree.instrumentation.heartbeat import LiveSpanProcessor
from tasktree.instrumentation.snapshot import ABANDONED_MESSAGE

_logger = logging.getLogger(__name__)

DEFAULT_HTTP_ENDPOINT = "http://127.0.0.1:4318"
DEFAULT_GRPC_ENDPOINT = "http://127.0.0.1:4317"


@dataclass
class _State:
    provider: TracerProvider
    processor: LiveSpanProcessor | None
    owns_provider: bool
    setup: dict  # what a spawned child needs to set itself up the same way


_state: _State | None = None
_lock = threading.Lock()


def configure(
    *,
    service_name: str | None = None,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    heartbeat_interval: float | None = None,
    snapshot_delay: float | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    capture_env: str | list[str] | None = None,
    handle_sigterm: bool | None = None,
) -> TracerProvider | None:
    """Sets up OpenTelemetry for tasktree, unless the application already did; idempotent.

    ``service_name`` names the job (default ``OTEL_SERVICE_NAME``, else the main module or
    script); ``endpoint`` is the sink's OTLP base URL (default ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    else http://127.0.0.1:4318); ``exporter`` replaces the exporter altogether (e.g. for tests);
    ``heartbeat_interval``, ``snapshot_delay``, ``capture_env`` and ``handle_sigterm`` default to
    their ``TASKTREE_*`` variables; ``resource_attributes`` are added to the resource.

    Returns the ``TracerProvider`` in use, or None when ``OTEL_SDK_DISABLED=true``.  Never raises
    because of the environment: a bad value logs a warning and its default is used.
    """
    global _state
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    _warn_if_inside_an_unrecorded_task()
    with _lock:
        if _state is not None:
            _warn_if_ignored(_state.setup, service_name=service_name, endpoint=endpoint,
                             heartbeat_interval=heartbeat_interval, snapshot_delay=snapshot_delay,
                             capture_env=capture_env, handle_sigterm=handle_sigterm)  # fmt: skip
            return _state.provider
        setup = {
            key: value
            for key, value in {
                "service_name": service_name,
                "endpoint": endpoint,
                "heartbeat_interval": heartbeat_interval,
                "snapshot_delay": snapshot_delay,
                "resource_attributes": dict(resource_attributes) if resource_attributes else None,
                "capture_env": capture_env,
                "handle_sigterm": handle_sigterm,
            }.items()
            if value is not None
        }
        current = trace.get_tracer_provider()
        owns = not isinstance(current, TracerProvider)
        if owns:
            resource = build_resource(service_name, resource_attributes, capture_env)
            setup["service_name"] = str(resource.attributes.get("service.name"))
            provider = TracerProvider(resource=resource, sampler=_sampler())
        else:
            provider = cast(TracerProvider, current)
        processor = _live_processor(exporter, endpoint, owns, heartbeat_interval, snapshot_delay)
        if processor is not None:
            provider.add_span_processor(processor)
        if owns:
            trace.set_tracer_provider(provider)
        _state = _State(provider, processor, owns, setup)
        propagation.flush_when_this_child_ends()
    propagation.install()
    integrations.activate()
    _install_sigterm_handler(_settings.flag(handle_sigterm, TASKTREE_HANDLE_SIGTERM, True))
    return provider


def _sampler() -> Sampler | None:
    """Every task is recorded: a batch monitor that lost a failed run because an upstream
    service's ``TRACEPARENT`` said "not sampled" (flags ``00``, head sampling) would lose it
    silently.  OpenTelemetry's default (parent-based) would drop the whole job then, so tasktree
    records always, unless ``OTEL_TRACES_SAMPLER`` chooses otherwise (None: the SDK reads it)."""
    if os.environ.get(OTEL_TRACES_SAMPLER, "").strip():
        return None
    return ALWAYS_ON


def _warn_if_inside_an_unrecorded_task() -> None:
    """``configure()`` inside a task started before it (``@task def main(): configure()``): that
    task was never recorded, and every task started in it becomes a run of its own.  Such a task
    is current in the context as an invalid span (OpenTelemetry's no-op tracer)."""
    current = context.get_current().get(_CURRENT_SPAN_KEY)
    if isinstance(current, trace.Span) and not current.get_span_context().is_valid:
        _logger.warning(
            "tasktree: configure() was called inside a task started before it (a @task function"
            " that calls configure(), say): that task is not recorded and the tasks started in"
            " it become runs of their own; call configure() before the first task starts"
        )


def _warn_if_ignored(setup: dict, **given: Any) -> None:
    """A second ``configure()`` changes nothing (idempotent): say so when it asked for something
    else, or a mistyped endpoint or name would go unnoticed."""
    ignored = {k: v for k, v in given.items() if v is not None and setup.get(k) != v}
    if ignored:
        _logger.warning(
            "tasktree: configure() was called before in this process (%s); this call's %s %s"
            " ignored",
            ", ".join(f"{k}={v!r}" for k, v in setup.items() if k in ignored) or "defaults",
            ", ".join(f"{k}={v!r}" for k, v in ignored.items()),
            "is" if len(ignored) == 1 else "are",
        )


def _live_processor(exporter, endpoint, export_finals, heartbeat_interval, snapshot_delay):
    """The LiveSpanProcessor for ``configure``; None (logged) if no exporter can be built."""
    try:
        factory = exporter if exporter is not None else _exporter_factory(endpoint)
        if factory is None:
            return None
        return LiveSpanProcessor(
            factory,
            export_finals=export_finals,
            heartbeat_interval=heartbeat_interval,
            snapshot_delay=snapshot_delay,
        )
    except Exception:
        _logger.exception("tasktree: cannot build the span exporter; tasks will not be sent")
        return None


def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


def _exporter_factory(endpoint: str | None) -> Callable[[], SpanExporter] | None:
    """Builds the exporter chosen by ``OTEL_TRACES_EXPORTER`` and the OTLP protocol variables."""
    choice = _env("OTEL_TRACES_EXPORTER").lower().split(",")[0].strip() or "otlp"
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter
    if choice not in ("otlp", "otlp_proto_http", "otlp_proto_grpc"):
        _logger.warning("tasktree: unsupported OTEL_TRACES_EXPORTER=%r; using otlp", choice)
    protocol = (
        _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    env_endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if choice == "otlp_proto_grpc" or (choice == "otlp" and protocol == "grpc"):
        from tasktree.instrumentation import otlp

        try:
            grpc_exporter = otlp.grpc_exporter_class()
        except ImportError:
            _logger.warning(
                "tasktree: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-"
                "proto-grpc (pip install 'tasktree-instrumentation[grpc]'); sending OTLP/HTTP"
                " instead, which a gRPC port (4317) does not take: nothing arrives there"
            )
        else:
            url = endpoint or (None if env_endpoint else DEFAULT_GRPC_ENDPOINT)
            return lambda: grpc_exporter(endpoint=url)
    elif protocol != "http/protobuf":
        _logger.warning("tasktree: unsupported OTLP protocol %r; using http/protobuf", protocol)
    from tasktree.instrumentation.otlp import SpanExporter  # OTel's OTLP/HTTP, encoding faster

    if endpoint:
        url = endpoint.rstrip("/") + _TRACES_PATH
    else:
        url = None if env_endpoint else DEFAULT_HTTP_ENDPOINT + _TRACES_PATH
    _warn_if_unusable(endpoint)
    return lambda: SpanExporter(endpoint=url)


_TRACES_PATH = "/v1/traces"


def _warn_if_unusable(endpoint: str | None) -> None:
    """Says at once, naming the setting, when the OTLP/HTTP URL cannot work: otherwise the first
    sign of a mistyped endpoint is a failed export at the job's end."""
    if endpoint:
        source, given = "configure(endpoint=...)", endpoint
        url = endpoint.rstrip("/") + _TRACES_PATH
    elif given := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""):
        source, url = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", given  # the full URL, used as given
    elif given := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""):
        source, url = "OTEL_EXPORTER_OTLP_ENDPOINT", given.removesuffix("/") + _TRACES_PATH
    else:
        return
    problem = _url_problem(url)
    if problem is None and url.endswith(_TRACES_PATH * 2):
        problem = (
            f"the base URL, to which {_TRACES_PATH} is added (spans would go to {url}); drop"
            f" {_TRACES_PATH}, or give the full URL in OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
    elif problem is None and urllib.parse.urlsplit(url).path in ("", "/"):
        problem = (
            f"the full URL, used as given, and has no path (tasktree serve takes spans at"
            f" {_TRACES_PATH}); add {_TRACES_PATH}, or give the base URL in"
            " OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    if problem is not None:
        _logger.warning("tasktree: %s=%r is %s; no task can be delivered", source, given, problem)


def _url_problem(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        return "not a valid URL (is the port a number from 1 to 65535?)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http:// or https:// URL (for example {DEFAULT_HTTP_ENDPOINT})"
    return None


# -- processes ---------------------------------------------------------------------------------


def child_setup() -> dict | None:
    """What a spawned child needs to call ``configure`` as this process did (None: not set up)."""
    state = _state
    return None if state is None else state.setup


def setup_child(setup: dict) -> None:
    """In a spawned child: ``configure`` like the parent, or just install the propagation if
    OpenTelemetry is set up there already."""
    try:
        configure(**setup)
    except Exception:
        _logger.exception("tasktree: cannot set up the child process")


def _flush_timeout_millis() -> int:
    processor = _state.processor if _state is not None else None
    seconds = processor._flush_timeout if processor is not None else 5.0
    return int(seconds * 1000)


def flush(timeout_millis: int | None = None) -> bool:
    """Exports everything recorded so far; waits at most ``TASKTREE_FLUSH_TIMEOUT`` seconds (not
    at all while the sink is known down).  Returns whether everything was exported."""
    try:
        provider = _state.provider if _state is not None else trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            return True
        return force_flush(
            timeout_millis if timeout_millis is not None else _flush_timeout_millis()
        )
    except Exception:
        _logger.exception("tasktree: flush failed")
        return False


def end_of_process(message: str = ABANDONED_MESSAGE) -> None:
    """Before a process exits without atexit (``os._exit``, a signal): tasks still running become
    final ``error`` records with ``message``, and everything recorded is flushed (bounded).

    A SIGTERM arriving meanwhile is handled right after the flush, not inside it: the process is
    on its way out either way, and a handler that raises there (billiard's ``SystemExit`` in
    Celery pool processes, a job's own) would lose what the process finished last."""
    with _sigterm_held():
        _close_and_flush(message)


def _close_and_flush(message: str) -> None:
    state = _state
    if state is None:
        flush()
        return
    if state.processor is not None:
        state.processor.close(message)
    if state.owns_provider:
        state.provider.shutdown()
    else:
        flush()


propagation.set_process_hooks(
    propagation.ProcessHooks(child_setup, setup_child, flush, end_of_process)
)


# -- SIGTERM -----------------------------------------------------------------------------------


@contextmanager
def _sigterm_held() -> Iterator[None]:
    """Within the block, a SIGTERM whose handler is a Python function is recorded, then raised
    again once the block is over.  The default action and ``SIG_IGN`` stay as they are (someone
    chose them); off the main thread nothing changes (only it can set handlers)."""
    received: list[int] = []
    try:
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler) or threading.current_thread() is not threading.main_thread():
            handler = None
        else:
            signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    except (ValueError, OSError):  # not the main interpreter
        handler = None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
            if received:
                signal.raise_signal(signal.SIGTERM)


def _install_sigterm_handler(enabled: bool) -> None:
    if not enabled or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):
        pass


_sigterm_helper: threading.Thread | None = None


def _on_sigterm(signum: int, frame) -> None:
    """Records running tasks as terminated, flushes (bounded), then dies of the signal as before.

    The work runs on a helper thread, never waiting for a lock the interrupted main thread holds:
    when that thread was interrupted inside the task processor's lock (in a hook, around every
    task), the handler returns at once so that it goes on and releases it, and the helper,
    done, sends the signal again; the handler then finds it done and dies.
    """
    global _sigterm_helper
    inside_the_lock = _interrupted_inside_the_processor()
    if _sigterm_helper is None:
        _sigterm_helper = threading.Thread(
            target=_end_of_process_on_signal,
            args=(signum, inside_the_lock),
            name="tasktree-sigterm",
            daemon=True,
        )
        _sigterm_helper.start()
    if inside_the_lock and _sigterm_helper.is_alive():
        return  # the helper, done, signals again (the lock is not needed to die: only to flush)
    _sigterm_helper.join(_flush_timeout_millis() / 1000 + 1.0)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _interrupted_inside_the_processor() -> bool:
    processor = _state.processor if _state is not None else None
    return processor is not None and processor.held_by_this_thread()


def _end_of_process_on_signal(signum: int, signal_again: bool) -> None:
    """The helper thread of ``_on_sigterm``."""
    end_of_process(f"terminated by {signal.Signals(signum).name}")
    if signal_again:  # the handler returned without waiting: back to it, to die
        os.kill(os.getpid(), signum)


# -- opentelemetry-instrument entry points -----------------------------------------------------


class TasktreeConfigurator:
    """``opentelemetry_configurator`` entry point: ``configure()`` from the environment."""

    def configure(self, **kwargs: Any) -> None:
        _under_the_loader()
        if not _is_tasktree_run():
            configure()


def _under_the_loader() -> None:
    """Called by ``opentelemetry-instrument``'s entry points only: when its loader will load the
    threading instrumentor (installed with tasktree, not disabled), leave threading to it."""
    disabled = {
        name.strip()
        for name in os.environ.get(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "").split(",")
    }
    if disabled & {"threading", "*"}:
        return
    if any(e.name == "threading" for e in entry_points(group="opentelemetry_instrumentor")):
        propagation.leave_threading_to_loader()


def _is_tasktree_run() -> bool:
    """Whether this process is ``tasktree-run``, which configures tasktree itself with its own
    options (``--name``, ``--heartbeat``): configured first from the environment, it ignored them.
    A program started from a job under ``opentelemetry-instrument`` inherits the loader too."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is None:
        return False
    runner = Path(__file__).with_name("runner.py")
    return program.name == "tasktree-run" or program.resolve() == runner.resolve()


class TasktreeInstrumentor(BaseInstrumentor):
    """``opentelemetry_instrumentor`` entry point: live tasks and propagation for a job run under
    ``opentelemetry-instrument``, whichever configurator set up the SDK."""

    def instrumentation_dependencies(self) -> list[str]:
        return []

    def _instrument(self, **kwargs: Any) -> None:
        if kwargs.get("skip_dep_check"):  # the loader's call (it checked dependencies itself)
            _under_the_loader()
        if not _is_tasktree_run():
            configure()

    def _uninstrument(self, **kwargs: Any) -> None:
        pass  # the patches stay for the life of the process
