"""OTLP/HTTP for traces, the wire side: bodies in (protobuf or JSON, plain or gzip, size-limited
before and after decompression) and responses out (``ExportTraceServiceResponse`` with its
partial-success counts, or a ``google.rpc.Status`` for errors), each in the request's encoding.

Decoding is opentelemetry-proto's generated code. OTLP/JSON differs from protobuf's canonical
JSON mapping in one way that matters: trace and span ids are hex, not base64, so they are
converted before ``json_format`` parses the body (otherwise ids silently come out wrong).
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# google.rpc.Code
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7
UNAVAILABLE = 14


@dataclass
class OtlpError(Exception):
    """A request the endpoint answers with an error status (never a 500)."""

    status: int
    message: str
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.message


def media_type(content_type: str) -> str:
    """``application/x-protobuf`` or ``application/json``; anything else is a 415."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if base == JSON:
        return JSON
    raise OtlpError(415, f"Unsupported Content-Type {base or '(none)'!r}: send {PROTOBUF} or {JSON}.")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body, gunzipped if ``encoding`` says so, refusing to inflate past ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise OtlpError(415, f"Unsupported Content-Encoding {encoding!r}: send gzip or none.")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"The body is not valid gzip: {exc}.") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise OtlpError(413, f"The body inflates to more than {limit:,} bytes.")
    if not inflater.eof:
        raise OtlpError(400, "The gzip stream is truncated.")
    return data


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(span: dict[str, Any]) -> None:
    for field in _ID_FIELDS:
        value = span.get(field)
        if isinstance(value, str) and value:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b"!"  # not hex: the span is rejected as having an invalid id
            span[field] = base64.b64encode(raw).decode()


def parse(data: bytes, kind: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise OtlpError(400, f"The body is not an OTLP ExportTraceServiceRequest: {exc}.") from exc
        return request
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise OtlpError(400, f"The body is not JSON: {exc}.") from exc
    if not isinstance(document, dict):
        raise OtlpError(400, "The body must be a JSON object with resourceSpans.")
    if _SURROGATE_ESCAPE.search(data):
        document = _without_lone_surrogates(document)
    try:
        for resource_spans in document.get("resourceSpans") or document.get("resource_spans") or []:
            for scope_spans in resource_spans.get("scopeSpans") or resource_spans.get("scope_spans") or []:
                for span in scope_spans.get("spans") or []:
                    _hex_ids_to_base64(span)
                    for link in span.get("links") or []:
                        _hex_ids_to_base64(link)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, AttributeError, TypeError, ValueError, RecursionError) as exc:
        raise OtlpError(400, f"The body is not an OTLP ExportTraceServiceRequest: {exc}.") from exc
    return request


# A lone surrogate can only arrive as a JSON escape (raw UTF-8 cannot encode one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _without_lone_surrogates(value: Any) -> Any:
    """A JSON string may hold a lone surrogate (``"\\ud800"``), which protobuf strings cannot.
    It becomes a NUL character here, which normalisation then replaces with U+FFFD and counts,
    like a NUL sent as such: the span is stored, not refused."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode()
        except UnicodeEncodeError:
            return "".join("\x00" if "\ud800" <= c <= "\udfff" else c for c in value)
        return value
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


def success(kind: str, rejected: int = 0, message: str = "") -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if kind == JSON:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


_CODES = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    413: INVALID_ARGUMENT,
    415: INVALID_ARGUMENT,
    429: RESOURCE_EXHAUSTED,
    503: UNAVAILABLE,
}


def failure(kind: str, status: int, message: str) -> bytes:
    body = status_pb2.Status(code=_CODES.get(status, INVALID_ARGUMENT), message=message)
    if kind == JSON:
        return json_format.MessageToJson(body, indent=None).encode()
    return body.SerializeToString()
