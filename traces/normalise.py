"""From a decoded OTLP request to span rows: ids checked, timestamps converted, attributes made
plain JSON within the size limits (cut visibly, never rejected), and the typed columns read
with ``traces.semconv``.

A span that cannot be stored as sent (an id of the wrong length or all zeros, no start time) is
rejected on its own; the rest of the request is stored and the response says how many were
rejected and why (OTLP partial success).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from traces import semconv

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_NANOS = 4102444800 * 10**9  # 2100-01-01
MAX_ATTRIBUTES = 256
MAX_EVENTS = 128
MAX_LINKS = 64
MAX_ARRAY = 256
MAX_DEPTH = 8
NAME_CHARS = 300
TRUNCATED = "…[cut: {} more characters]"
REPLACED = "a NUL character or lone surrogate was replaced with U+FFFD"
RESOURCE_MEANING_PREFIXES = ("gen_ai.", "agent.", "session.")


@dataclass
class Limits:
    value_chars: int = 16 * 1024


@dataclass
class Batch:
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def reject(self, problem: str) -> None:
        self.rejected += 1
        self.note(problem)

    def note(self, problem: str) -> None:
        """Something changed in a span that is stored all the same (it is not rejected)."""
        self.problems[problem] = self.problems.get(problem, 0) + 1

    @property
    def message(self) -> str:
        return "; ".join(f"{count} span(s): {problem}" for problem, count in self.problems.items())


class _Cutter:
    """Converts OTLP values to JSON-ready Python, cutting what exceeds the limits."""

    __slots__ = ("chars", "cut", "replaced")

    def __init__(self, limits: Limits) -> None:
        self.chars = limits.value_chars
        self.cut = False
        self.replaced = False

    def text(self, value: str, limit: int | None = None) -> str:
        limit = limit or self.chars
        if "\x00" in value:  # PostgreSQL text and jsonb cannot hold NUL (nor lone surrogates: see otlp)
            value = value.replace("\x00", "\ufffd")
            self.replaced = True
        if len(value) > limit:
            self.cut = True
            return value[:limit] + TRUNCATED.format(len(value) - limit)
        return value

    def value(self, any_value: AnyValue, depth: int = 0) -> Any:
        kind = any_value.WhichOneof("value")
        if kind == "string_value":
            return self.text(any_value.string_value)
        if kind == "int_value" or kind == "bool_value":
            return getattr(any_value, kind)
        if kind == "double_value":
            number = any_value.double_value
            return number if number == number and abs(number) != float("inf") else str(number)
        if depth >= MAX_DEPTH and kind in ("array_value", "kvlist_value"):
            self.cut = True
            return "…[cut: nested too deep]"
        if kind == "array_value":
            values = any_value.array_value.values
            items = [self.value(v, depth + 1) for v in values[:MAX_ARRAY]]
            if len(values) > MAX_ARRAY:
                self.cut = True
                items.append(f"…[cut: {len(values) - MAX_ARRAY} more items]")
            return items
        if kind == "kvlist_value":
            return self.attributes(any_value.kvlist_value.values, depth + 1)
        if kind == "bytes_value":
            return self.text(base64.b64encode(any_value.bytes_value).decode())
        return None

    def attributes(self, pairs: Any, depth: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        chars = self.chars
        for pair in pairs[:MAX_ATTRIBUTES] if len(pairs) > MAX_ATTRIBUTES else pairs:
            key: str = pair.key
            if len(key) > 200 or "\x00" in key:
                key = self.text(key, 200)
            any_value = pair.value
            text: str = any_value.string_value
            if text:  # most values (a set string is the value of the oneof): self.value, inlined
                out[key] = self.text(text) if len(text) > chars or "\x00" in text else text
            else:
                out[key] = self.value(any_value, depth)
        if len(pairs) > MAX_ATTRIBUTES:
            self.cut = True
            out["cockpit.dropped_attributes"] = len(pairs) - MAX_ATTRIBUTES
        return out


def _hex(raw: bytes, length: int) -> str | None:
    if len(raw) != length or not any(raw):
        return None
    return raw.hex()


def _moment(nanos: int) -> datetime:
    # Exact to the microsecond up to MAX_NANOS (a float's error there is under 0.25 µs).
    return datetime.fromtimestamp(nanos // 1000 / 1e6, UTC)


def rows_from(request: ExportTraceServiceRequest, *, limits: Limits, received_at: datetime) -> Batch:
    batch = Batch()
    for resource_spans in request.resource_spans:
        resource_cutter = _Cutter(limits)
        resource = resource_cutter.attributes(resource_spans.resource.attributes)
        service_name = str(resource.get("service.name", ""))[:200]
        resource_meaning = {k: v for k, v in resource.items() if k.startswith(RESOURCE_MEANING_PREFIXES)}
        for scope_spans in resource_spans.scope_spans:
            scope_name = resource_cutter.text(scope_spans.scope.name[:200], 200)
            for span in scope_spans.spans:
                row = _row(span, limits, resource, resource_meaning, service_name, scope_name, batch)
                if row is not None:
                    if row.pop("replaced") or resource_cutter.replaced:
                        batch.note(REPLACED)
                    row["received_at"] = received_at
                    row["truncated"] = row["truncated"] or resource_cutter.cut
                    batch.rows.append(row)
    return batch


def _row(
    span: Any,
    limits: Limits,
    resource: dict[str, Any],
    resource_meaning: dict[str, Any],
    service_name: str,
    scope_name: str,
    batch: Batch,
) -> dict[str, Any] | None:
    trace_id = _hex(span.trace_id, 16)
    if trace_id is None:
        batch.reject("trace_id must be 16 bytes, not all zero")
        return None
    span_id = _hex(span.span_id, 8)
    if span_id is None:
        batch.reject("span_id must be 8 bytes, not all zero")
        return None
    parent_span_id = ""
    if span.parent_span_id:
        parent = _hex(span.parent_span_id, 8)
        if parent is None:
            batch.reject("parent_span_id must be empty or 8 bytes")
            return None
        parent_span_id = parent
    start = span.start_time_unix_nano
    if not 0 < start < MAX_NANOS:
        batch.reject("start_time_unix_nano is missing or out of range")
        return None
    end = span.end_time_unix_nano
    if end < start or end >= MAX_NANOS:
        end = start
    cutter = _Cutter(limits)
    attributes = cutter.attributes(span.attributes)
    events: list[dict[str, Any]] = []
    exception_type = ""
    for n, event in enumerate(span.events if len(span.events) else ()):
        if n == MAX_EVENTS:
            cutter.cut = True
            events.append(
                {"name": f"…[cut: {len(span.events) - MAX_EVENTS} more events]", "time": None, "attributes": {}}
            )
            break
        event_attributes = cutter.attributes(event.attributes)
        if event.name == "exception" and not exception_type:
            exception_type = str(event_attributes.get("exception.type", ""))
        events.append(
            {
                "name": cutter.text(event.name, NAME_CHARS),
                "time": event.time_unix_nano if 0 < event.time_unix_nano < MAX_NANOS else start,
                "attributes": event_attributes,
            }
        )
    links = [
        {
            "trace_id": link.trace_id.hex(),
            "span_id": link.span_id.hex(),
            "attributes": cutter.attributes(link.attributes),
        }
        for link in (span.links[:MAX_LINKS] if len(span.links) else ())
    ]
    name = cutter.text(span.name, NAME_CHARS) if span.name else "(unnamed)"
    meaning = semconv.read(
        {**resource_meaning, **attributes} if resource_meaning else attributes, name, exception_type
    )
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "name": name,
        "kind": span.kind if 0 <= span.kind <= 5 else 0,
        "span_type": meaning.span_type,
        "start_time": _moment(start),
        "end_time": _moment(end),
        "duration_us": (end - start) // 1000,
        "status_code": span.status.code if span.status.code in (0, 1, 2) else 0,
        "status_message": cutter.text(span.status.message, 2000) if span.status.message else "",
        # The typed columns are read within their limits, from attributes kept whole.
        "error_type": meaning.error_type,
        "service_name": service_name,
        "scope_name": scope_name,
        "agent_key": meaning.agent_key,
        "agent_name": meaning.agent_name,
        "agent_version": meaning.agent_version,
        "conversation_id": meaning.conversation_id,
        "model": meaning.model,
        "provider": meaning.provider,
        "input_tokens": meaning.input_tokens,
        "output_tokens": meaning.output_tokens,
        "cache_read_tokens": meaning.cache_read_tokens,
        "cache_write_tokens": meaning.cache_write_tokens,
        "reasoning_tokens": meaning.reasoning_tokens,
        "input_audio_tokens": meaning.input_audio_tokens,
        "output_audio_tokens": meaning.output_audio_tokens,
        "tool_name": meaning.tool_name,
        "attributes": attributes,
        "events": events,
        "links": links,
        "resource": resource,
        "truncated": cutter.cut,
        "replaced": cutter.replaced,  # popped by rows_from
    }
