"""What the OTLP/HTTP and OTLP/gRPC receivers share: the ingest call, responses, auth, codes."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tasktree.exporter.errors import Overloaded, TasktreeError
from tasktree.exporter.receiver.records import DecodedBatch

if TYPE_CHECKING:
    from tasktree.exporter.auth import IngestTokens
    from tasktree.exporter.settings import Settings

logger = logging.getLogger(__name__)

Ingest = Callable[[DecodedBatch], None]
"""Stores a batch durably before returning; may ``batch.reject(...)`` more spans; may raise
``Overloaded`` or ``StoreUnavailable``."""

DEFAULT_OVERLOAD_RETRY_AFTER = 1.0
"""Seconds suggested to the client when ``Overloaded`` carries no ``retry_after`` of its own."""

# google.rpc.Code numbers (the gRPC status codes), for Status bodies and the gRPC receiver.
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16
UNIMPLEMENTED = 12
NOT_FOUND = 5
PERMISSION_DENIED = 7

_RPC_CODES = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    405: UNIMPLEMENTED,
    413: RESOURCE_EXHAUSTED,
    415: INVALID_ARGUMENT,
    429: RESOURCE_EXHAUSTED,
    503: UNAVAILABLE,
}


def rpc_code(http_status: int) -> int:
    """The google.rpc.Code matching an HTTP status (OTLP pairs them this way)."""
    return _RPC_CODES.get(http_status, INTERNAL)


def retry_after(exc: TasktreeError) -> float | None:
    """Seconds the client should wait before retrying, or ``None`` when it must not retry."""
    if exc.retry_after is not None:
        return max(0.0, float(exc.retry_after))
    if isinstance(exc, Overloaded):
        return DEFAULT_OVERLOAD_RETRY_AFTER
    return None


def ingest_tokens(settings: Settings, tokens: IngestTokens | None = None) -> IngestTokens:
    """The tokens a receiver accepts: ``tokens`` when given (``Service`` adds its own internal
    token), else those configured in ``settings``."""
    from tasktree.exporter.auth import IngestTokens

    return tokens if tokens is not None else IngestTokens(settings)


_PROTOCOL_NAMES = {"http": "OTLP/HTTP", "grpc": "OTLP/gRPC"}


INVALID_OUTCOMES = {400: "malformed", 413: "too_large", 415: "malformed"}
"""How a request refused for its body counts in ``tasktree_ingest_requests_total``, by status:
not decodable, or an unsupported content type or encoding (``malformed``), or over
``TASKTREE_MAX_BODY_BYTES`` (``too_large``)."""


class RefusedExports:
    """What the receivers do with an export refused whole before its spans reach ingest: count
    it with ``count(protocol, outcome)`` (the metrics' hook), and, for a missing or wrong ingest
    token (401, ``UNAUTHENTICATED``) or, while ingest is open, a host that is not this machine
    (403, ``auth.HostGuard``), warn in the log.

    A job sending without its token retries with every batch, so the warning comes at most once
    per ``interval_s`` per client address, with the number of refusals left unlogged since.  At
    most ``capacity`` addresses are remembered (the least recently warned are forgotten first).
    A body refused as malformed or too large is not logged: its sender is told why in the answer.
    """

    def __init__(
        self,
        count: Callable[[str, str], None] = lambda protocol, outcome: None,
        interval_s: float = 60.0,
        capacity: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._count = count
        self._clock = clock
        self._interval = interval_s
        self._capacity = capacity
        # address: [warned at, refused since]
        self._warned: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def invalid(self, protocol: str, exc: TasktreeError) -> None:
        """Count a request whose body was refused (``INVALID_OUTCOMES``; other errors are
        counted by ingest's own metrics)."""
        outcome = INVALID_OUTCOMES.get(exc.status)
        if outcome is not None:
            self._count(protocol, outcome)

    def unauthenticated(self, protocol: str, address: str, exc: TasktreeError) -> None:
        """Count a request refused for its token or host, and warn about ``address`` when due."""
        self._count(protocol, "unauthenticated")
        unlogged = self._unlogged_if_due(address)
        if unlogged is None:
            return
        since = f" ({unlogged} more refused since the last warning)" if unlogged else ""
        logger.warning(
            "refused an %s export from %s: %s%s; warning at most once every %g s per address",
            _PROTOCOL_NAMES.get(protocol, protocol),
            address,
            exc.message,
            since,
            self._interval,
        )

    def _unlogged_if_due(self, address: str) -> int | None:
        """None when ``address`` was warned about less than ``interval_s`` ago (this refusal is
        then counted for the next warning), else how many refusals went unlogged since."""
        now = self._clock()
        with self._lock:
            entry = self._warned.get(address)
            if entry is not None and now - entry[0] < self._interval:
                entry[1] += 1
                return None
            self._warned[address] = [now, 0]
            self._warned.move_to_end(address)
            while len(self._warned) > self._capacity:
                self._warned.popitem(last=False)
            return int(entry[1]) if entry is not None else 0


def store(ingest: Ingest, batch: DecodedBatch) -> None:
    """Hand ``batch`` to ``ingest`` unless it is entirely empty (an empty request is a success)."""
    if batch.spans or batch.rejected:
        ingest(batch)


def rejection_message(batch: DecodedBatch) -> str:
    """The English ``partial_success.error_message`` for ``batch`` ("" when nothing was refused)."""
    if not batch.rejected:
        return ""
    shown = "; ".join(batch.messages)
    more = "; …" if batch.rejected > len(batch.messages) else ""
    return f"{batch.rejected} span(s) rejected: {shown}{more}"


def export_response(batch: DecodedBatch) -> ExportTraceServiceResponse:
    """Full success leaves ``partial_success`` unset, as OTLP asks."""
    response = ExportTraceServiceResponse()
    if batch.rejected:
        response.partial_success.rejected_spans = batch.rejected
        response.partial_success.error_message = rejection_message(batch)
    return response


def export_response_json(batch: DecodedBatch) -> dict[str, Any]:
    """``export_response`` in OTLP/JSON form (int64 as a decimal string, as proto3 JSON does)."""
    if not batch.rejected:
        return {}
    return {
        "partialSuccess": {
            "rejectedSpans": str(batch.rejected),
            "errorMessage": rejection_message(batch),
        }
    }
