"""A stored trace as OTLP JSON: an ``ExportTraceServiceRequest`` in the protobuf JSON mapping,
the way OTLP/HTTP carries it (so it can be posted to any collector, or back to ``/v1/traces``).

The message is built with opentelemetry-proto's classes and written by ``json_format``; OTLP/JSON
differs from protobuf's canonical mapping in two ways, both applied here: trace and span ids are
hex (not base64), and enums are integers. Timestamps are unix nanoseconds as strings (int64 in
the JSON mapping). Spans sharing a resource and an instrumentation scope are grouped the way
exporters group them: ``resourceSpans`` → ``scopeSpans`` → ``spans``.

What is exported is what was stored: attribute values cut to the size limits stay cut, and
times have the store's microsecond precision.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from traces.models import Span, Trace

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64 = 2**63
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _nanos(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def _set_value(target: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if -INT64 <= value < INT64:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, (list, tuple)):
        array = target.array_value
        array.SetInParent()  # an empty list stays a list
        for item in value:
            _set_value(array.values.add(), item)
    elif isinstance(value, dict):
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        _set_attributes(kvlist.values, value)
    elif value is not None:
        target.string_value = str(value)


def _set_attributes(target: Any, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        pair: KeyValue = target.add()
        pair.key = key
        _set_value(pair.value, value)


def _span_message(target: trace_pb2.Span, span: Span) -> None:
    target.trace_id = bytes.fromhex(span.trace_id)
    target.span_id = bytes.fromhex(span.span_id)
    if span.parent_span_id:
        target.parent_span_id = bytes.fromhex(span.parent_span_id)
    target.name = span.name
    target.kind = span.kind  # type: ignore[assignment]
    start = _nanos(span.start_time)
    target.start_time_unix_nano = start
    target.end_time_unix_nano = _nanos(span.end_time)
    _set_attributes(target.attributes, span.attributes or {})
    for event in span.events or []:
        if not isinstance(event, dict):
            continue
        message = target.events.add()
        message.name = str(event.get("name") or "")
        moment = event.get("time")
        message.time_unix_nano = moment if isinstance(moment, int) and moment > 0 else start
        _set_attributes(message.attributes, event.get("attributes") or {})
    for link in span.links or []:
        if not isinstance(link, dict):
            continue
        try:
            trace_id, span_id = bytes.fromhex(link.get("trace_id", "")), bytes.fromhex(link.get("span_id", ""))
        except ValueError:
            continue
        message = target.links.add()
        message.trace_id, message.span_id = trace_id, span_id
        _set_attributes(message.attributes, link.get("attributes") or {})
    target.status.code = span.status_code  # type: ignore[assignment]
    if span.status_message:
        target.status.message = span.status_message


def otlp_request(spans: Iterable[Span]) -> ExportTraceServiceRequest:
    """The spans as one export request, grouped by resource and instrumentation scope."""
    request = ExportTraceServiceRequest()
    resources: dict[str, trace_pb2.ResourceSpans] = {}
    scopes: dict[tuple[str, str], trace_pb2.ScopeSpans] = {}
    for span in spans:
        resource_key = json.dumps(span.resource or {}, sort_keys=True, default=str)
        resource_spans = resources.get(resource_key)
        if resource_spans is None:
            resource_spans = resources[resource_key] = request.resource_spans.add()
            _set_attributes(resource_spans.resource.attributes, span.resource or {})
        scope_spans = scopes.get((resource_key, span.scope_name))
        if scope_spans is None:
            scope_spans = scopes[(resource_key, span.scope_name)] = resource_spans.scope_spans.add()
            scope_spans.scope.name = span.scope_name
        _span_message(scope_spans.spans.add(), span)
    return request


def _hex_ids(document: dict[str, Any]) -> None:
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for item in (span, *span.get("links", [])):
                    for field in ID_FIELDS:
                        if item.get(field):
                            item[field] = base64.b64decode(item[field]).hex()


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON: the protobuf JSON mapping with hex ids and integer enums."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    _hex_ids(document)
    return document


def trace_spans(trace: Trace) -> Iterable[Span]:
    return (
        Span.objects.filter(team_id=trace.team_id, trace_id=trace.trace_id)
        .order_by("start_time", "id")
        .iterator(chunk_size=2000)
    )


def trace_as_otlp_json(trace: Trace) -> bytes:
    """The whole trace, ready to download: ``trace-<trace id>.json``."""
    return json.dumps(otlp_json(otlp_request(trace_spans(trace))), ensure_ascii=False).encode()


def filename(trace: Trace) -> str:
    return f"trace-{trace.trace_id}.json"
