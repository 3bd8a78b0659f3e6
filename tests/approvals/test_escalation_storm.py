"""A storm of deadlines: the sweeper moves every request exactly one level per deadline, in bulk
(its statements do not grow with the number of requests), hands the notifications over in one
message, writes the audit rows of a batch at once, and runs one sweep at a time."""

from __future__ import annotations

import functools
import threading
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.models import ApprovalEvent, ApprovalRequest, ApprovalStatus, Notification
from approvals.services import approval_request_create, approvals_sweep, escalation_policy_save
from approvals.tasks import escalation_sweep
from cockpit.audit import Actor, audit_verify
from cockpit.celery import app as celery_app
from cockpit.models import AuditEvent
from cockpit.roles import Role
from cockpit.services import group_members_set
from fleet.models import AgentKind, Tier
from tests.factories import UserFactory
from tests.support.receivers import Receiver

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")
SLA = 5


@pytest.fixture
def four_levels(team):  # noqa: ANN001, ANN201
    """Four 5-second levels, email at each, each level its own approver."""
    groups = []
    for level in range(1, 5):
        user = UserFactory(username=f"l{level}", email=f"l{level}@example.com", roles=[(team, Role.APPROVER)])
        group, _ = Group.objects.get_or_create(name=f"storm L{level}")
        group_members_set(actor=SYSTEM, group=group, users=[user])
        groups.append(group)
    return escalation_policy_save(
        actor=SYSTEM,
        team=team,
        name="Storm",
        levels=[{"group": g, "sla_seconds": SLA, "channels": ["email"]} for g in groups],
    )


@pytest.fixture
def external(make_agent):  # noqa: ANN001, ANN201
    return make_agent("storm-agent", kind=AgentKind.EXTERNAL, tier=Tier.ASSISTED)


def ask(agent, count: int, **extra: object) -> list[ApprovalRequest]:  # noqa: ANN001
    return [
        approval_request_create(
            actor=SYSTEM, agent=agent, action="crm.merge_accounts", arguments={"n": n}, risk="high", **extra
        )[0]
        for n in range(count)
    ]


def sweep_at(moment, capture, **kwargs: object) -> int | None:  # noqa: ANN001
    with time_machine.travel(moment, tick=False), capture(execute=True):
        return approvals_sweep(**kwargs)


def test_a_storm_moves_each_request_one_level_per_deadline_and_never_approves(
    four_levels, external, django_capture_on_commit_callbacks
) -> None:
    receiver = Receiver()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            requests = ask(external, 30) + ask(external, 5, callback_url=receiver.url)
        start = max(r.created_at for r in requests)
        assert len(mail.outbox) == 35  # L1, at once
        # Batches of 8 across 35 requests: the sweep claims batch after batch until none is due.
        for step in range(1, 5):
            moment = start + timedelta(seconds=step * (SLA + 0.5))
            assert sweep_at(moment, django_capture_on_commit_callbacks, batch=8) == 35
            assert sweep_at(moment, django_capture_on_commit_callbacks, batch=8) == 0  # nothing twice
        assert set(ApprovalRequest.objects.values_list("status", "decided_by_label")) == {
            (ApprovalStatus.EXPIRED, "escalation sweeper")
        }
        for request in requests:
            history = list(
                ApprovalEvent.objects.filter(request=request)
                .exclude(kind=ApprovalEvent.Kind.NOTIFIED)
                .values_list("kind", "new")
            )
            assert history == [
                ("created", "pending"),
                ("escalated", "L2"),
                ("escalated", "L3"),
                ("escalated", "L4"),
                ("status", "expired"),
            ]
        # Exactly one email per request and level, to that level's approver; one callback each.
        emails = Notification.objects.filter(channel="email")
        assert emails.count() == 35 * 4 and set(emails.values_list("status", flat=True)) == {"sent"}
        assert sorted(m.to[0] for m in mail.outbox) == sorted(
            f"l{lv}@example.com" for lv in range(1, 5) for _ in range(35)
        )
        assert len(receiver.requests) == 5
        assert Notification.objects.filter(channel="callback", status="sent").count() == 5
        # One audit row per expiry, and the chain holds.
        expired = AuditEvent.objects.filter(action="approval.expire")
        assert sorted(map(int, expired.values_list("object_id", flat=True))) == sorted(r.pk for r in requests)
        assert audit_verify().intact
    finally:
        receiver.stop()


