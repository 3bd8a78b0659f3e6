"""One request's pane, and deciding from it: approve, approve with edits, reject (and a review's
"looks right" / "flag a problem"); who may, what they are told when they may not, when someone
was faster, or when their input is refused — which changes nothing."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.models import ApprovalKind, ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide
from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.roles import Role
from fleet.models import RunStatus, Tier
from tests.approvals.test_views_queue import ask, run_started_by
from tests.fleet.conftest import execute
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "approval-pane"}


def url(name: str, request: ApprovalRequest) -> str:
    return reverse(name, args=[request.pk])


def status_of(request: ApprovalRequest) -> str:
    return ApprovalRequest.objects.get(pk=request.pk).status


@pytest.fixture
def agent(make_agent):  # noqa: ANN001, ANN201
    return make_agent("test-approval", tier=Tier.ASSISTED)


@pytest.fixture
def waiting(make_agent, start, approvers):  # noqa: ANN001, ANN201
    """A real run parked before test.effect, its request at L1 (ana and ben decide)."""
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="refund-1"))
    assert run.status == RunStatus.WAITING_APPROVAL
    return ApprovalRequest.objects.get(run=run)


# --- The pane ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_the_pane_is_for_anyone_who_sees_the_team(case, client, agent, team, other_team) -> None:
    request = ask(agent)
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.get(url("approval-detail", request)).status_code == case.status(ok=200)
    assert client.get(url("approval-detail", request), **HTMX).status_code == case.status(ok=200)


def test_the_pane_says_what_why_how_sure_and_who_decides(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    response = client.get(url("approval-detail", waiting), **HTMX)
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="approval-pane"') and "<html" not in html
    # What exactly: the tool and its arguments, key by key.
    assert "<code>test.effect</code>" in html and "<code>label</code>" in html and "refund-1" in html
    # Why: the reasoning, the run (at the step with the reasoning) and its trace.
    assert "the parcel arrived broken" in html
    assert f"/fleet/runs/{waiting.run_id}/#step-{waiting.reasoning_step}" in html
    assert f'href="/traces/?team=&amp;q={waiting.run.trace_id}"' in html
    # How sure and how risky; why a person decides; which policies.
    assert "70 % sure" in html and "low risk" in html
    assert "a human must decide" in html and "global v1" in html
    # Who decides: the path with the current level, its clock, and the decision forms.
    current = html.split('aria-current="step"')[1].split("</li>")[0]
    assert "alpha L1" in current and "1 min" in current
    assert "alpha L2" in html and "alpha L3" in html and "Reject the action" in html
    assert "data-countdown" in html and 'data-sla="60"' in html
    assert (
        "data-approval-approve" in html and "data-approval-edit-input" in html and "data-approval-reject-input" in html
    )
    # The history.
    assert ">asked<" in html
    # Live: the pane refreshes when this request changes.
    assert f'data-live-match=\'{{"approval": "{waiting.pk}"}}\'' in html and 'data-live-on="approval.changed"' in html


def test_the_pane_shows_the_agents_record_for_this_action(client, agent, admin_user) -> None:
    for approve, edits in ((True, None), (True, None), (True, {"label": "other"}), (False, None)):
        past = ask(agent)
        approval_decide(
            actor=Actor.system("tests"), request=past, approve=approve, reason="no", edited_arguments=edits
        )
    ask(agent, action="test.read")  # another action: not part of this record
    request = ask(agent)
    client.force_login(admin_user)
    response = client.get(url("approval-detail", request))
    record = response.context["record"]
    assert (record.decided, record.approved, record.edited, record.rejected) == (4, 2, 1, 1)
    assert (record.approval_rate, record.edit_rate, record.rejection_rate) == (75.0, 25.0, 25.0)
    shown = " ".join(response.content.decode().split('class="record"')[1].split("</dl>")[0].split())
    # Each as a rate with its count: approved 3 of 4 (one with edits), rejected 1.
    assert '<dt>Approved</dt><dd>75 %<span class="record-n">3</span>' in shown
    assert '<dt>With edits</dt><dd>25 %<span class="record-n">1</span>' in shown
    assert '<dt>Rejected</dt><dd>25 %<span class="record-n">1</span>' in shown


def test_pane_queries_do_not_grow_with_history(client, agent, admin_user, django_assert_max_num_queries) -> None:
    request = ask(agent)
    client.force_login(admin_user)
    client.get(url("approval-detail", request))
    with CaptureQueriesContext(connection) as few:
        client.get(url("approval-detail", request))
    for _ in range(15):
        approval_decide(actor=Actor.system("tests"), request=ask(agent), approve=True)
    with django_assert_max_num_queries(len(few)):
        client.get(url("approval-detail", request))


def test_an_edited_decision_shows_what_changed(client, waiting, approvers) -> None:
    approval_decide(
        actor=Actor.for_user(approvers["ana"]), request=waiting, approve=True, edited_arguments={"label": "halved"}
    )
    client.force_login(approvers["ben"])
    html = client.get(url("approval-detail", waiting)).content.decode()
    changed = html.split('class="arg-changed"')[1].split("</tr>")[0]
    assert "refund-1" in changed and "halved" in changed
    assert "Approved with edits" in html and "by <strong>ana</strong>" in html
    assert "data-approval-approve" not in html  # decided: nothing left to decide


def test_someone_who_may_not_decide_reads_why(client, waiting, approvers) -> None:
    client.force_login(approvers["cleo"])
    html = client.get(url("approval-detail", waiting)).content.decode()
    assert "You cannot decide this request." in html
    assert "decided by alpha L1; you are not in it" in html
    assert "data-approval-approve" not in html


# --- Deciding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.APPROVER, Role.ADMIN}, org=True), ids=str)
def test_approving_follows_the_matrix(case, client, agent, team, other_team) -> None:
    request = ask(agent)  # no escalation policy: any approver of the team
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(url("approval-approve", request))
    assert response.status_code == case.status(ok=302)
    assert status_of(request) == (ApprovalStatus.APPROVED if case.outcome == "ok" else ApprovalStatus.PENDING)
    if case.outcome == "forbidden":
        assert "You are not an approver of Alpha." in response.content.decode()


@pytest.mark.parametrize("case", matrix(allowed={Role.APPROVER, Role.ADMIN}, org=True), ids=str)
def test_rejecting_follows_the_matrix(case, client, agent, team, other_team) -> None:
    request = ask(agent)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(url("approval-reject", request), {"reason": "already refunded"}, **HTMX)
    assert response.status_code == case.status(ok=200)
    assert status_of(request) == (ApprovalStatus.REJECTED if case.outcome == "ok" else ApprovalStatus.PENDING)


@pytest.mark.parametrize("case", matrix(allowed={Role.APPROVER, Role.ADMIN}, org=True), ids=str)
def test_approving_with_edits_follows_the_matrix(case, client, agent, team, other_team) -> None:
    request = ask(agent)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(url("approval-approve-with-edits", request), {"arguments": '{"label": "edited"}'}, **HTMX)
    assert response.status_code == case.status(ok=200)
    request.refresh_from_db()
    if case.outcome == "ok":
        assert (request.status, request.edited_arguments) == (ApprovalStatus.APPROVED_WITH_EDITS, {"label": "edited"})
    else:
        assert (request.status, request.edited_arguments) == (ApprovalStatus.PENDING, None)


def test_approving_resumes_the_run_and_answers_with_the_pane(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    response = client.post(url("approval-approve", waiting), {"note": "checked the order"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="approval-pane"') and "data-approval-outcome" in html
    assert "Approved" in html and "by <strong>ana</strong>" in html and "checked the order" in html
    assert json.loads(response["HX-Trigger"])["approvals:decided"]["approval"] == waiting.pk
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decided_by, waiting.decision_reason) == (
        "approved",
        approvers["ana"],
        "checked the order",
    )
    assert waiting.run.status == RunStatus.RUNNING
    assert AuditEvent.objects.filter(action="approval.approve", object_id=str(waiting.pk), actor_label="ana").exists()


def test_a_plain_form_post_goes_back_to_the_queue_with_a_message(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    response = client.post(url("approval-reject", waiting), {"reason": "already refunded"}, follow=True)
    assert response.redirect_chain == [(reverse("approvals"), 302)]
    assert f"Rejected: #{waiting.pk} test.effect of Test-Approval." in response.content.decode()
    assert status_of(waiting) == ApprovalStatus.REJECTED


def test_approvers_outside_the_levels_group_are_refused_with_the_reason(client, waiting, approvers) -> None:
    client.force_login(approvers["cleo"])
    response = client.post(url("approval-approve", waiting))
    assert response.status_code == 403
    assert "This request is at level L1, decided by alpha L1; you are not in it." in response.content.decode()
    htmx = client.post(url("approval-approve", waiting), **HTMX)
    assert htmx.status_code == 403 and "data-approval-refused" in htmx.content.decode()
    assert "you are not in it" in htmx.content.decode()
    assert status_of(waiting) == ApprovalStatus.PENDING


def test_whoever_started_the_run_may_not_approve_it(client, agent, approvers) -> None:
    request = ask(agent, run=run_started_by(approvers["ana"], agent))
    client.force_login(approvers["ana"])
    response = client.post(url("approval-approve", request), **HTMX)
    assert response.status_code == 403
    assert "You started this run: another approver must decide its actions" in response.content.decode()
    assert status_of(request) == ApprovalStatus.PENDING
    client.force_login(approvers["ben"])
    assert client.post(url("approval-approve", request), **HTMX).status_code == 200


def test_the_second_approver_hears_who_was_faster(client, waiting, approvers) -> None:
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=waiting, approve=True)
    client.force_login(approvers["ben"])
    response = client.post(url("approval-reject", waiting), {"reason": "too much"}, **HTMX)
    assert response.status_code == 409
    html = response.content.decode()
    assert "Already approved by ana." in html and "data-approval-conflict" in html
    assert "Your decision was not recorded." in html
    plain = client.post(url("approval-reject", waiting), {"reason": "too much"}, follow=True)
    assert plain.redirect_chain[-1][0] == reverse("approvals") and "Already approved by ana." in plain.content.decode()
    waiting.refresh_from_db()
    assert (waiting.status, waiting.decision_reason) == (ApprovalStatus.APPROVED, "")


def test_the_pane_refreshed_after_someone_else_decided_says_who(client, waiting, approvers) -> None:
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=waiting, approve=True)
    client.force_login(approvers["ben"])  # the live refresh of ben's open pane
    html = client.get(url("approval-detail", waiting), **HTMX).content.decode()
    outcome = html.split("data-approval-outcome>")[1].split("</div>")[0]
    assert "already decided by <strong>ana</strong>" in " ".join(outcome.split())
    assert "data-approval-approve" not in html
    client.force_login(approvers["ana"])  # ana's own decision is hers, not "already" anyone's
    mine = client.get(url("approval-detail", waiting), **HTMX).content.decode()
    assert "already decided" not in mine and "by <strong>ana</strong>" in mine


def test_rejecting_needs_a_reason_and_changes_nothing_without_one(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    for data, headers, status in (({"reason": "   "}, HTMX, 422), ({}, {}, 400)):
        response = client.post(url("approval-reject", waiting), data, **headers)
        assert response.status_code == status
        html = response.content.decode()
        assert "Say why you reject it" in html and "data-approval-reject" in html
        assert "data-approval-reject open" in html  # the form stays open where the error is
    assert status_of(waiting) == ApprovalStatus.PENDING
    assert not AuditEvent.objects.filter(action="approval.reject").exists()


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ('{"label": ', "This is not valid JSON"),
        ('["refund-1"]', "The arguments are a JSON object"),
        ('{"label": 42}', "test.effect would refuse these arguments: 42 is not of type"),
        ("", "This field is required."),
    ],
)
def test_bad_edits_are_refused_with_the_typed_text_kept(client, waiting, approvers, typed, message) -> None:
    client.force_login(approvers["ana"])
    response = client.post(url("approval-approve-with-edits", waiting), {"arguments": typed}, **HTMX)
    assert response.status_code == 422
    html = response.content.decode()
    assert message in html and "data-approval-errors" in html
    assert f">{typed}</textarea>" in html.replace("&quot;", '"')
    waiting.refresh_from_db()
    assert waiting.status == ApprovalStatus.PENDING and waiting.edited_arguments is None


def test_approving_with_edits_runs_the_edited_arguments(client, waiting, approvers) -> None:
    client.force_login(approvers["ben"])
    response = client.post(
        url("approval-approve-with-edits", waiting),
        {"arguments": '{"label": "refund-1-halved"}', "note": "half"},
        **HTMX,
    )
    assert response.status_code == 200
    waiting.refresh_from_db()
    assert waiting.status == ApprovalStatus.APPROVED_WITH_EDITS
    assert (waiting.arguments, waiting.edited_arguments) == ({"label": "refund-1"}, {"label": "refund-1-halved"})
    assert "refund-1-halved" in response.content.decode() and "arg-changed" in response.content.decode()


def test_the_edit_form_starts_with_the_arguments(client, waiting, approvers) -> None:
    client.force_login(approvers["ana"])
    html = client.get(url("approval-detail", waiting)).content.decode()
    textarea = html.split('id="edit-arguments"')[1].split("</textarea>")[0]
    assert json.loads(textarea.split(">", 1)[1].replace("&quot;", '"')) == {"label": "refund-1"}


def test_a_review_is_labelled_after_the_fact(client, agent, admin_user) -> None:
    review = ask(agent, kind=ApprovalKind.REVIEW)
    client.force_login(admin_user)
    html = client.get(url("approval-detail", review)).content.decode()
    assert "Review after the fact" in html and "Looks right" in html and "Flag a problem" in html
    assert "Approve with edits" not in html and "What it did" in html
    response = client.post(url("approval-reject", review), {"reason": "wrong customer"}, **HTMX)
    assert response.status_code == 200 and "flagged as a problem" in response["HX-Trigger"]
    assert status_of(review) == ApprovalStatus.REJECTED


def test_decisions_are_posts(client, agent, admin_user) -> None:
    request = ask(agent)
    client.force_login(admin_user)
    for name in ("approval-approve", "approval-approve-with-edits", "approval-reject"):
        assert client.get(url(name, request)).status_code == 405
    assert status_of(request) == ApprovalStatus.PENDING


def test_anonymous_people_are_sent_to_sign_in(client, agent) -> None:
    request = ask(agent)
    for target in (url("approval-detail", request), url("approval-approve", request), reverse("approvals")):
        response = client.post(target) if "approve" in target else client.get(target)
        assert response.status_code == 302 and "/account/login/" in response["Location"]
    assert status_of(request) == ApprovalStatus.PENDING
