"""Exporting a trace as OTLP JSON: the protobuf JSON mapping with hex ids, nanosecond strings and
typed attribute values, downloadable, and faithful enough that posting it back to /v1/traces
reproduces the same spans."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, set_span_in_context

from cockpit.audit import Actor
from cockpit.roles import Role
from cockpit.services import api_key_create
from tests.support import otel
from tests.support.matrix import matrix
from tests.traces import stories
from tests.traces.conftest import post
from traces.models import Span, Trace

pytestmark = pytest.mark.django_db
COMPARED = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "span_type",
    "start_time",
    "end_time",
    "duration_us",
    "status_code",
    "status_message",
    "error_type",
    "service_name",
    "scope_name",
    "agent_key",
    "agent_name",
    "agent_version",
    "conversation_id",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "tool_name",
    "attributes",
    "events",
    "links",
    "resource",
    "truncated",
)


def spans_of(team_id: int, trace_id: str) -> dict[str, dict]:
    rows = Span.objects.filter(team_id=team_id, trace_id=trace_id).values(*COMPARED)
    return {row["span_id"]: row for row in rows}


def varied_trace(client, key: str) -> Trace:  # noqa: ANN001
    """A LangGraph trace (an exception event, an error status) plus a span carrying a link, array
    and boolean attributes, a float and a client kind."""
    capture = otel.Capture(service="weather-graph")
    otel.langgraph_trace(capture)
    first, root = capture.spans[0], capture.spans[-1]
    extra = capture.tracer.start_span(
        "score",
        context=set_span_in_context(NonRecordingSpan(root.context)),
        kind=SpanKind.CLIENT,
        links=[Link(first.context, {"link.reason": "same question"})],
        attributes={"tags": ["a", "b"], "flags": [True, False], "cached": True, "score": 0.25, "n": 3},
        start_time=otel.T0 + 5 * 10**6,
    )
    extra.add_event("scored", {"score.value": 0.25}, timestamp=otel.T0 + 6 * 10**6)
    extra.end(end_time=otel.T0 + 7 * 10**6)
    assert post(client, key, otel.protobuf(capture.spans)).status_code == 200
    return Trace.objects.get(trace_id=otel.trace_id_of(capture.spans))


def test_the_export_is_an_otlp_json_download(client, admin_user, ingest_key) -> None:
    trace = varied_trace(client, ingest_key)
    client.force_login(admin_user)
    response = client.get(reverse("trace-export", args=[trace.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="trace-{trace.trace_id}.json"'
    document = json.loads(response.content)
    (resource_spans,) = document["resourceSpans"]
    attributes = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert attributes["service.name"] == {"stringValue": "weather-graph"}
    (scope_spans,) = resource_spans["scopeSpans"]
    assert scope_spans["scope"]["name"] == "tests.support.otel"
    spans = scope_spans["spans"]
    assert len(spans) == trace.span_count == 7
    for span in spans:
        assert re.fullmatch(r"[0-9a-f]{32}", span["traceId"]) and span["traceId"] == trace.trace_id
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
        assert isinstance(span["startTimeUnixNano"], str) and span["startTimeUnixNano"].isdigit()
    llm = next(s for s in spans if s["name"] == "ChatAnthropic")
    values = {a["key"]: a["value"] for a in llm["attributes"]}
    assert values["llm.token_count.prompt"] == {"intValue": "1500"}
    assert values["openinference.span.kind"] == {"stringValue": "LLM"}
    assert llm["startTimeUnixNano"] == str(otel.T0 + 10 * 10**6)
    failed = next(s for s in spans if s["name"] == "get_weather" and s.get("status"))
    assert failed["status"] == {"code": 2, "message": "TimeoutError: upstream"}  # enums as integers
    assert failed["events"][0]["name"] == "exception"


def test_posting_the_export_to_another_team_reproduces_the_same_spans(
    client, admin_user, ingest_key, other_team
) -> None:
    trace = varied_trace(client, ingest_key)
    client.force_login(admin_user)
    exported = client.get(reverse("trace-export", args=[trace.pk])).content
    other_key = api_key_create(actor=Actor.system("tests"), team=other_team, name="otel", scopes=["ingest"])[1]
    response = post(client, other_key, exported, json=True)
    assert response.status_code == 200 and json.loads(response.content) == {}  # nothing rejected
    original = spans_of(trace.team_id, trace.trace_id)
    copy = spans_of(other_team.pk, trace.trace_id)
    assert copy.keys() == original.keys()
    for span_id, row in original.items():
        assert copy[span_id] == row, span_id
    scored = copy[next(k for k, v in copy.items() if v["name"] == "score")]
    assert scored["attributes"] == {"tags": ["a", "b"], "flags": [True, False], "cached": True, "score": 0.25, "n": 3}
    assert scored["links"][0]["attributes"] == {"link.reason": "same question"}
    again = Trace.objects.get(team=other_team, trace_id=trace.trace_id)
    assert (again.span_count, again.error_count, again.root_name) == (trace.span_count, trace.error_count, "LangGraph")


def test_a_managed_run_exports_and_comes_back_the_same(client, team, other_team, admin_user) -> None:
    story = stories.managed_refund(team)
    client.force_login(admin_user)
    exported = client.get(reverse("trace-export", args=[story.trace.pk])).content
    other_key = api_key_create(actor=Actor.system("tests"), team=other_team, name="otel", scopes=["ingest"])[1]
    assert post(client, other_key, exported, json=True).status_code == 200
    original = spans_of(team.pk, story.trace.trace_id)
    assert len(original) == 8  # the root, seven steps
    assert spans_of(other_team.pk, story.trace.trace_id) == original


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_any_viewer_of_the_team_may_export_and_no_one_else(case, client, team, other_team, ingest_key) -> None:
    trace = varied_trace(client, ingest_key)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(reverse("trace-export", args=[trace.pk]))
    assert response.status_code == case.status(ok=200)
    if case.outcome != "ok":
        assert trace.trace_id.encode() not in response.content


def test_exporting_a_trace_that_does_not_exist_is_a_404(client, admin_user) -> None:
    client.force_login(admin_user)
    assert client.get(reverse("trace-export", args=[987654])).status_code == 404
