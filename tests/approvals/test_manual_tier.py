"""Tier 4 (Manual): the agent only proposes. The approver carries the action out — through the
tool from the pane, or elsewhere — and records the result, which the run receives as the step's
result. The runtime never calls a side-effecting tool of a tier-4 agent itself."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide, approval_execute, policy_save
from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.services import api_key_create
from fleet.models import AgentKind, RunStatus, Step, StepKind, StepStatus, Tier
from fleet.sandbox.models import Refund
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "approval-pane"}

# A team policy that would let anything happen unattended: tier 4 still only proposes.
EVERYTHING_UNATTENDED = """
@id("all-unattended")
permit (principal, action == Cockpit::Action::"execute_unattended", resource);
"""


@pytest.fixture
def waiting(make_agent, start, approvers):  # noqa: ANN001, ANN201
    run = execute(start(make_agent("test-refund", tier=Tier.MANUAL), amount="40.00"))
    assert run.status == RunStatus.WAITING_APPROVAL
    return run, ApprovalRequest.objects.get(run=run)


def test_once_approved_a_manual_action_is_not_executed_by_the_agent(waiting, approvers) -> None:
    run, request = waiting
    assert request.manual
    approval_decide(
        actor=Actor.for_user(approvers["ana"]),
        request=request,
        approve=True,
        result={"refund_id": "R-88", "via": "bank portal"},
    )
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert not Refund.objects.exists(), "the runtime did not call the tool"
    assert run.result == {"refunded": True, "refund_id": "R-88", "via": "bank portal"}
    tool_step = Step.objects.get(run=run, kind=StepKind.TOOL)
    assert tool_step.status == StepStatus.SUCCEEDED and tool_step.output["refund_id"] == "R-88"
    assert AuditEvent.objects.get(action="approval.approve", object_id=str(request.pk)).after["result"]["via"] == (
        "bank portal"
    )


def test_a_manual_request_is_not_approved_without_its_result(waiting, approvers) -> None:
    _, request = waiting
    with pytest.raises(ValidationError, match="carry the action out yourself"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending


def test_policy_permitting_it_unattended_does_not_let_the_runtime_act(make_agent, start, team, approvers) -> None:
    policy_save(actor=Actor.system("tests"), team=team, source=EVERYTHING_UNATTENDED)
    run = execute(start(make_agent("test-refund", tier=Tier.MANUAL), amount="40.00"))
    assert run.status == RunStatus.WAITING_APPROVAL and not Refund.objects.exists()
    assert ApprovalRequest.objects.get(run=run).manual


def test_an_approval_without_a_result_never_makes_the_runtime_act(waiting) -> None:
    """E.g. an operator's resume under the interim gate, or a decision made before the upgrade."""
    from fleet.services import approval_step_decide

    run, request = waiting
    approval_step_decide(actor=Actor.system("tests"), run=run, step_seq=request.step_seq, approved=True)
    run = execute(run)
    assert run.status == RunStatus.FAILED and "tier 4 (Manual)" in run.error
    assert not Refund.objects.exists()


def test_the_approver_carries_it_out_through_the_tool_from_the_pane(client, waiting, approvers) -> None:
    run, request = waiting
    client.force_login(approvers["ben"])
    pane = client.get(reverse("approval-detail", args=[request.pk]), **HTMX).content.decode()
    assert "You execute this" in pane and reverse("approval-execute", args=[request.pk]) in pane
    response = client.post(reverse("approval-execute", args=[request.pk]), {"note": "done"}, **HTMX)
    assert response.status_code == 200
    request.refresh_from_db()
    refund = Refund.objects.get()
    assert request.status == ApprovalStatus.APPROVED and request.result["refund"] == refund.pk
    assert refund.idempotency_key == f"{run.trace_id}:{request.step_seq + 1}"
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED and run.result["refund"] == refund.pk
    assert Refund.objects.count() == 1, "the runtime did not call it again"


def test_arguments_the_tool_refuses_decide_nothing(waiting, approvers) -> None:
    _, request = waiting
    with pytest.raises(ValidationError, match="test.refund would refuse"):
        approval_execute(
            actor=Actor.for_user(approvers["ana"]),
            request=request,
            edited_arguments={"ticket_id": "T-1", "amount": "lots", "currency": "EUR"},
        )
    assert ApprovalRequest.objects.get(pk=request.pk).is_pending and not Refund.objects.exists()


def test_only_manual_requests_are_carried_out_by_the_approver(make_agent, start, approvers) -> None:
    run = execute(start(make_agent("test-refund", tier=Tier.ASSISTED), amount="40.00"))
    request = ApprovalRequest.objects.get(run=run)
    assert not request.manual
    with pytest.raises(ValidationError, match="Only a manual"):
        approval_execute(actor=Actor.for_user(approvers["ana"]), request=request)
    with pytest.raises(ValidationError, match="Only a manual"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True, result={"x": 1})


def test_recording_a_result_from_the_pane(client, waiting, approvers) -> None:
    run, request = waiting
    client.force_login(approvers["ana"])
    refused = client.post(reverse("approval-approve", args=[request.pk]), {"note": ""}, **HTMX)
    assert refused.status_code == 422 and "carry the action out yourself" in refused.content.decode()
    done = client.post(
        reverse("approval-approve", args=[request.pk]), {"note": "", "result": '{"refund_id": "R-7"}'}, **HTMX
    )
    assert done.status_code == 200
    assert execute(run).result == {"refunded": True, "refund_id": "R-7"}


def test_the_queue_marks_manual_requests(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    assert "you execute this" in client.get(reverse("approvals")).content.decode()


def test_an_external_tier_4_agent_only_proposes(client, make_agent, team, approvers) -> None:
    make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.MANUAL)
    policy_save(actor=Actor.system("tests"), team=team, source=EVERYTHING_UNATTENDED)
    key = api_key_create(actor=Actor.system("tests"), team=team, name="crm", scopes=["approvals"])[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    asked = client.post(
        "/api/v1/approvals",
        {"agent": "crm-sync", "action": "crm.merge_accounts", "arguments": {"keep": "C-1", "merge": "C-2"}},
        content_type="application/json",
        **auth,
    ).json()
    assert (asked["status"], asked["manual"]) == ("pending", True)
    client.force_login(approvers["ana"])
    missing = client.post(
        f"/api/v1/approvals/{asked['id']}/decision", {"decision": "approve"}, content_type="application/json"
    )
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "result"
    decided = client.post(
        f"/api/v1/approvals/{asked['id']}/decision",
        {"decision": "approve", "result": {"merged": True}},
        content_type="application/json",
    )
    assert decided.status_code == 200
    client.logout()
    seen = client.get(f"/api/v1/approvals/{asked['id']}", **auth).json()
    assert (seen["status"], seen["result"]) == ("approved", {"merged": True})


def test_a_tool_that_fails_in_the_approvers_hands_decides_nothing(make_agent, approvers) -> None:
    from approvals.services import approval_request_create

    agent = make_agent("test-refund", tier=Tier.MANUAL)
    request, _ = approval_request_create(
        actor=Actor.system("tests"), agent=agent, action="test.boom", arguments={}, manual=True, notify=False
    )
    with pytest.raises(ValidationError, match="test.boom failed: ValueError: the CRM said no"):
        approval_execute(actor=Actor.for_user(approvers["ana"]), request=request)
    request.refresh_from_db()
    assert request.is_pending and request.result is None
    assert not AuditEvent.objects.filter(action="approval.approve", object_id=str(request.pk)).exists()
