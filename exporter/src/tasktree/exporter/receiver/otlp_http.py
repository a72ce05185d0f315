"""OTLP/HTTP trace receiver: ``POST /v1/traces``, protobuf or JSON, plain, gzip or deflate.

Contract (OTLP/HTTP, see shared/protocol-notes.md §1): the answer has the request's content type;
200 means ``ingest`` returned, i.e. the good spans are durably stored, with ``partial_success``
counting and explaining the spans refused; 400 malformed (not retryable), 401 missing/wrong
bearer token, 405 not POST, 413 over ``max_body_bytes`` before *or after* decompression, 415
unknown content type or encoding, 429/503 with ``Retry-After`` when ``ingest`` raises
``Overloaded``/``StoreUnavailable`` (OTel exporters retry those).  Error bodies are a
``google.rpc.Status`` (protobuf requests) or ``{"code": <google.rpc.Code>, "message": ...}`` (JSON).
"""

from __future__ import annotations

import logging
import zlib
from typing import IO, TYPE_CHECKING

import orjson
from flask import Flask, Response, request
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from werkzeug.exceptions import HTTPException

from tasktree.exporter.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    RoutingError,
    TasktreeError,
    Unauthorized,
    UnsupportedMediaType,
    error_headers,
)
from tasktree.exporter.receiver._common import (
    Ingest,
    RefusedExports,
    export_response,
    export_response_json,
    ingest_tokens,
    retry_after,
    rpc_code,
    store,
)
from tasktree.exporter.receiver.decode import Limits, decode_json, decode_protobuf
from tasktree.exporter.receiver.records import DecodedBatch

if TYPE_CHECKING:
    from tasktree.exporter.auth import IngestTokens
    from tasktree.exporter.settings import Settings

__all__ = ["TRACES_PATH", "create_otlp_http_app"]

logger = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = (PROTOBUF, "application/protobuf")
_DECODERS = {PROTOBUF: decode_protobuf, "application/protobuf": decode_protobuf, JSON: decode_json}
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer
_ZLIB_WBITS = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format (RFC 9110 §8.4.1.2)
_WBITS = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": _ZLIB_WBITS}
_READ_CHUNK = 1 << 20


def create_otlp_http_app(
    ingest: Ingest,
    settings: Settings,
    tokens: IngestTokens | None = None,
    refusals: RefusedExports | None = None,
) -> Flask:
    """A Flask app serving ``POST /v1/traces`` into ``ingest`` (see the module docstring).

    ``settings`` needs ``max_body_bytes``, ``max_value_bytes`` and the ingest tokens
    (``ingest_tokens``, ``auth_token``); ``tokens`` (an ``auth.IngestTokens``) replaces the
    latter.  ``ingest`` is called on the request thread, once per non-empty request, and must be
    thread-safe.  ``refusals`` counts the requests refused whole before ingest, and logs those
    refused for their token.
    """
    app = Flask(__name__)
    receiver = _Receiver(ingest, settings, tokens, refusals)
    app.add_url_rule(TRACES_PATH, "otlp_traces", receiver.export, methods=["POST"])
    app.register_error_handler(HTTPException, _http_exception)
    return app


