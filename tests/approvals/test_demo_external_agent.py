"""The demo's external agents, run against a real server: they use the runs API, ask for approval
before a risky action, and send their spans over OTLP into the run's own trace."""

from __future__ import annotations

import threading
import time

import pytest

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide
from cockpit.audit import Actor
from cockpit.models import Scope
from cockpit.roles import Role
from cockpit.services import api_key_create
from fleet.demo_external import Demo
from fleet.models import AgentKind, Run, RunStatus, Tier
from fleet.services import run_cancel
from tests.factories import UserFactory
from traces.models import DiscoveredAgent, Span, Trace

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(check, what: str, timeout: float = 20):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return found


@pytest.fixture
def demo(team, make_agent, web_process):  # noqa: ANN001, ANN201
    make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.SUPERVISED)
    key = api_key_create(
        actor=Actor.system("tests"), team=team, name="demo", scopes=[Scope.RUNS, Scope.INGEST, Scope.APPROVALS]
    )[1]
    demo = Demo(web_process[1], key, interval=60, seed=1)
    demo.pause = lambda seconds: None  # type: ignore[method-assign]  (no make-believe latency)
    yield demo
    demo.stop()


def test_the_crm_agent_waits_for_a_human_and_its_spans_join_the_runs_trace(demo, approvers) -> None:
    demo.rng.random = lambda: 0.1  # type: ignore[method-assign]  (there is always a duplicate to merge)
    agent = threading.Thread(target=demo.crm_sync)
    agent.start()
    pending = wait_for(lambda: ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).first(), "the ask")
    assert pending.action == "crm.merge_accounts" and pending.risk == "high"
    run = Run.objects.get(external_ref=pending.external_ref)
    assert run.status == RunStatus.RUNNING and list(run.steps.values_list("kind", flat=True)) == ["tool", "llm"]

    approval_decide(actor=Actor.for_user(approvers["ana"]), request=pending, approve=True)
    agent.join(timeout=40)
    assert not agent.is_alive()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.result == {"merged": 1}
    assert list(run.steps.values_list("name", flat=True)) == [
        "crm.list_changed_accounts",
        "find_duplicates",
        "crm.merge_accounts",
        "crm.merge_accounts",
    ]

    for provider in demo._providers:
        provider.force_flush()
    spans = wait_for(lambda: list(Span.objects.filter(trace_id=run.trace_id).order_by("start_time")), "spans")
    names = [s.name for s in spans]
    assert "crm_dedupe_graph" in names and "chat gpt-4o-mini" in names and "execute_tool crm.merge_accounts" in names
    graph = next(s for s in spans if s.name == "crm_dedupe_graph")
    assert graph.parent_span_id  # under the run's root span, which Cockpit emits when the run ends
    assert all(s.run_id == run.pk for s in spans)
    trace = Trace.objects.get(trace_id=run.trace_id)
    assert trace.run_id == run.pk and trace.llm_count == 1


def test_a_cancelled_run_stops_before_its_next_step(demo, approvers, team) -> None:  # noqa: ANN001
    demo.rng.random = lambda: 0.1  # type: ignore[method-assign]
    agent = threading.Thread(target=demo._guarded, args=(demo.crm_sync,))
    agent.start()
    pending = wait_for(lambda: ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).first(), "the ask")
    run = Run.objects.get(external_ref=pending.external_ref)
    operator = UserFactory(username="olga", roles=[(team, Role.OPERATOR)])
    run_cancel(actor=Actor.for_user(operator), run=run, reason="wrong accounts")
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=pending, approve=True)
    agent.join(timeout=40)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "crm.merge_accounts" not in [s.name for s in run.steps.filter(kind="tool")]


def test_the_lead_scorer_is_discovered_not_adopted(demo, team) -> None:
    demo.lead_scoring()
    for provider in demo._providers:
        provider.force_flush()
    found = wait_for(lambda: DiscoveredAgent.objects.filter(team=team, key="lead-scorer").first(), "discovery")
    assert found.adopted_as is None and found.span_count >= 1
    llm = Span.objects.get(team=team, name="ChatAnthropic")
    assert (llm.span_type, llm.model, llm.input_tokens) == ("llm", "claude-3-5-haiku-latest", llm.input_tokens)
    assert llm.input_tokens and llm.output_tokens
