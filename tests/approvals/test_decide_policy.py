"""Policy also governs edited actions: edited arguments are put to the policies in force like the
proposal was (both Cedar actions), on every path that decides — the service, the pane, the API,
external agents' requests. A forbid refuses the edit with the rule's id and reason; a rule that
wants a higher level keeps the edit from being approved at a lower one. Refused edits change
nothing: the request stays pending and decidable."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide, approvals_sweep, policy_save
from cockpit.audit import Actor
from fleet.models import AgentKind, RunStatus, Step, StepKind, Tier
from fleet.sandbox.models import Refund
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db

UP_TO_500 = """
@id("support-refunds-up-to-500")
@description("No refund above 500 (in any currency) by an agent: finance handles those by hand.")
forbid (principal, action == Cockpit::Action::"execute", resource)
when { context has amount_cents && context.amount_cents > 50000 };
"""

ABOVE_200_AT_L2 = """
@id("refunds-above-200-at-l2")
@description("Refunds above 200 are decided by a lead (L2 and up).")
@level("2")
forbid (principal, action == Cockpit::Action::"execute_unattended", resource)
when { context has amount_cents && context.amount_cents > 20000 };
"""

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "approval-pane"}


@pytest.fixture
def forbid_above_500(team) -> None:
    policy_save(actor=Actor.system("tests"), team=team, source=UP_TO_500, comment="finance limit")


def propose(make_agent, start, amount: str = "400.00"):  # noqa: ANN001, ANN201
    """A tier-3 agent's refund of ``amount``, parked for approval."""
    from fleet.models import Agent

    agent = Agent.objects.filter(slug="test-refund").first() or make_agent("test-refund", tier=Tier.ASSISTED)
    run = execute(start(agent, amount=amount))
    assert run.status == RunStatus.WAITING_APPROVAL
    return run, ApprovalRequest.objects.get(run=run)


def test_an_edit_above_the_forbidden_limit_is_refused_and_nothing_runs(
    make_agent, start, approvers, forbid_above_500
) -> None:
    run, request = propose(make_agent, start)
    with pytest.raises(ValidationError) as refused:
        approval_decide(
            actor=Actor.for_user(approvers["ana"]),
            request=request,
            approve=True,
            edited_arguments={**request.arguments, "amount": "900.00"},
        )
    message = " ".join(refused.value.messages)
    assert "support-refunds-up-to-500" in message and "finance handles those by hand" in message
    request.refresh_from_db()
    run.refresh_from_db()
    assert request.is_pending and request.edited_arguments is None and request.action_hash == ""
    assert run.status == RunStatus.WAITING_APPROVAL and not Refund.objects.exists()
    # Still decidable: the same approver approves it as proposed, and exactly that runs.
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert [str(r.amount) for r in Refund.objects.all()] == ["400.00"]


def test_an_edit_within_policy_is_approved_and_runs_as_edited(make_agent, start, approvers, forbid_above_500) -> None:
    run, request = propose(make_agent, start)
    approval_decide(
        actor=Actor.for_user(approvers["ana"]),
        request=request,
        approve=True,
        edited_arguments={**request.arguments, "amount": "250.00"},
    )
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED_WITH_EDITS
    assert request.events.get(kind="status").data["edit_policy"].startswith("a human must decide")
    assert execute(run).status == RunStatus.SUCCEEDED
    assert [str(r.amount) for r in Refund.objects.all()] == ["250.00"]


def test_the_api_answers_422_with_the_rule_and_the_request_stays_pending(
    client, make_agent, start, approvers, forbid_above_500
) -> None:
    _, request = propose(make_agent, start)
    client.force_login(approvers["ben"])
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "approve", "edited_arguments": {**request.arguments, "amount": "900.00"}},
        content_type="application/json",
    )
    assert response.status_code == 422
    body = response.json()
    assert body["policy"] == ["support-refunds-up-to-500"]
    assert "finance handles those by hand" in body["detail"]
    assert body["errors"][0]["field"] == "edited_arguments"
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending
    again = client.post(
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "reject", "reason": "customer asked for more than we refund"},
        content_type="application/json",
    )
    assert again.status_code == 200 and again.json()["status"] == "rejected"


