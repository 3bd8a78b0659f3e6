"""The narrative: a trace told in plain language, from the spans managed runs and external
agents really send (no model involved)."""

from __future__ import annotations

import json

import pytest

from cockpit.audit import Actor
from cockpit.roles import Role
from fleet.templatetags.fleet_format import usd
from tests.support import otel
from tests.traces import stories
from tests.traces.conftest import post
from traces.models import Span, Trace
from traces.narrative import Sentence, humanise_call, narrate

pytestmark = pytest.mark.django_db


def told(trace: Trace) -> list[Sentence]:
    return narrate(trace, list(Span.objects.filter(team_id=trace.team_id, trace_id=trace.trace_id)))


def texts(sentences: list[Sentence]) -> list[str]:
    return [s.text + (f" × {s.repeat}" if s.repeat > 1 else "") for s in sentences]


def cost(trace: Trace) -> str:
    """How the outcome sentence ends when spans were priced (", $0.0053"), else nothing."""
    trace.refresh_from_db()
    return f", {usd(trace.cost)}" if trace.cost else ""


def ingest(client, key: str, capture: otel.Capture) -> Trace:  # noqa: ANN001
    assert post(client, key, otel.protobuf(capture.spans)).status_code == 200
    return Trace.objects.get(trace_id=otel.trace_id_of(capture.spans))


# --- Managed runs -----------------------------------------------------------------------------


def test_a_managed_run_with_an_approval_reads_as_a_story(team) -> None:
    story = stories.managed_refund(team, wait_seconds=240)
    sentences = told(story.trace)
    assert texts(sentences) == [
        "Refund desk started on ticket T-1042",
        "read ticket T-1042",
        "asked gpt-4o to decide (1,234 tokens)",
        "decided to refund €80.00 (confidence 0.62)",
        "approval required by policy refunds-over-50",
        "approved by dana after 4 min",
        "issued refund of €80.00 for ticket T-1042",
        "asked gpt-4o to write reply (398 tokens)",
        "sent email to jane@example.com",
        "finished successfully after 4 min, $0.0053",
    ]
    by_text = {s.text: s for s in sentences}
    decision = by_text["decided to refund €80.00 (confidence 0.62)"]
    assert decision.detail == "The parcel arrived broken; the policy refunds the full order total."
    assert by_text["approval required by policy refunds-over-50"].detail == (
        "the action: payments.refund of €80.00 for ticket T-1042"
    )
    approved = by_text["approved by dana after 4 min"]
    approval_span = next(s for s in story.spans if s.span_type == "approval")
    assert (approved.span_id, approved.actor, approved.tone) == (approval_span.span_id, "dana", "ok")
    assert approved.offset == pytest.approx(242.8)  # told when the decision was made, not when asked
    assert [s.kind for s in sentences][:5] == ["start", "read", "llm", "decide", "approval"]
    assert sentences[-1].kind == "outcome"


def test_a_rejected_approval_says_who_rejected_it_and_why(team) -> None:
    story = stories.managed_refund(team, approved=False, decided_by="dana", wait_seconds=420)
    sentences = told(story.trace)
    assert texts(sentences)[-3:] == [
        "approval required by policy refunds-over-50",
        "rejected by dana after 7 min",
        "failed after 7 min",
    ]
    rejected = sentences[-2]
    assert (rejected.detail, rejected.tone, rejected.kind) == ("The photos show no damage.", "danger", "error")
    assert not any("issued refund" in text for text in texts(sentences))


def test_operator_pause_and_resume_are_told_with_who_and_why(team, make_user) -> None:
    olivia = make_user(Role.OPERATOR, team, username="olivia")
    story = stories.managed_refund(team, operator=Actor.for_user(olivia))
    sentences = told(story.trace)
    order = texts(sentences)
    assert order.index("decided to refund €80.00 (confidence 0.62)") < order.index("paused by olivia")
    assert order.index("paused by olivia") < order.index("approval required by policy refunds-over-50")
    assert order.index("approved by dana after 4 min") < order.index("resumed by olivia")
    assert order.index("resumed by olivia") < order.index("issued refund of €80.00 for ticket T-1042")
    paused = next(s for s in sentences if s.text == "paused by olivia")
    assert (paused.kind, paused.actor, paused.detail) == ("operator", "olivia", "checking the refund amount")
    assert order.count("paused by olivia") == 1  # the span and the run's history tell it once


