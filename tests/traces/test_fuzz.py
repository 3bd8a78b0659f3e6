"""Whatever a client sends, the endpoint answers with a 2xx or 4xx (never a 500), and a request
is stored whole or not at all: every span is either stored, a re-delivery, or counted as
rejected in the response."""

from __future__ import annotations

import gzip
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support import otel
from tests.traces.conftest import post
from traces.models import Span, Trace

pytestmark = pytest.mark.django_db
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _valid_body() -> bytes:
    capture = otel.Capture()
    otel.genai_refund_trace(capture)
    otel.langgraph_trace(capture)
    return otel.protobuf(capture.spans)


VALID = _valid_body()


def _spans_in(body: bytes) -> int | None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # noqa: BLE001
        return None
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def check(client, key, body: bytes, **options) -> None:  # noqa: ANN001
    before = Span.objects.count(), Trace.objects.count()
    response = post(client, key, body, **options)
    assert response.status_code in (200, 400, 413, 415), response.status_code
    after = Span.objects.count(), Trace.objects.count()
    if response.status_code != 200:
        assert after == before, "a refused request stored something"
        return
    if options.get("json"):
        return
    total = _spans_in(body)
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    stored = after[0] - before[0]
    assert stored + parsed.partial_success.rejected_spans <= (total or 0)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(client, ingest_key, body) -> None:
    check(client, ingest_key, body)


@FUZZ
@given(st.data())
def test_a_valid_body_mutated(client, ingest_key, data) -> None:
    body = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(body)))
    check(client, ingest_key, bytes(body[:cut]), gzipped=data.draw(st.booleans()))


@FUZZ
@given(st.binary(max_size=300))
def test_random_gzip_bodies(client, ingest_key, body) -> None:
    check(client, ingest_key, body, HTTP_CONTENT_ENCODING="gzip")


ids = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=0, max_size=40), st.integers(), st.none(), st.text(max_size=5)
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
attribute = st.fixed_dictionaries(
    {
        "key": st.text(max_size=20),
        "value": st.one_of(
            st.fixed_dictionaries({"stringValue": st.text(max_size=50)}),
            st.fixed_dictionaries({"intValue": st.one_of(st.integers(), st.text(max_size=5))}),
            st.fixed_dictionaries({"doubleValue": st.floats()}),
            st.fixed_dictionaries({"boolValue": st.booleans()}),
            st.fixed_dictionaries(
                {
                    "arrayValue": st.fixed_dictionaries(
                        {"values": st.lists(st.fixed_dictionaries({"stringValue": st.text(max_size=5)}), max_size=3)}
                    )
                }
            ),
            json_values,
        ),
    }
)
span = st.fixed_dictionaries(
    {
        "traceId": ids,
        "spanId": ids,
        "parentSpanId": ids,
        "name": st.one_of(st.text(max_size=40), st.integers()),
        "kind": st.one_of(st.integers(-2, 9), st.sampled_from(["SPAN_KIND_SERVER", "nonsense"])),
        "startTimeUnixNano": st.one_of(st.integers(-1, 2**64 + 5), st.text(string.digits, max_size=22)),
        "endTimeUnixNano": st.one_of(st.integers(-1, 2**64 + 5), st.text(string.digits, max_size=22)),
        "attributes": st.lists(attribute, max_size=4),
        "status": st.one_of(
            st.fixed_dictionaries({"code": st.integers(-1, 5), "message": st.text(max_size=10)}), json_values
        ),
    }
)


@FUZZ
@given(st.lists(span, max_size=5), st.one_of(st.none(), json_values))
def test_random_json_documents(client, ingest_key, spans, noise) -> None:
    document = {
        "resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"scope": {"name": "x"}, "spans": spans}]}]
    }
    if noise is not None:
        document["resourceSpans"][0]["noise"] = noise
    check(client, ingest_key, json.dumps(document, allow_nan=True).encode(), json=True)


def _any_value(draw, depth: int = 0) -> AnyValue:  # noqa: ANN001
    kind = draw(st.sampled_from(["s", "i", "d", "b", "bytes", "array", "kv"] if depth < 12 else ["s", "i"]))
    if kind == "s":
        return AnyValue(string_value=draw(st.text(max_size=80)))
    if kind == "i":
        return AnyValue(int_value=draw(st.integers(-(2**63), 2**63 - 1)))
    if kind == "d":
        return AnyValue(double_value=draw(st.floats()))
    if kind == "b":
        return AnyValue(bool_value=draw(st.booleans()))
    if kind == "bytes":
        return AnyValue(bytes_value=draw(st.binary(max_size=20)))
    value = AnyValue()
    if kind == "array":
        value.array_value.values.extend(_any_value(draw, depth + 1) for _ in range(draw(st.integers(0, 3))))
    else:
        value.kvlist_value.values.extend(
            KeyValue(key=draw(st.text(max_size=10)), value=_any_value(draw, depth + 1))
            for _ in range(draw(st.integers(0, 3)))
        )
    return value


@FUZZ
@given(st.data())
def test_well_formed_requests_with_hostile_values_are_stored_exactly(client, ingest_key, data) -> None:
    """Structurally valid requests whose values are anything protobuf allows: NUL characters,
    deep nesting, huge numbers, NaN, odd timestamps. Each span is stored or rejected — all of
    them accounted for, none half-stored."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value=data.draw(st.text())))
    scope = resource_spans.scope_spans.add()
    count = data.draw(st.integers(1, 6))
    for n in range(count):
        span = scope.spans.add()
        span.trace_id = data.draw(st.sampled_from([b"\x01" * 16, b"\x00" * 16, b"\x02" * 15, bytes(range(16))]))
        span.span_id = data.draw(st.binary(min_size=7, max_size=9)) if data.draw(st.booleans()) else bytes([n + 1]) * 8
        span.parent_span_id = data.draw(st.sampled_from([b"", b"\x09" * 8, b"\x01"]))
        span.name = data.draw(st.text(max_size=400))
        span.kind = data.draw(st.integers(0, 5))
        span.start_time_unix_nano = data.draw(st.integers(0, 2**64 - 1))
        span.end_time_unix_nano = data.draw(st.integers(0, 2**64 - 1))
        span.status.code = data.draw(st.integers(0, 2))
        span.status.message = data.draw(st.text(max_size=30))
        for _ in range(data.draw(st.integers(0, 4))):
            span.attributes.add(key=data.draw(st.text(max_size=30)), value=_any_value(data.draw))
        for _ in range(data.draw(st.integers(0, 2))):
            event = span.events.add(
                name=data.draw(st.text(max_size=20)), time_unix_nano=data.draw(st.integers(0, 2**64 - 1))
            )
            event.attributes.add(key="exception.type", value=_any_value(data.draw))
    body = request.SerializeToString()
    existing = set(Span.objects.values_list("trace_id", "span_id"))
    keys = [(bytes(s.trace_id).hex(), bytes(s.span_id).hex()) for s in scope.spans]
    redundant = sum(1 for i, key in enumerate(keys) if key in existing or key in keys[:i])
    response = post(client, ingest_key, body, gzipped=data.draw(st.booleans()))
    assert response.status_code == 200, response.content
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    stored = Span.objects.count() - len(existing)
    assert 0 <= count - stored - parsed.partial_success.rejected_spans <= redundant


def test_gzip_of_a_valid_body_is_fine(client, ingest_key) -> None:
    response = post(client, ingest_key, gzip.compress(VALID), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert Span.objects.count() == _spans_in(VALID)