def test_the_pane_shows_the_rule_and_keeps_the_request_decidable(
    client, make_agent, start, approvers, forbid_above_500
) -> None:
    _, request = propose(make_agent, start)
    client.force_login(approvers["ana"])
    response = client.post(
        reverse("approval-approve-with-edits", args=[request.pk]),
        {"arguments": '{"ticket_id": "T-1", "amount": "900.00", "currency": "EUR"}', "note": ""},
        **HTMX,
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert "support-refunds-up-to-500" in html and "finance handles those by hand" in html
    assert response.context["can_decide"] is True
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending


def test_an_external_agents_request_is_held_to_policy_when_edited(client, make_agent, team, approvers) -> None:
    from cockpit.services import api_key_create

    policy_save(actor=Actor.system("tests"), team=team, source=UP_TO_500, comment="finance limit")
    make_agent("refunder", kind=AgentKind.EXTERNAL, tier=Tier.ASSISTED)
    key = api_key_create(actor=Actor.system("tests"), team=team, name="refunder", scopes=["approvals"])[1]
    asked = client.post(
        "/api/v1/approvals",
        {"agent": "refunder", "action": "billing.credit", "arguments": {"amount": "100.00", "currency": "EUR"}},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert asked.status_code == 201 and asked.json()["status"] == "pending"
    request = ApprovalRequest.objects.get(pk=asked.json()["id"])
    with pytest.raises(ValidationError, match="support-refunds-up-to-500"):
        approval_decide(
            actor=Actor.for_user(approvers["ana"]),
            request=request,
            approve=True,
            edited_arguments={"amount": "501.00", "currency": "EUR"},
        )
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending


# --- Levels -----------------------------------------------------------------------------------


@pytest.fixture
def l2_above_200(team) -> None:
    policy_save(actor=Actor.system("tests"), team=team, source=ABOVE_200_AT_L2, comment="leads decide big refunds")


def test_policy_sends_a_proposal_to_the_level_it_names(make_agent, start, approvers, l2_above_200) -> None:
    _, small = propose(make_agent, start, amount="150.00")
    _, big = propose(make_agent, start, amount="300.00")
    assert (small.level, big.level) == (1, 2)
    with pytest.raises(Exception, match="level L2"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=big, approve=True)


def test_an_edit_that_needs_a_higher_level_cannot_be_approved_at_the_lower_one(
    client, make_agent, start, approvers, l2_above_200
) -> None:
    run, request = propose(make_agent, start, amount="150.00")
    bigger = {**request.arguments, "amount": "300.00"}
    with pytest.raises(ValidationError, match=r"L2 or above \(refunds-above-200-at-l2\)"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True, edited_arguments=bigger)
    client.force_login(approvers["ben"])
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "approve", "edited_arguments": bigger},
        content_type="application/json",
    )
    assert response.status_code == 422 and response.json()["level"] == 2
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending
    # Once it has escalated to L2, its lead may approve the edit.
    with time_machine.travel(timezone.now() + timedelta(seconds=61), tick=False):
        approvals_sweep()
    request.refresh_from_db()
    assert request.level == 2
    approval_decide(actor=Actor.for_user(approvers["cleo"]), request=request, approve=True, edited_arguments=bigger)
    assert execute(run).status == RunStatus.SUCCEEDED
    assert Step.objects.get(run=run, kind=StepKind.TOOL).input["amount"] == "300.00"


def test_a_bad_level_annotation_is_refused_when_saved(team) -> None:
    with pytest.raises(ValidationError, match="@level"):
        policy_save(actor=Actor.system("tests"), team=team, source=ABOVE_200_AT_L2.replace('"2"', '"9"'))
