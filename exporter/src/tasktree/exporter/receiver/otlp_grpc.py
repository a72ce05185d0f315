"""OTLP/gRPC trace receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

The same outcomes as OTLP/HTTP (see ``otlp_http``), as gRPC status codes: OK with
``partial_success`` for refused spans, INVALID_ARGUMENT for an undecodable request,
UNAUTHENTICATED without one of the configured ingest tokens (``auth.IngestTokens``),
RESOURCE_EXHAUSTED (``Overloaded``) and UNAVAILABLE (``StoreUnavailable``) with a
``RetryInfo`` delay.  The delay travels twice in the trailers: in ``grpc-status-details-bin``
(a ``google.rpc.Status``, the standard place, read by the Go and Java exporters and the
Collector) and as ``google.rpc.retryinfo-bin`` (a bare ``RetryInfo``, which is where the Python
exporter looks).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceServicer

from tasktree.exporter.errors import TasktreeError, Unauthorized
from tasktree.exporter.receiver._common import (
    Ingest,
    RefusedExports,
    export_response,
    ingest_tokens,
    retry_after,
    rpc_code,
    store,
)
from tasktree.exporter.receiver.decode import Limits, decode_protobuf, decode_request
from tasktree.exporter.receiver.records import DecodedBatch

if TYPE_CHECKING:
    from tasktree.exporter.auth import IngestTokens
    from tasktree.exporter.settings import Settings

__all__ = ["TraceService", "start_otlp_grpc_server"]

logger = logging.getLogger(__name__)

SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def start_otlp_grpc_server(
    ingest: Ingest,
    settings: Settings,
    host: str,
    port: int,
    max_workers: int = 8,
    tokens: IngestTokens | None = None,
    refusals: RefusedExports | None = None,
) -> tuple[grpc.Server, int]:
    """Start serving OTLP/gRPC on ``host:port`` only; return the server and the bound port.

    ``port`` 0 picks a free port.  Requests over ``settings.max_body_bytes`` (after
    decompression) are refused by gRPC itself with RESOURCE_EXHAUSTED.  Stop it with
    ``server.stop(grace)``.  ``ingest`` runs on the server's worker threads (``max_workers``).
    ``tokens`` (an ``auth.IngestTokens``) replaces the ingest tokens configured in ``settings``;
    ``refusals`` counts the calls refused whole before ingest, and logs those refused for their
    token.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="otlp-grpc"),
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # Linux grpc sets SO_REUSEPORT by default, letting a second server "bind" a busy port.
            ("grpc.so_reuseport", 0),
        ],
    )
    service = TraceService(ingest, settings, tokens, refusals)
    handler = grpc.unary_unary_rpc_method_handler(
        service.export_bytes,  # raw bytes in, so a malformed request is INVALID_ARGUMENT
        request_deserializer=None,
        response_serializer=ExportTraceServiceResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Export": handler}),)
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc raises when the address cannot be bound
        raise OSError(str(exc)) from None  # the caller names the address and the setting
    if not bound:
        raise OSError(f"gRPC could not bind {address}")
    server.start()
    return server, bound


class TraceService(TraceServiceServicer):
    """``Export`` into ``ingest``; every ``TasktreeError`` becomes the matching gRPC status."""

    def __init__(
        self,
        ingest: Ingest,
        settings: Settings,
        tokens: IngestTokens | None = None,
        refusals: RefusedExports | None = None,
    ):
        self.ingest = ingest
        self.limits = Limits.from_settings(settings)
        self.tokens = ingest_tokens(settings, tokens)
        self.refusals = refusals or RefusedExports()

    def Export(  # noqa: N802 - the name gRPC calls
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        """The generated servicer's method, for a request gRPC has already parsed."""
        return self._export(lambda: decode_request(request, self.limits), context)

    def export_bytes(
        self, body: bytes, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        """What the server registers: parses the request itself to answer INVALID_ARGUMENT."""
        return self._export(lambda: decode_protobuf(body, self.limits), context)

    def _export(
        self, decode: Callable[[], DecodedBatch], context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        try:
            self.tokens.check(dict(context.invocation_metadata()).get("authorization"))
            batch = decode()
            store(self.ingest, batch)
        except Unauthorized as exc:  # refused before the request is decoded
            self.refusals.unauthenticated("grpc", client_address(context.peer()), exc)
            _abort(context, exc)
        except TasktreeError as exc:
            self.refusals.invalid("grpc", exc)
            _abort(context, exc)
        except Exception:
            logger.exception("OTLP/gRPC export failed unexpectedly")
            _abort(
                context,
                TasktreeError("internal error while storing spans; see the tasktree server log"),
            )
        return export_response(batch)


def client_address(peer: str) -> str:
    """The client's address in a gRPC peer (``ipv4:10.0.0.5:40312``, ``ipv6:[::1]:40312``),
    without the port, which changes with every connection of the same client."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)  # some gRPC versions write ipv6:%5B::1%5D:40312
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].removeprefix("[").removesuffix("]") or peer
    return peer


def _abort(context: grpc.ServicerContext, exc: TasktreeError) -> None:
    """End the call with ``exc``'s status (raises, as ``context.abort`` does)."""
    code = rpc_code(exc.status)
    delay = retry_after(exc) if exc.status in (429, 503) else None
    if delay is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(delay * 1e9))
        status = status_pb2.Status(code=code, message=exc.message)
        packed = AnyPb()
        packed.Pack(info)
        status.details.append(packed)
        context.set_trailing_metadata(
            (
                ("grpc-status-details-bin", status.SerializeToString()),
                ("google.rpc.retryinfo-bin", info.SerializeToString()),
            )
        )
    context.abort(_CODES[code], exc.message)
