"""The span store: links to the fleet, discovered agents and their adoption, concurrent
re-delivery, and retention."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from cockpit.audit import Actor
from cockpit.models import AuditEvent
from fleet.models import Agent, AgentKind
from fleet.services import agent_create, run_create
from tests.support import otel
from tests.traces.conftest import post
from traces.models import DiscoveredAgent, Span, Trace
from traces.services import discovered_agent_adopt, incident_open, traces_purge_batch

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


def test_unknown_agents_are_listed_as_discovered(client, ingest_key, team, django_capture_on_commit_callbacks) -> None:
    for _ in range(2):
        capture = otel.Capture(service="shadow-service")
        otel.genai_refund_trace(capture, agent="shadow-refunder")
        # The first sighting is stored with the spans; later ones are counted once they commit.
        with django_capture_on_commit_callbacks(execute=True):
            post(client, ingest_key, otel.protobuf(capture.spans))
    found = DiscoveredAgent.objects.get()
    assert (found.team, found.key, found.name, found.service_name, found.span_count) == (
        team,
        "shadow-refunder",
        "shadow-refunder",
        "shadow-service",
        2,
    )
    assert found.adopted_as is None
    assert Trace.objects.filter(agent__isnull=True, agent_name="shadow-refunder").count() == 2


def test_adopting_a_discovered_agent_links_its_past_and_future_spans(
    client, ingest_key, team, django_capture_on_commit_callbacks
) -> None:
    capture = otel.Capture()
    otel.genai_refund_trace(capture, agent="shadow-refunder")
    post(client, ingest_key, otel.protobuf(capture.spans))
    found = DiscoveredAgent.objects.get()

    with django_capture_on_commit_callbacks(execute=True):  # the linking task runs eagerly in tests
        agent = discovered_agent_adopt(actor=SYSTEM, discovered=found)
    assert (agent.slug, agent.kind, agent.team) == ("shadow-refunder", AgentKind.EXTERNAL, team)
    assert Trace.objects.get().agent == agent
    assert set(Span.objects.filter(agent_key="shadow-refunder").values_list("agent_id", flat=True)) == {agent.pk}
    assert AuditEvent.objects.filter(action="agent.adopt").exists()

    later = otel.Capture()
    otel.genai_refund_trace(later, agent="shadow-refunder")
    post(client, ingest_key, otel.protobuf(later.spans))
    assert Trace.objects.get(trace_id=otel.trace_id_of(later.spans)).agent == agent
    with pytest.raises(Exception, match="adopted already"):
        discovered_agent_adopt(actor=SYSTEM, discovered=found)


def test_adoption_refuses_a_slug_already_taken(client, ingest_key, team) -> None:
    agent_create(actor=SYSTEM, team=team, slug="taken", name="Taken", kind=AgentKind.EXTERNAL)
    capture = otel.Capture()
    otel.genai_refund_trace(capture, agent="Taken Too")
    post(client, ingest_key, otel.protobuf(capture.spans))
    found = DiscoveredAgent.objects.get()
    with pytest.raises(Exception, match="already has an agent"):
        discovered_agent_adopt(actor=SYSTEM, discovered=found, slug="taken")
    assert discovered_agent_adopt(actor=SYSTEM, discovered=found).slug == "taken-too"


def test_known_agents_and_runs_are_linked(client, ingest_key, team) -> None:
    agent = agent_create(actor=SYSTEM, team=team, slug="crm-sync", name="CRM sync", kind=AgentKind.EXTERNAL)
    run, _ = run_create(actor=SYSTEM, agent=agent, external_ref="thread-42")
    capture = otel.Capture()
    otel.langgraph_trace(capture)  # session.id = thread-42, no agent attributes
    post(client, ingest_key, otel.protobuf(capture.spans))
    summary = Trace.objects.get()
    assert (summary.run, summary.agent) == (run, agent)  # the run's agent, through the run
    assert DiscoveredAgent.objects.count() == 0

    named = otel.Capture()
    otel.genai_refund_trace(named, agent="CRM sync")  # by name, whatever its case
    post(client, ingest_key, otel.protobuf(named.spans))
    assert Trace.objects.get(trace_id=otel.trace_id_of(named.spans)).agent == agent


def test_another_teams_agent_is_not_linked(client, ingest_key, other_team) -> None:
    theirs = agent_create(
        actor=SYSTEM, team=other_team, slug="refund-helper", name="Refund helper", kind=AgentKind.EXTERNAL
    )
    capture = otel.Capture()
    otel.genai_refund_trace(capture, agent="refund-helper")
    post(client, ingest_key, otel.protobuf(capture.spans))
    assert Trace.objects.get().agent_id is None and theirs.pk not in Span.objects.values_list("agent_id", flat=True)
    assert DiscoveredAgent.objects.get().key == "refund-helper"


@pytest.mark.django_db(transaction=True)
def test_the_same_spans_sent_at_once_by_four_senders_are_stored_once(ingest_key, on_postgres) -> None:
    if not on_postgres:
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    capture = otel.Capture()
    otel.genai_refund_trace(capture)
    body = otel.protobuf(capture.spans)
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        try:
            barrier.wait()
            statuses.append(post(Client(), ingest_key, body).status_code)
        finally:
            connections.close_all()

    senders = [threading.Thread(target=send) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    assert statuses == [200] * 4
    assert Span.objects.count() == 4 and Trace.objects.get().span_count == 4


def test_retention_deletes_old_traces_in_batches_and_keeps_incidents(client, ingest_key, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "TRACE_RETENTION_DAYS": 7}
    for _ in range(3):
        capture = otel.Capture()
        otel.genai_refund_trace(capture)  # the test shapes start in October 2025: long ago
        post(client, ingest_key, otel.protobuf(capture.spans))
    fresh = otel.Capture()
    with fresh.span("recent", 0, 10):
        pass
    fresh_request = otel.encode_spans(fresh.spans)
    span = fresh_request.resource_spans[0].scope_spans[0].spans[0]
    now_ns = int(timezone.now().timestamp() * 1e9)
    span.start_time_unix_nano, span.end_time_unix_nano = now_ns - 10**9, now_ns
    post(client, ingest_key, fresh_request.SerializeToString())
    kept = Trace.objects.filter(root_name="invoke_agent refund-helper").first()
    incident_open(actor=SYSTEM, trace=kept, title="refund without a ticket")

    assert traces_purge_batch(batch=1) == 1
    assert traces_purge_batch(batch=10) == 1
    assert traces_purge_batch(batch=10) == 0
    assert set(Trace.objects.values_list("root_name", flat=True)) == {"invoke_agent refund-helper", "recent"}
    assert Span.objects.count() == 4 + 1
    assert traces_purge_batch(now=timezone.now() + timedelta(days=8)) == 1  # now the recent one is old too
    assert Trace.objects.count() == 1 and Trace.objects.get().incident


def test_an_agent_named_only_in_spans_of_another_trace_shape_is_discovered_once(client, ingest_key) -> None:
    capture = otel.Capture()
    with (
        capture.span("researcher", 0, 100, {"openinference.span.kind": "AGENT", "agent.name": "researcher"}),
        capture.span("llm", 1, 99, {"openinference.span.kind": "LLM", "agent.name": "researcher"}),
    ):
        pass
    post(client, ingest_key, otel.protobuf(capture.spans))
    assert list(DiscoveredAgent.objects.values_list("key", "span_count")) == [("researcher", 2)]
    assert not Agent.objects.exists()


def test_a_trace_open_in_a_browser_hears_of_its_later_spans(client, ingest_key, team, monkeypatch) -> None:
    """A trace's own live topic is told of spans arriving after its first batch (a page may show
    it by then); the first batch only announces the arrival to the team."""
    from cockpit import live

    sent: list[tuple[str, list[str]]] = []
    real = live.publish

    def spy(event, **kwargs):  # noqa: ANN001, ANN003, ANN202
        sent.append((event["type"], list(kwargs.get("topics", ()))))
        return real(event, **kwargs)

    monkeypatch.setattr(live, "publish", spy)
    capture = otel.Capture()
    otel.genai_refund_trace(capture, agent="refunder")
    first, rest = capture.spans[:2], capture.spans[2:]
    post(client, ingest_key, otel.protobuf(first))
    assert "traces.arrived" in [kind for kind, _ in sent]
    assert "trace.spans" not in [kind for kind, _ in sent]
    post(client, ingest_key, otel.protobuf(rest))
    trace = Trace.objects.get()
    assert ("trace.spans", [f"trace.{trace.pk}"]) in sent