def test_operator_actions_whose_spans_never_arrived_are_told_from_the_run_history(team, make_user) -> None:
    olivia = make_user(Role.OPERATOR, team, username="olivia")
    story = stories.managed_refund(team, operator=Actor.for_user(olivia))
    Span.objects.filter(trace_id=story.trace.trace_id, span_type="operator").delete()
    order = texts(told(story.trace))
    assert "paused by olivia" in order and "resumed by olivia" in order


def test_who_decided_an_approval_comes_from_the_run_history_when_the_span_lacks_it(team) -> None:
    story = stories.managed_refund(team, decided_by="dana", wait_seconds=90)
    approval = Span.objects.get(trace_id=story.trace.trace_id, span_type="approval")
    approval.attributes.pop("cockpit.approval.output")
    approval.save(update_fields=["attributes"])
    assert "approved by dana after 2 min" in texts(told(story.trace))


def test_a_failing_step_says_what_failed_why_and_how_often_it_was_retried(team) -> None:
    story = stories.managed_refund(
        team, refund_error="TimeoutError: the payment provider did not answer", refund_attempts=3
    )
    sentences = told(story.trace)
    failure = next(s for s in sentences if s.kind == "error")
    assert failure.text == "could not issue refund of €80.00 for ticket T-1042, retried 2×"
    assert failure.detail == "TimeoutError: the payment provider did not answer"
    assert sentences[-1].text.startswith("failed after 4 min")
    assert sentences[-1].tone == "danger"


# --- External agents --------------------------------------------------------------------------


def test_a_langgraph_trace_is_told_without_its_plumbing_and_its_retry_folded(client, ingest_key) -> None:
    capture = otel.Capture()
    otel.langgraph_trace(capture)
    trace = ingest(client, ingest_key, capture)
    sentences = told(trace)
    assert texts(sentences) == [
        "LangGraph started",
        "asked claude-sonnet-4-5 (1,720 tokens)",
        "looked up weather for Paris after 1 failed attempt",
        f"finished successfully after 4 s{cost(trace)}",
    ]
    assert sentences[2].detail == "it failed with TimeoutError: upstream"
    assert sentences[2].tone == "warn"


def test_an_openai_agents_sdk_trace_says_what_the_model_proposed(client, ingest_key) -> None:
    capture = otel.Capture()
    otel.genai_refund_trace(capture)
    trace = ingest(client, ingest_key, capture)
    sentences = told(trace)
    assert texts(sentences) == [
        "refund-helper started",
        "asked gpt-4o (908 tokens)",
        "issued refund of €80 for ticket #123",
        "asked gpt-4o (908 tokens)",
        f"finished successfully after 5 s{cost(trace)}",
    ]
    assert sentences[1].detail == "it proposed calling payments.refund"


def test_an_openinference_rag_trace_tells_the_question_and_the_search(client, ingest_key) -> None:
    capture = otel.Capture()
    otel.openinference_rag_trace(capture)
    trace = ingest(client, ingest_key, capture)
    sentences = told(trace)
    assert texts(sentences) == [
        "query started",
        "searched the knowledge base",
        "asked gpt-4o-mini (2,198 tokens)",
        f"finished successfully after 3 s{cost(trace)}",
    ]
    assert sentences[0].detail == "“What is our refund policy?”"


def test_the_same_call_over_and_over_is_one_sentence(client, ingest_key) -> None:
    capture = otel.Capture()
    with capture.span("researcher", 0, 10_000, {"openinference.span.kind": "AGENT"}):
        for n in range(37):
            args = json.dumps({"query": f"refund rule {n}"})
            attributes = {"openinference.span.kind": "TOOL", "tool.name": "search_docs", "input.value": args}
            with capture.span("search_docs", 10 + n * 100, 90 + n * 100, attributes):
                pass
    trace = ingest(client, ingest_key, capture)
    sentences = told(trace)
    assert texts(sentences) == [
        "researcher started",
        "searched docs for “refund rule 0”, “refund rule 1”, “refund rule 2” and 34 more × 37",
        f"finished successfully after 10 s{cost(trace)}",
    ]


