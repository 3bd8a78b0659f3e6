"""Humans decide: approvals resume the parked run at once, edits are executed as edited,
rejections take the agent's rejection path; racing approvers get one decision; only the right
people may decide."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import AlreadyDecided, approval_decide
from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.roles import Role
from fleet.models import Run, RunStatus, Step, StepKind, StepStatus, Tier
from fleet.sandbox.models import Refund
from tests.fleet.conftest import execute
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(make_agent, start, approvers):  # noqa: ANN001, ANN201
    """A tier-3 agent's run parked before a side effect, with its approval request at L1."""
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="refund-1"))
    assert run.status == RunStatus.WAITING_APPROVAL
    return run, ApprovalRequest.objects.get(run=run)


def test_the_request_says_exactly_what_and_why(waiting) -> None:
    run, request = waiting
    assert (request.action, request.arguments) == ("test.effect", {"label": "refund-1"})
    assert (request.reasoning, request.confidence) == ("the parcel arrived broken", 0.7)
    assert request.reasoning_step == 1 and request.step_seq == 2
    assert request.policy.ref == "global v1" and "a human must decide" in request.policy_decision["explain"]
    assert request.level == 1 and request.escalation_policy.name == "Alpha approvals"
    assert request.deadline > request.created_at
    assert not Refund.objects.exists()


def test_approval_resumes_the_run_at_once(waiting, approvers, django_capture_on_commit_callbacks) -> None:
    run, request = waiting
    with django_capture_on_commit_callbacks() as callbacks:
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert any("run_execute" in repr(c) or "_enqueue" in repr(c) for c in callbacks), "the run is enqueued at once"
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED and run.result["refunded"] is True
    assert Refund.objects.get().ticket_ref == "refund-1"
    request.refresh_from_db()
    assert (request.status, request.decided_by, request.decided_at is not None) == (
        ApprovalStatus.APPROVED,
        approvers["ana"],
        True,
    )
    assert AuditEvent.objects.filter(action="approval.approve", object_id=str(request.pk)).exists()
    approval_step = Step.objects.get(run=run, kind=StepKind.APPROVAL)
    assert approval_step.output["decided_by"] == "ana" and approval_step.status == StepStatus.SUCCEEDED


def test_approve_with_edits_executes_the_edited_arguments_and_records_both(waiting, approvers) -> None:
    run, request = waiting
    approval_decide(
        actor=Actor.for_user(approvers["ben"]),
        request=request,
        approve=True,
        edited_arguments={"label": "refund-1-halved"},
    )
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED_WITH_EDITS
    assert request.arguments == {"label": "refund-1"} and request.edited_arguments == {"label": "refund-1-halved"}
    execute(run)
    assert Refund.objects.get().ticket_ref == "refund-1-halved"
    assert Step.objects.get(run=run, kind=StepKind.TOOL).input == {"label": "refund-1-halved"}


def test_edits_the_tool_would_refuse_are_refused_and_change_nothing(waiting, approvers) -> None:
    run, request = waiting
    with pytest.raises(ValidationError, match="test.effect would refuse these arguments"):
        approval_decide(
            actor=Actor.for_user(approvers["ana"]), request=request, approve=True, edited_arguments={"label": 42}
        )
    request.refresh_from_db()
    assert request.is_pending


def test_rejection_takes_the_agents_rejection_path(waiting, approvers) -> None:
    run, request = waiting
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=False, reason="already refunded")
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result == {"refunded": False, "why": "rejected by ana: already refunded"}
    assert not Refund.objects.exists()


def test_rejecting_needs_a_reason(waiting, approvers) -> None:
    _, request = waiting
    with pytest.raises(ValidationError, match="Say why you reject it"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=False, reason="  ")
    request.refresh_from_db()
    assert request.is_pending


def test_the_second_approver_hears_who_decided(waiting, approvers) -> None:
    _, request = waiting
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    with pytest.raises(AlreadyDecided, match="Already approved by ana"):
        approval_decide(actor=Actor.for_user(approvers["ben"]), request=request, approve=False, reason="no")


