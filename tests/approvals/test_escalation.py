"""Silence is never approval: deadlines escalate L1 → L2 → L3, then expire as rejected; the
sweeper is safe to run twice or in parallel; each notification goes out exactly once."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.db import connections
from django.utils import timezone

from approvals.models import ApprovalEvent, ApprovalRequest, ApprovalStatus, EscalationPolicy, Notification, OnExpiry
from approvals.services import approvals_sweep, escalation_policy_save
from approvals.tasks import notification_deliver
from cockpit.audit import Actor
from fleet.models import RunStatus, Tier
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(make_agent, start, approvers, django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    with django_capture_on_commit_callbacks(execute=True):  # notifications go out (eagerly)
        run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="slow"))
    return run, ApprovalRequest.objects.get(run=run)


def sweep_at(moment, django_capture_on_commit_callbacks) -> int:  # noqa: ANN001
    with time_machine.travel(moment, tick=False), django_capture_on_commit_callbacks(execute=True):
        return approvals_sweep()


def test_deadlines_escalate_through_every_level_then_expire_as_rejected(
    waiting, approvers, django_capture_on_commit_callbacks
) -> None:
    run, request = waiting
    start = request.created_at
    assert sweep_at(start + timedelta(seconds=59), django_capture_on_commit_callbacks) == 0
    assert sweep_at(start + timedelta(seconds=61), django_capture_on_commit_callbacks) == 1
    request.refresh_from_db()
    assert (request.level, request.status) == (2, ApprovalStatus.PENDING)
    assert request.deadline == start + timedelta(seconds=61 + 120)
    sweep_at(start + timedelta(seconds=182), django_capture_on_commit_callbacks)
    request.refresh_from_db()
    assert request.level == 3
    sweep_at(start + timedelta(seconds=182 + 301), django_capture_on_commit_callbacks)
    request.refresh_from_db()
    assert request.status == ApprovalStatus.EXPIRED
    assert request.decided_by_label == "escalation sweeper"
    assert list(request.events.values_list("kind", "new")) == [
        ("created", "pending"),
        ("notified", "email"),
        ("escalated", "L2"),
        ("notified", "email"),
        ("escalated", "L3"),
        ("notified", "email"),
        ("status", "expired"),
    ]
    # The run was never approved: it takes its rejection path.
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED and run.result["refunded"] is False
    assert "no decision within the SLA of every level" in run.result["why"]


def test_a_request_its_run_stopped_waiting_for_expires_alone_and_holds_up_no_other(
    make_agent, start, approvers, django_capture_on_commit_callbacks
) -> None:
    """A request stranded by a crash under an older release (its run failed meanwhile) is in the
    same sweep batch as a healthy one: both expire, and the healthy run takes its rejection path."""
    from fleet.models import Run, Step, StepKind, StepStatus

    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    stranded, healthy = (execute(start(agent, label=label)) for label in ("stranded", "healthy"))
    Step.objects.filter(run=stranded, kind=StepKind.APPROVAL).update(status=StepStatus.STARTED)
    Run.objects.filter(pk=stranded.pk).update(status=RunStatus.FAILED, error="approve test.effect was rejected")
    ApprovalRequest.objects.update(level=3)  # the last level
    moment = timezone.now() + timedelta(seconds=301)
    assert sweep_at(moment, django_capture_on_commit_callbacks) == 2
    assert set(ApprovalRequest.objects.values_list("status", flat=True)) == {ApprovalStatus.EXPIRED}
    assert Run.objects.get(pk=stranded.pk).status == RunStatus.FAILED  # left as it was
    healthy = execute(healthy)
    assert healthy.status == RunStatus.SUCCEEDED and healthy.result["refunded"] is False


def test_each_level_is_emailed_its_own_approvers_once(waiting, approvers, django_capture_on_commit_callbacks) -> None:
    _, request = waiting
    assert [sorted(m.to) for m in mail.outbox] == [["ana@example.com", "ben@example.com"]]
    assert "Approval needed (L1)" in mail.outbox[0].subject and "test.effect" in mail.outbox[0].body
    sweep_at(request.created_at + timedelta(seconds=61), django_capture_on_commit_callbacks)
    assert [sorted(m.to) for m in mail.outbox][1:] == [["cleo@example.com"]]


def test_a_notification_is_sent_once_however_often_the_task_runs(waiting) -> None:
    _, request = waiting
    notification = Notification.objects.get(request=request, level=1, channel="email")
    assert notification.status == "sent" and len(mail.outbox) == 1
    for _ in range(3):  # redelivered, retried, duplicated
        assert notification_deliver.apply(args=[notification.pk]).get() == "already sent or in flight"
    assert len(mail.outbox) == 1


def test_the_sweeper_is_idempotent(waiting, django_capture_on_commit_callbacks) -> None:
    _, request = waiting
    moment = request.created_at + timedelta(seconds=61)
    assert sweep_at(moment, django_capture_on_commit_callbacks) == 1
    assert sweep_at(moment, django_capture_on_commit_callbacks) == 0  # beat restarted, ran it again
    request.refresh_from_db()
    assert request.level == 2
    assert ApprovalEvent.objects.filter(request=request, kind="escalated").count() == 1
    assert Notification.objects.filter(request=request, level=2).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweepers_escalate_each_request_once(make_agent, start, approvers) -> None:
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    requests = []
    for n in range(12):
        run = execute(start(agent, label=f"c{n}"))
        requests.append(ApprovalRequest.objects.get(run=run))
    moment = max(r.deadline for r in requests) + timedelta(seconds=1)
    counts: list[int] = []

    def sweep() -> None:
        try:
            with time_machine.travel(moment, tick=False):
                counts.append(approvals_sweep(batch=5))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(c or 0 for c in counts) == 12  # (None: another sweep was running)
    assert ApprovalEvent.objects.filter(kind="escalated").count() == 12
    assert set(ApprovalRequest.objects.values_list("level", flat=True)) == {2}


def test_expiry_can_cancel_the_whole_run(waiting, django_capture_on_commit_callbacks) -> None:
    run, request = waiting
    EscalationPolicy.objects.update(on_expiry=OnExpiry.CANCEL_RUN)
    far = request.created_at
    for seconds in (61, 182, 483):
        sweep_at(far + timedelta(seconds=seconds), django_capture_on_commit_callbacks)
    run.refresh_from_db()
    request.refresh_from_db()
    assert request.status == ApprovalStatus.EXPIRED
    assert run.status == RunStatus.CANCELLED and "expired as rejected" in run.status_reason


def test_a_decision_before_the_deadline_stops_the_clock(
    waiting, approvers, django_capture_on_commit_callbacks
) -> None:
    from approvals.services import approval_decide

    _, request = waiting
    approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
    assert sweep_at(request.created_at + timedelta(hours=1), django_capture_on_commit_callbacks) == 0
    request.refresh_from_db()
    assert request.status == ApprovalStatus.APPROVED and request.level == 1


def test_the_webhook_is_slack_compatible_and_signed(
    make_agent, start, team, approvers, django_capture_on_commit_callbacks
) -> None:
    from tests.support.receivers import Receiver

    receiver = Receiver()
    try:
        escalation_policy_save(
            actor=Actor.system("tests"),
            team=team,
            name="Webhooked",
            levels=[
                {
                    "group": None,
                    "sla_seconds": 60,
                    "channels": ["webhook"],
                    "webhook_url": receiver.url,
                    "webhook_secret": "s3cret",
                }
            ],
        )
        with django_capture_on_commit_callbacks(execute=True):
            run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="hooked"))
        request = ApprovalRequest.objects.get(run=run)
        [received] = receiver.requests
        body = received.body
        payload = json.loads(body)
        assert "Approval needed (L1)" in payload["text"] and payload["blocks"][0]["type"] == "section"
        assert payload["cockpit"]["id"] == request.pk
        timestamp = received.headers["x-cockpit-timestamp"]
        expected = hmac.new(b"s3cret", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        assert received.headers["x-cockpit-signature"] == f"sha256={expected}"
    finally:
        receiver.stop()


def test_a_failed_webhook_is_retried_and_not_duplicated(
    make_agent, start, team, approvers, django_capture_on_commit_callbacks
) -> None:
    from tests.support.receivers import Receiver

    receiver = Receiver(statuses=[503, 200])
    try:
        escalation_policy_save(
            actor=Actor.system("tests"),
            team=team,
            name="Flaky hook",
            levels=[{"group": None, "sla_seconds": 60, "channels": ["webhook"], "webhook_url": receiver.url}],
        )
        with django_capture_on_commit_callbacks(execute=True):
            run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="flaky"))
        notification = Notification.objects.get(request__run=run, channel="webhook")
        assert notification.status == "failed" and "503" in notification.last_error
        assert notification_deliver.apply(args=[notification.pk]).get() == "sent"
        assert notification_deliver.apply(args=[notification.pk]).get() == "already sent or in flight"
        assert len(receiver.requests) == 2  # the failed attempt and the one that worked
    finally:
        receiver.stop()


def test_escalation_lands_within_a_second_of_the_deadline(waiting, django_capture_on_commit_callbacks) -> None:
    """The sweeper runs every second (beat); a request due now is escalated on the next pass."""
    from cockpit.schedule import BEAT_SCHEDULE

    assert BEAT_SCHEDULE["approvals-escalation-sweep"]["schedule"] <= 1.0
    _, request = waiting
    ApprovalRequest.objects.filter(pk=request.pk).update(deadline=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert approvals_sweep() == 1


def test_an_escalation_shows_on_the_runs_timeline_and_in_its_trace(
    waiting, django_capture_on_commit_callbacks
) -> None:
    from traces.models import Span, Trace
    from traces.narrative import narrate

    run, request = waiting
    sweep_at(request.created_at + timedelta(seconds=61), django_capture_on_commit_callbacks)
    note = run.events.get(kind="note", data__escalated_to=2)
    assert note.actor_label == "escalation sweeper" and "escalated to L2" in note.reason
    span = Span.objects.get(trace_id=run.trace_id, name="escalation L2")
    assert (span.attributes["cockpit.escalation.level"], span.attributes["cockpit.escalation.from"]) == (2, 1)
    assert span.run_id == run.pk
    told = narrate(Trace.objects.get(trace_id=run.trace_id), list(Span.objects.filter(trace_id=run.trace_id)))
    assert any("escalated to L2" in sentence.text for sentence in told)
