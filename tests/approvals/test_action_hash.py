"""An approval binds exactly what runs: the decision stores a SHA-256 over the canonical JSON of
the tool and the arguments that will execute; the managed runtime recomputes it just before the
tool runs and refuses (audited) on any difference; the API returns it; an external agent sends it
back with its execution report and a report that does not match is refused."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.urls import reverse

import tests.fleet.agents as test_agents
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from cockpit.audit import Actor
from cockpit.lib.actionhash import action_hash
from cockpit.models import AuditEvent
from cockpit.services import api_key_create
from fleet.models import AgentKind, RunStatus, Step, StepKind, StepStatus, Tier
from fleet.sandbox.models import Refund
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "approval-pane"}


def sha(tool: str, arguments: dict) -> str:
    """The documented recipe, written out independently of Cockpit's helper."""
    text = json.dumps(
        {"tool": tool, "arguments": arguments}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _honest_agent():  # noqa: ANN202
    test_agents.REFUND_DRIFT.clear()
    yield
    test_agents.REFUND_DRIFT.clear()


@pytest.fixture
def waiting(make_agent, start, approvers):  # noqa: ANN001, ANN201
    run = execute(start(make_agent("test-refund", tier=Tier.ASSISTED), amount="400.00"))
    assert run.status == RunStatus.WAITING_APPROVAL
    return run, ApprovalRequest.objects.get(run=run)


def test_the_canonical_form_is_the_documented_one() -> None:
    args = {"b": [1, {"z": "é", "a": 2.0}], "a": "x"}
    assert action_hash("t.x", args) == sha("t.x", {"a": "x", "b": [1, {"a": 2, "z": "é"}]})
    assert action_hash("t.x", {"amount": 1.0}) == action_hash("t.x", {"amount": 1})
    assert action_hash("t.x", {"amount": "1.0"}) != action_hash("t.x", {"amount": "1"})


def test_an_agent_that_runs_something_else_than_was_approved_is_refused(waiting, approvers) -> None:
    run, request = waiting
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    request.refresh_from_db()
    assert request.action_hash == sha("test.refund", {"ticket_id": "T-1", "amount": "400.00", "currency": "EUR"})
    test_agents.REFUND_DRIFT["amount"] = "900.00"  # on re-execution it asks for more
    run = execute(run)
    assert run.status == RunStatus.FAILED and "approval does not match the action" in run.error
    assert not Refund.objects.exists()
    step = Step.objects.get(run=run, kind=StepKind.TOOL)
    assert step.status == StepStatus.FAILED and step.output["error_type"] == "ApprovalMismatch"
    assert step.output["approved_hash"] == request.action_hash
    refusal = AuditEvent.objects.get(action="step.refuse", object_id=str(run.pk))
    assert refusal.after["action_hash"] == sha(
        "test.refund", {"ticket_id": "T-1", "amount": "900.00", "currency": "EUR"}
    )


def test_edited_arguments_are_what_the_hash_binds(waiting, approvers) -> None:
    run, request = waiting
    edited = {"ticket_id": "T-1", "amount": "150.00", "currency": "EUR"}
    approval_decide(actor=Actor.for_user(approvers["ben"]), request=request, approve=True, edited_arguments=edited)
    request.refresh_from_db()
    assert request.action_hash == sha("test.refund", edited)
    assert execute(run).status == RunStatus.SUCCEEDED
    assert [str(r.amount) for r in Refund.objects.all()] == ["150.00"]


def test_a_rejection_binds_nothing(waiting, approvers) -> None:
    _, request = waiting
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=False, reason="duplicate")
    request.refresh_from_db()
    assert request.action_hash == ""


def test_the_pane_and_the_api_return_the_hash(client, waiting, approvers) -> None:
    _, request = waiting
    client.force_login(approvers["ana"])
    assert client.post(reverse("approval-approve", args=[request.pk]), {"note": ""}, **HTMX).status_code == 200
    expected = sha("test.refund", request.arguments)
    assert ApprovalRequest.objects.get(pk=request.pk).action_hash == expected
    assert client.get(f"/api/v1/approvals/{request.pk}").json()["action_hash"] == expected


def test_the_decision_api_returns_the_hash(client, waiting, approvers) -> None:
    _, request = waiting
    client.force_login(approvers["ana"])
    edited = {"ticket_id": "T-1", "amount": "10.00", "currency": "EUR"}
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "approve", "edited_arguments": edited},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["action_hash"] == sha("test.refund", edited)


# --- External agents ---------------------------------------------------------------------------


@pytest.fixture
def external(client, make_agent, team, approvers):  # noqa: ANN001, ANN201
    """An external agent's run, and its approved request to merge two accounts."""
    make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.ASSISTED)
    key = api_key_create(actor=Actor.system("tests"), team=team, name="crm", scopes=["approvals", "runs"])[1]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    run = client.post("/api/v1/runs", {"agent": "crm-sync"}, content_type="application/json", **auth).json()
    asked = client.post(
        "/api/v1/approvals",
        {"agent": "crm-sync", "action": "crm.merge_accounts", "arguments": {"keep": "C-1", "merge": "C-2"}},
        content_type="application/json",
        **auth,
    ).json()
    request = ApprovalRequest.objects.get(pk=asked["id"])
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    approval = client.get(f"/api/v1/approvals/{request.pk}", **auth).json()
    return run["id"], approval, auth


def report(client, run_id: int, auth: dict, **body):  # noqa: ANN001, ANN201
    return client.post(
        f"/api/v1/runs/{run_id}/events", {"type": "step", **body}, content_type="application/json", **auth
    )


def test_an_external_report_of_the_approved_action_is_accepted(client, external) -> None:
    run_id, approval, auth = external
    assert approval["action_hash"] == sha("crm.merge_accounts", {"keep": "C-1", "merge": "C-2"})
    response = report(
        client,
        run_id,
        auth,
        name="crm.merge_accounts",
        input=approval["final_arguments"],
        approval_hash=approval["action_hash"],
    )
    assert response.status_code == 200
    assert Step.objects.get(run_id=run_id).status == StepStatus.SUCCEEDED


def test_an_external_report_of_another_action_is_refused_and_audited(client, external) -> None:
    run_id, approval, auth = external
    response = report(
        client,
        run_id,
        auth,
        name="crm.merge_accounts",
        input={"keep": "C-1", "merge": "C-3"},
        approval_hash=approval["action_hash"],
    )
    assert response.status_code == 409 and "approval does not match the action" in response.json()["detail"]
    step = Step.objects.get(run_id=run_id)
    assert step.status == StepStatus.FAILED and step.output["error_type"] == "ApprovalMismatch"
    assert AuditEvent.objects.filter(action="step.refuse", object_id=str(run_id)).exists()


def test_a_made_up_hash_is_refused(client, external) -> None:
    run_id, _, auth = external
    args = {"keep": "C-9", "merge": "C-8"}
    response = report(
        client, run_id, auth, name="crm.merge_accounts", input=args, approval_hash=sha("crm.merge_accounts", args)
    )
    assert response.status_code == 409 and "no approval" in response.json()["detail"]