@pytest.mark.django_db(transaction=True)
def test_two_approvers_racing_get_exactly_one_decision(make_agent, start, approvers) -> None:
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="race"))
    request = ApprovalRequest.objects.get(run=run)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def decide(name: str, approve: bool) -> None:
        barrier.wait()
        try:
            approval_decide(actor=Actor.for_user(approvers[name]), request=request, approve=approve, reason="race")
            outcomes[name] = "decided"
        except AlreadyDecided as exc:
            outcomes[name] = exc.messages[0]
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=decide, args=("ana", True)),
        threading.Thread(target=decide, args=("ben", False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, outcome in outcomes.items() if outcome == "decided"]
    assert len(winners) == 1, outcomes
    loser = ({"ana", "ben"} - set(winners)).pop()
    assert outcomes[loser].startswith("Already ") and outcomes[loser].endswith(f"by {winners[0]}.")
    request.refresh_from_db()
    assert request.decided_by.username == winners[0]
    assert Step.objects.get(run=run, kind=StepKind.APPROVAL).output["decided_by"] == winners[0]


def test_only_the_current_levels_group_may_decide(waiting, approvers) -> None:
    _, request = waiting
    with pytest.raises(PermissionDenied, match="at level L1, decided by alpha L1; you are not in it"):
        approval_decide(actor=Actor.for_user(approvers["cleo"]), request=request, approve=True)
    request.refresh_from_db()
    assert request.is_pending


def test_separation_of_duties(make_agent, approvers, django_capture_on_commit_callbacks) -> None:
    from fleet.services import run_create

    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    with django_capture_on_commit_callbacks():
        run, _ = run_create(actor=Actor.for_user(approvers["ana"]), agent=agent, input={"label": "mine"})
    run = execute(run)
    request = ApprovalRequest.objects.get(run=run)
    with pytest.raises(PermissionDenied, match="You started this run"):
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    approval_decide(actor=Actor.for_user(approvers["ben"]), request=request, approve=True)


def test_separation_of_duties_can_be_switched_off_per_team(
    make_agent, approvers, django_capture_on_commit_callbacks
) -> None:
    from approvals.models import EscalationPolicy
    from fleet.services import run_create

    EscalationPolicy.objects.update(separation_of_duties=False)
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    with django_capture_on_commit_callbacks():
        run, _ = run_create(actor=Actor.for_user(approvers["ana"]), agent=agent, input={"label": "mine"})
    request = ApprovalRequest.objects.get(run=execute(run))
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)


@pytest.mark.parametrize("case", matrix(allowed={Role.APPROVER, Role.ADMIN}), ids=str)
def test_decision_endpoint_follows_the_matrix(case, client, team, other_team, make_agent, start, approvers) -> None:
    """Role × team; approvers must also be in the level's group: the case's user is added to L1."""
    from django.contrib.auth.models import Group

    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="matrix"))
    request = ApprovalRequest.objects.get(run=run)
    user = case.make_user(team=team, other_team=other_team)
    user.groups.add(Group.objects.get(name=f"{team.slug} L1"))
    client.force_login(user)
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision", {"decision": "approve"}, content_type="application/json"
    )
    assert response.status_code == case.status(ok=200)
    request.refresh_from_db()
    assert (request.status == ApprovalStatus.APPROVED) is (case.outcome == "ok")


def test_a_second_decision_over_the_api_is_a_409_naming_the_first(client, waiting, approvers) -> None:
    _, request = waiting
    client.force_login(approvers["ana"])
    assert (
        client.post(
            f"/api/v1/approvals/{request.pk}/decision", {"decision": "approve"}, content_type="application/json"
        ).status_code
        == 200
    )
    client.force_login(approvers["ben"])
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "reject", "reason": "x"},
        content_type="application/json",
    )
    assert response.status_code == 409 and response.json() == {"detail": "Already approved by ana."}


def test_deciding_a_request_its_run_no_longer_waits_for_is_a_409_and_changes_nothing(
    client, waiting, approvers
) -> None:
    """A request stranded by a crash under an older release: its run failed meanwhile."""
    run, request = waiting
    Step.objects.filter(run=run, kind=StepKind.APPROVAL).update(status=StepStatus.STARTED)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    client.force_login(approvers["ana"])
    response = client.post(
        f"/api/v1/approvals/{request.pk}/decision", {"decision": "approve"}, content_type="application/json"
    )
    assert response.status_code == 409
    assert response.json() == {"detail": f"Run #{run.pk} does not wait for this approval: it is failed."}
    request.refresh_from_db()
    assert request.status == ApprovalStatus.PENDING and request.decided_by is None
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED


def test_cancelling_the_run_withdraws_its_request(waiting) -> None:
    from fleet.services import run_cancel

    run, request = waiting
    run_cancel(actor=Actor.system("operator"), run=run, reason="customer withdrew")
    request.refresh_from_db()
    assert request.status == ApprovalStatus.CANCELLED and request.decision_reason == "customer withdrew"
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_an_operator_resume_no_longer_approves(waiting) -> None:
    from fleet.services import run_resume

    run, _ = waiting
    with pytest.raises(ValidationError, match="decide it in the approvals queue"):
        run_resume(actor=Actor.system("operator"), run=run)


def test_tier_two_actions_are_sampled_for_review_after_the_fact(make_agent, start, approvers) -> None:
    """About 15 % of a tier-2 agent's unattended side effects get a (non-blocking) review."""
    agent = make_agent("test-effects", tier=Tier.SUPERVISED)
    for n in range(40):
        run = execute(start(agent, labels=[f"s{n}"]))
        assert run.status == RunStatus.SUCCEEDED
    reviews = ApprovalRequest.objects.filter(kind="review")
    assert 2 <= reviews.count() <= 20
    review = reviews.first()
    assert review.is_pending and review.run.status == RunStatus.SUCCEEDED