def test_an_escalation_moves_the_deadline_from_the_sweep_not_from_the_old_deadline(
    four_levels, external, django_capture_on_commit_callbacks
) -> None:
    [request] = ask(external, 1)
    moment = request.deadline + timedelta(seconds=3)
    sweep_at(moment, django_capture_on_commit_callbacks)
    request.refresh_from_db()
    assert (request.level, request.deadline) == (2, moment + timedelta(seconds=SLA))
    event = request.events.get(kind="escalated")
    assert event.at == moment and event.reason == "no decision within the SLA of L1"


def _statements_and_messages(agent, count: int, level: int, capture) -> tuple[int, int]:  # noqa: ANN001
    """The statements a sweep of ``count`` due requests at ``level`` runs, and how many task
    messages it sends after the commit."""
    requests = ask(agent, count)
    ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).update(level=level)
    moment = max(r.deadline for r in requests) + timedelta(seconds=1)
    with (
        time_machine.travel(moment, tick=False),
        capture(execute=False) as callbacks,
        CaptureQueriesContext(connection) as queries,
    ):
        assert approvals_sweep() == count
    tasks = [
        c
        for c in callbacks
        if isinstance(c, functools.partial) and getattr(c.func, "__self__", None) in celery_app.tasks.values()
    ]
    return len(queries), len(tasks)


@pytest.mark.parametrize("level", [1, 4], ids=["escalate", "expire"])
def test_a_sweep_works_in_bulk_whatever_the_number_of_requests(
    four_levels, external, level, django_capture_on_commit_callbacks
) -> None:
    few = _statements_and_messages(external, 3, level, django_capture_on_commit_callbacks)
    many = _statements_and_messages(external, 40, level, django_capture_on_commit_callbacks)
    assert few == many
    statements, messages = many
    assert messages <= 1  # the notifications of a batch are handed over in one message


def test_notifications_never_queue_ahead_of_the_sweeper() -> None:
    from cockpit.schedule import BEAT_SCHEDULE

    route = celery_app.amqp.router.route
    assert route({}, "approvals.tasks.escalation_sweep")["queue"].name == "escalations"
    for name in ("notification_deliver", "notifications_deliver_many", "notifications_resend_stuck"):
        assert route({}, f"approvals.tasks.{name}")["queue"].name == "notifications"
    # A sweep still queued when the next one is due is dropped, not run late.
    entry = BEAT_SCHEDULE["approvals-escalation-sweep"]
    assert entry["options"]["expires"] <= entry["schedule"]


@pytest.mark.django_db(transaction=True)
def test_one_sweep_at_a_time(four_levels, external, on_postgres) -> None:
    if not on_postgres:
        pytest.skip("SQLite serialises writers: two sweeps cannot overlap there")
    from approvals.services import _sweep_lock

    [request] = ask(external, 1)
    ApprovalRequest.objects.filter(pk=request.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    holding, release = threading.Event(), threading.Event()

    def another_sweep() -> None:
        try:
            with _sweep_lock() as acquired:
                assert acquired
                holding.set()
                release.wait(30)
        finally:
            connections.close_all()

    other = threading.Thread(target=another_sweep)
    other.start()
    try:
        assert holding.wait(30)
        # Beat's next tick while a sweep runs: returns at once, moves nothing.
        assert escalation_sweep.apply().get() is None
        request.refresh_from_db()
        assert request.level == 1
    finally:
        release.set()
        other.join(30)
    assert escalation_sweep.apply().get() == 1
    request.refresh_from_db()
    assert request.level == 2
    assert ApprovalEvent.objects.filter(request=request, kind="escalated").count() == 1


def test_an_email_sent_after_the_request_moved_on_still_goes_to_its_own_level(
    four_levels, external, django_capture_on_commit_callbacks
) -> None:
    """In a storm the L1 email may leave after the request reached L2: it is still L1's."""
    from approvals.tasks import notification_deliver

    with django_capture_on_commit_callbacks(execute=False):
        [request] = ask(external, 1)
    with time_machine.travel(request.deadline + timedelta(seconds=1), tick=False):
        with django_capture_on_commit_callbacks(execute=False):
            assert approvals_sweep() == 1
        for level in (1, 2):
            notification = Notification.objects.get(request=request, level=level, channel="email")
            assert notification_deliver.apply(args=[notification.pk]).get() == "sent"
    assert [(m.to, m.subject.split(":")[0]) for m in mail.outbox] == [
        (["l1@example.com"], "[Cockpit] Approval needed (L1)"),
        (["l2@example.com"], "[Cockpit] Approval needed (L2)"),
    ]
