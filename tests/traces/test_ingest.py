"""POST /v1/traces: OTLP/HTTP from real SDK pipelines, in every encoding, and everything a
client can get wrong answered with the status the OTLP specification asks for."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from cockpit.audit import Actor
from cockpit.services import api_key_create, api_key_revoke
from tests.support import otel
from tests.traces.conftest import post
from traces import receiver
from traces.models import Span, Trace

pytestmark = pytest.mark.django_db


def response_of(response) -> ExportTraceServiceResponse:  # noqa: ANN001
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    return parsed


def status_of(response) -> status_pb2.Status:  # noqa: ANN001
    parsed = status_pb2.Status()
    parsed.ParseFromString(response.content)
    return parsed


def test_a_protobuf_export_is_stored_with_its_meaning(client, ingest_key, capture, team) -> None:
    otel.genai_refund_trace(capture)
    response = post(client, ingest_key, otel.protobuf(capture.spans))
    assert response.status_code == 200 and response["Content-Type"] == "application/x-protobuf"
    assert not response_of(response).HasField("partial_success")
    trace_id = otel.trace_id_of(capture.spans)
    spans = {s.name: s for s in Span.objects.filter(trace_id=trace_id)}
    assert len(Span.objects.filter(trace_id=trace_id)) == 4
    root, tool = spans["invoke_agent refund-helper"], spans["execute_tool payments.refund"]
    chat = Span.objects.filter(trace_id=trace_id, span_type="llm").order_by("start_time").first()
    assert (root.span_type, root.parent_span_id, root.agent_name, root.service_name) == (
        "agent",
        "",
        "refund-helper",
        "support-bot",
    )
    assert (chat.model, chat.provider, chat.input_tokens, chat.output_tokens, chat.parent_span_id) == (
        "gpt-4o",
        "openai",
        812,
        96,
        root.span_id,
    )
    assert (tool.span_type, tool.tool_name) == ("tool", "payments.refund")
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"])["amount"] == 80
    assert tool.duration_us == 550_000 and tool.team_id == team.pk
    summary = Trace.objects.get(trace_id=trace_id)
    assert (summary.root_name, summary.span_count, summary.llm_count, summary.tool_count) == (
        "invoke_agent refund-helper",
        4,
        2,
        1,
    )
    assert (summary.input_tokens, summary.output_tokens, summary.duration_us, summary.status) == (
        1624,
        192,
        5_200_000,
        "ok",
    )
    assert summary.model_list == ["gpt-4o"] and "payments.refund" in summary.search
    assert summary.cost == Decimal("0.005980")  # priced at ingest: 2 × (812 in + 96 out) on gpt-4o


@pytest.mark.parametrize("gzipped", [False, True])
def test_json_and_gzip_bodies_mean_the_same(client, ingest_key, capture, gzipped) -> None:
    otel.langgraph_trace(capture)
    response = post(client, ingest_key, otel.json_body(capture.spans), json=True, gzipped=gzipped)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    trace_id = otel.trace_id_of(capture.spans)  # hex ids in JSON are read as hex, not base64
    stored = {s.span_id for s in Span.objects.filter(trace_id=trace_id)}
    assert stored == {f"{s.context.span_id:016x}" for s in capture.spans}
    summary = Trace.objects.get(trace_id=trace_id)
    assert (summary.root_name, summary.span_count, summary.error_count, summary.status) == ("LangGraph", 6, 1, "ok")
    failed = Span.objects.get(trace_id=trace_id, status_code=2)
    assert (failed.tool_name, failed.error_type, failed.status_message) == (
        "get_weather",
        "RuntimeError",
        "TimeoutError: upstream",
    )
    assert failed.events[0]["name"] == "exception"


def test_gzip_protobuf(client, ingest_key, capture) -> None:
    otel.openinference_rag_trace(capture)
    assert post(client, ingest_key, otel.protobuf(capture.spans), gzipped=True).status_code == 200
    types = dict(Span.objects.values_list("name", "span_type"))
    assert types == {"query": "chain", "retrieve": "retrieval", "embedding": "embedding", "llm": "llm"}


def test_spans_with_bad_ids_are_rejected_and_the_rest_stored(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    request = otel.encode_spans(capture.spans)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].span_id = b"\x00" * 8
    spans[1].trace_id = b"short"
    response = post(client, ingest_key, request.SerializeToString())
    assert response.status_code == 200
    partial = response_of(response).partial_success
    assert partial.rejected_spans == 2
    assert "span_id must be 8 bytes" in partial.error_message and "trace_id must be 16 bytes" in partial.error_message
    assert Span.objects.count() == 2


def test_json_partial_success_is_json(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    document = json.loads(otel.json_body(capture.spans))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "not-hex"
    response = post(client, ingest_key, json.dumps(document).encode(), json=True)
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert Span.objects.count() == 3


def test_a_redelivered_export_is_stored_once(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    body = otel.protobuf(capture.spans)
    assert post(client, ingest_key, body).status_code == 200
    assert post(client, ingest_key, body).status_code == 200
    assert Span.objects.count() == 4
    assert Trace.objects.get().span_count == 4  # the summary did not count them twice


def test_a_trace_arriving_in_pieces_is_summarised_whole(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    children, root = capture.spans[:-1], capture.spans[-1:]
    post(client, ingest_key, otel.protobuf(children))
    summary = Trace.objects.get()
    assert (summary.root_name, summary.span_count, summary.status) == ("", 3, "open")
    assert summary.title.startswith("trace ") and "root span not received" in summary.title
    post(client, ingest_key, otel.protobuf(root))
    summary.refresh_from_db()
    assert (summary.root_name, summary.span_count, summary.duration_us, summary.status) == (
        "invoke_agent refund-helper",
        4,
        5_200_000,
        "ok",
    )


def test_long_values_are_cut_visibly_not_rejected(client, ingest_key, capture, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "OTLP_MAX_VALUE_CHARS": 100}
    with capture.span("chat big", 0, 10, {"gen_ai.input.messages": "x" * 5000, "nul": "a\x00b"}):
        pass
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200
    span = Span.objects.get()
    assert span.truncated
    assert span.attributes["gen_ai.input.messages"] == "x" * 100 + "…[cut: 4900 more characters]"
    assert span.attributes["nul"] == "a\ufffdb"


# --- What clients get wrong -------------------------------------------------------------------


def test_no_key_invalid_key_wrong_scope_revoked(client, ingest_key, capture, team) -> None:
    otel.genai_refund_trace(capture)
    body = otel.protobuf(capture.spans)
    assert post(client, None, body).status_code == 401
    assert post(client, "ck_nonsense_key_000", body).status_code == 401
    read_only = api_key_create(actor=Actor.system("t"), team=team, name="r", scopes=["read"])
    response = post(client, read_only[1], body)
    assert response.status_code == 403 and "ingest" in status_of(response).message
    api_key_revoke(actor=Actor.system("t"), api_key=read_only[0])
    assert "revoked" in status_of(post(client, read_only[1], body)).message
    assert Span.objects.count() == 0


def test_the_x_api_key_header_works_for_exporters(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    assert post(client, ingest_key, otel.protobuf(capture.spans), header="x-api-key").status_code == 200
    assert Span.objects.count() == 4


def test_spans_belong_to_the_team_of_the_key(client, ingest_key, capture, team, other_team) -> None:
    otel.genai_refund_trace(capture)
    body = otel.protobuf(capture.spans)
    theirs = api_key_create(actor=Actor.system("t"), team=other_team, name="o", scopes=["ingest"])[1]
    post(client, ingest_key, body)
    post(client, theirs, body)  # the same ids from another team are another team's trace
    assert sorted(Trace.objects.values_list("team_id", "span_count")) == sorted([(team.pk, 4), (other_team.pk, 4)])


def test_undecodable_bodies_are_400_and_store_nothing(client, ingest_key) -> None:
    for body, as_json in (
        (b"\xff\xfe garbage", False),
        (b"{not json", True),
        (b"[1, 2]", True),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', True),
        (b'{"resourceSpans": "all of them"}', True),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\xed\xa0\x80"}]}]}]}', True),  # not UTF-8
    ):
        response = post(client, ingest_key, body, json=as_json)
        assert response.status_code == 400, body
        assert response["Content-Type"] == ("application/json" if as_json else "application/x-protobuf")
    assert status_of(post(client, ingest_key, b"\xff\xfe garbage")).code == 3  # INVALID_ARGUMENT
    response = post(client, ingest_key, b"not gzip", gzipped=False, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400
    assert Span.objects.count() == Trace.objects.count() == 0


def test_other_encodings_and_media_types_are_415(client, ingest_key, capture) -> None:
    otel.genai_refund_trace(capture)
    body = otel.protobuf(capture.spans)
    assert post(client, ingest_key, body, content_type="text/plain").status_code == 415
    assert post(client, ingest_key, body, HTTP_CONTENT_ENCODING="br").status_code == 415
    assert client.get("/v1/traces").status_code == 405


def test_bodies_over_the_limits_are_413_before_and_after_gunzip(client, ingest_key, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "OTLP_MAX_BODY_BYTES": 2048, "OTLP_MAX_INFLATED_BYTES": 4096}
    assert post(client, ingest_key, b"\x00" * 4000).status_code == 413
    bomb = gzip.compress(b"\x00" * 10_000_000)  # 10 MB of zeros in about 10 KB
    settings.COCKPIT = {**settings.COCKPIT, "OTLP_MAX_BODY_BYTES": 64 * 1024}
    response = post(client, ingest_key, bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413 and "inflates" in status_of(response).message
    assert Span.objects.count() == 0


def test_overload_is_503_with_retry_after(client, ingest_key, capture, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "OTLP_QUEUE_SECONDS": 0}
    otel.genai_refund_trace(capture)
    held = 0
    while receiver._slots.acquire(blocking=False):
        held += 1
    try:
        response = post(client, ingest_key, otel.protobuf(capture.spans))
    finally:
        for _ in range(held):
            receiver._slots.release()
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert Span.objects.count() == 0
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200


def test_a_run_still_going_is_titled_by_its_run() -> None:
    from django.utils import timezone

    moment = timezone.now()
    going = Trace(trace_id="ab" * 16, run_id=42, started_at=moment, ended_at=moment)
    assert going.title == "run #42 (in progress)"
    going.root_name = "invoke_agent Refund desk"
    assert going.title == "invoke_agent Refund desk"


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800", "x\udfffy"], ids=["nul", "high-surrogate", "low-surrogate"])
@pytest.mark.parametrize("where", ["value", "key", "name"])
def test_unstorable_characters_are_replaced_and_counted(client, ingest_key, capture, bad, where) -> None:
    """NUL and lone surrogates are not refused (an exporter cannot fix them): they are stored as
    U+FFFD, and the answer says how many spans had one."""
    otel.genai_refund_trace(capture)
    document = json.loads(otel.json_body(capture.spans))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    if where == "name":
        span["name"] = bad
    elif where == "key":
        span["attributes"].append({"key": f"odd.{bad}", "value": {"stringValue": "v"}})
    else:
        span["attributes"].append({"key": "odd.value", "value": {"stringValue": bad}})
    response = post(client, ingest_key, json.dumps(document).encode(), json=True)
    assert response.status_code == 200, response.content
    partial = response.json()["partialSuccess"]
    assert partial.get("rejectedSpans", "0") == "0"
    assert "1 span(s): a NUL character or lone surrogate was replaced" in partial["errorMessage"]
    assert Span.objects.count() == 4
    stored = Span.objects.get(span_id=span["spanId"].lower())
    text = stored.name if where == "name" else json.dumps(stored.attributes)
    assert "\ufffd" in text or "\\ufffd" in text


@pytest.mark.parametrize("ref", ["²", "٣", "9" * 30])
def test_run_references_that_are_not_ids_are_ignored(client, ingest_key, capture, ref) -> None:
    otel.genai_refund_trace(capture)
    document = json.loads(otel.json_body(capture.spans))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] += [
        {"key": "cockpit.run_id", "value": {"stringValue": ref}},
        {"key": "gen_ai.conversation.id", "value": {"stringValue": ref}},
    ]
    response = post(client, ingest_key, json.dumps(document).encode(), json=True)
    assert response.status_code == 200, response.content
    assert Span.objects.count() == 4 and not Span.objects.filter(run__isnull=False).exists()