def test_an_agent_loop_is_folded_into_its_steps_with_the_tokens_added_up(client, ingest_key) -> None:
    capture = otel.Capture()
    with capture.span("invoke_agent looper", 0, 50_000, {"gen_ai.operation.name": "invoke_agent"}):
        for n in range(12):
            chat = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 10,
            }
            with capture.span("chat gpt-4o", 10 + n * 1000, 500 + n * 1000, chat):
                pass
            tool = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order"}
            tool["gen_ai.tool.call.arguments"] = json.dumps({"order_id": 1000 + n})
            with capture.span("execute_tool lookup_order", 510 + n * 1000, 900 + n * 1000, tool):
                pass
    sentences = told(ingest(client, ingest_key, capture))
    assert texts(sentences)[1] == "asked gpt-4o → looked up order (1,320 tokens in all) × 12"
    assert len(sentences) == 3


def test_plain_opentelemetry_spans_are_told_from_their_http_and_database_attributes(client, ingest_key) -> None:
    capture = otel.Capture()
    with capture.span("handle_refund", 0, 900):
        http = {"http.request.method": "POST", "url.full": "https://api.stripe.com/v1/refunds?x=1"}
        with capture.span("POST", 10, 400, {**http, "http.response.status_code": 200}):
            pass
        with capture.span("SELECT", 410, 420, {"db.system": "postgresql", "db.operation.name": "SELECT"}):
            pass
        with capture.span("notify_customer", 430, 890, error="SMTPError: mailbox unavailable"):
            pass
    sentences = told(ingest(client, ingest_key, capture))
    assert texts(sentences) == [
        "handle_refund started",
        "called POST api.stripe.com/v1/refunds → 200",
        "queried postgresql: SELECT",
        "notified customer — failed: SMTPError: mailbox unavailable",
        "finished successfully after 900 ms",
    ]


def test_a_trace_whose_root_has_not_arrived_has_no_outcome_yet(client, ingest_key) -> None:
    capture = otel.Capture()
    otel.genai_refund_trace(capture)
    root = next(s for s in capture.spans if s.parent is None)
    assert post(client, ingest_key, otel.protobuf([s for s in capture.spans if s is not root])).status_code == 200
    sentences = told(Trace.objects.get())
    assert sentences[0].text == "asked gpt-4o (908 tokens)"
    assert sentences[-1].text.startswith("no outcome yet")


# --- Wording ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "args", "text"),
    [
        ("lookup_order", {"order_id": 123}, "looked up order #123"),
        ("crm.get_ticket", {"ticket_id": "T-1042"}, "read ticket T-1042"),
        (
            "payments.refund",
            {"amount": "80", "currency": "EUR", "ticket_id": "123"},
            "issued refund of €80 for ticket #123",
        ),
        ("email.send", {"to": "jane@example.com", "subject": "Hi"}, "sent email to jane@example.com"),
        ("ledger.post", {"account": "6100"}, "posted to ledger for account #6100"),
        ("payments.refund_reverse", {}, "reversed refund"),
        ("getWeather", {"city": "Paris"}, "looked up weather for Paris"),
        ("search_web", {"query": "refund policy"}, "searched web for “refund policy”"),
        ("frobnicate", {}, "used frobnicate"),
    ],
)
def test_tool_calls_are_phrased_from_their_name_and_key_arguments(tool, args, text) -> None:
    assert humanise_call(tool, args).text == text


def test_a_pause_taking_effect_when_someone_else_decides_is_told_once_as_the_operators(team, make_user) -> None:
    """olivia paused the run; the pause took effect minutes later, when dana's approval let the
    run go on. The story tells olivia's pause once, and never as dana's."""
    from datetime import timedelta

    from fleet.models import RunEvent

    olivia = make_user(Role.OPERATOR, team, username="olivia")
    story = stories.managed_refund(team, operator=Actor.for_user(olivia), wait_seconds=240)
    RunEvent.objects.create(
        run=story.run,
        at=stories.T0 + timedelta(seconds=243),
        kind=RunEvent.Kind.STATUS,
        from_status="waiting_approval",
        to_status="paused",
        actor_label="olivia",
        actor_user=olivia,
        reason="checking the refund amount",
        data={"carries_out": "pause"},
    )
    order = texts(told(story.trace))
    assert order.count("paused by olivia") == 1
    assert not any(text.endswith("by dana") and "paused" in text for text in order)