class _Receiver:
    def __init__(
        self,
        ingest: Ingest,
        settings: Settings,
        tokens: IngestTokens | None = None,
        refusals: RefusedExports | None = None,
    ):
        self.ingest = ingest
        self.limits = Limits.from_settings(settings)
        self.max_body = settings.max_body_bytes
        self.tokens = ingest_tokens(settings, tokens)
        self.refusals = refusals or RefusedExports()
        from tasktree.exporter.auth import HostGuard

        self.hosts = HostGuard(settings)  # while ingest is open: no web page's spans

    def export(self) -> Response:
        """The view: every refusal is a ``TasktreeError`` turned into one response here."""
        mimetype = request.mimetype
        as_json = _answers_json(mimetype)
        try:
            if not self.tokens.required:
                self.hosts.check(request.headers.get("Host"))
            self.tokens.check(request.headers.get("Authorization"))
            decode = _DECODERS.get(mimetype)
            if decode is None:
                raise UnsupportedMediaType(
                    f"Content-Type {request.content_type or '(none)'!r} is not supported: "
                    f"send {PROTOBUF} or {JSON}"
                )
            body = self.read_body()
            batch = decode(body, self.limits) if body else DecodedBatch()
            store(self.ingest, batch)
        except (Unauthorized, Forbidden) as exc:  # refused before the body is read
            self.refusals.unauthenticated("http", request.remote_addr or "unknown", exc)
            return error_response(exc, as_json)
        except TasktreeError as exc:
            self.refusals.invalid("http", exc)
            return error_response(exc, as_json)
        except Exception:
            logger.exception("OTLP/HTTP export failed unexpectedly")
            error = TasktreeError("internal error while storing spans; see the tasktree server log")
            return error_response(error, as_json)
        if as_json:
            return Response(orjson.dumps(export_response_json(batch)), 200, content_type=JSON)
        return Response(export_response(batch).SerializeToString(), 200, content_type=mimetype)

    def read_body(self) -> bytes:
        """The decompressed body; never holds more than ``max_body_bytes`` (+1) of either form."""
        encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity" and encoding not in _WBITS:
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or identity"
            )
        length = request.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge(self._too_large(f"{length} bytes"))
        raw = _read_at_most(request.stream, self.max_body + 1)
        if len(raw) > self.max_body:
            raise PayloadTooLarge(self._too_large(f"more than {self.max_body} bytes"))
        if encoding == "identity" or not raw:
            return raw
        return _inflate(raw, _WBITS[encoding], self.max_body, encoding)

    def _too_large(self, size: str) -> str:
        return (
            f"request body is {size}, over the limit of {self.max_body} bytes "
            "(TASKTREE_MAX_BODY_BYTES): send smaller batches"
        )


def _read_at_most(stream: IO[bytes], limit: int) -> bytes:
    """Up to ``limit`` bytes of ``stream`` (raw streams may return short reads: loop to EOF)."""
    parts = []
    size = 0
    while size < limit:
        part = stream.read(min(_READ_CHUNK, limit - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _inflate(data: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    """Decompress ``data`` without ever producing more than ``limit`` + 1 bytes (gzip bombs).

    Several concatenated gzip members are one valid gzip body (RFC 1952), so members are read
    until the input is used up.
    """
    parts = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise BadRequest(f"body is not valid {encoding} data: {exc}") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(
                f"request body decompresses to more than {limit} bytes "
                "(TASKTREE_MAX_BODY_BYTES): send smaller batches"
            )
        parts.append(part)
        # Output room was left, so all input was consumed: not at the end means cut short.
        if not inflater.eof:
            raise BadRequest(f"{encoding} body is truncated")
        data = inflater.unused_data
        if not data or wbits != _GZIP_WBITS:
            break
    if data:
        raise BadRequest(f"{len(data)} bytes of garbage after the {encoding} data")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def error_response(exc: TasktreeError, as_json: bool) -> Response:
    """``exc`` as an OTLP error answer: a ``google.rpc.Status`` body, JSON or protobuf."""
    code = rpc_code(exc.status)
    delay = retry_after(exc) if exc.status in (429, 503) else None
    headers = error_headers(exc, delay)
    if as_json:
        body = orjson.dumps({"code": code, "message": exc.message})
        return Response(body, exc.status, headers=headers, content_type=JSON)
    status = status_pb2.Status(code=code, message=exc.message)
    if exc.status == 400:
        detail = error_details_pb2.BadRequest()
        detail.field_violations.add(field="body", description=exc.message)
        status.details.append(_pack(detail))
    if delay is not None:
        detail = error_details_pb2.RetryInfo()
        detail.retry_delay.FromNanoseconds(int(delay * 1e9))
        status.details.append(_pack(detail))
    return Response(status.SerializeToString(), exc.status, headers=headers, content_type=PROTOBUF)


def _answers_json(mimetype: str) -> bool:
    """Errors are protobuf for protobuf requests, JSON for everything else (readable by people)."""
    return mimetype not in _PROTOBUF_TYPES


def _pack(message: Message) -> AnyPb:
    packed = AnyPb()
    packed.Pack(message)
    return packed


def _http_exception(exc: HTTPException) -> Response:
    """Routing errors (404, 405) in the same OTLP error format as everything else."""
    response = error_response(
        RoutingError(exc.description or exc.name, exc.code or 500), _answers_json(request.mimetype)
    )
    if exc.code == 405:
        response.headers["Allow"] = "POST"
    return response
