"""Approvals: how late escalations are with 10,000 pending requests falling due within a minute,
and how long the queue page takes with 10,000 pending."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

from tests.bench.util import percentile, summary_ms

TITLE = "Approvals: escalation lateness and the queue page at 10,000 pending"
PENDING = 10_000
WINDOW_SECONDS = 60


def _setup():  # noqa: ANN202
    from django.contrib.auth.models import Group

    from approvals.models import ApprovalRequest, EscalationPolicy
    from approvals.services import escalation_policy_save
    from cockpit.audit import Actor
    from cockpit.models import Team
    from cockpit.roles import Role
    from cockpit.services import group_members_set, membership_grant
    from fleet.models import Agent, AgentKind

    actor = Actor.system("bench")
    team, _ = Team.objects.get_or_create(slug="bench-approvals", defaults={"name": "Bench approvals"})
    agent, _ = Agent.objects.get_or_create(
        team=team, slug="bench-agent", defaults={"name": "Bench agent", "kind": AgentKind.EXTERNAL, "tier": 3}
    )
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-approver")
    membership_grant(actor=actor, user=user, team=team, role=Role.APPROVER)
    groups = []
    for level in (1, 2):
        group, _ = Group.objects.get_or_create(name=f"bench L{level}")
        group_members_set(actor=actor, group=group, users=[user])
        groups.append(group)
    policy = escalation_policy_save(
        actor=actor,
        team=team,
        name="Bench",
        levels=[
            {"group": groups[0], "sla_seconds": 60, "channels": []},
            {"group": groups[1], "sla_seconds": 3600, "channels": []},
        ],
    )
    ApprovalRequest.objects.filter(team=team).delete()
    EscalationPolicy.objects.filter(pk=policy.pk)
    return team, agent, user, policy


def _pending(team, agent, policy, deadlines):  # noqa: ANN001, ANN202
    from django.utils import timezone

    from approvals.models import ApprovalRequest

    now = timezone.now()
    rows = [
        ApprovalRequest(
            team=team,
            agent=agent,
            action="payments.refund",
            arguments={"amount": "10.00", "n": n},
            reasoning="benchmark",
            confidence=0.7,
            risk="high",
            escalation_policy=policy,
            level=1,
            deadline=deadline,
            created_at=now,
            requested_by_label="bench",
        )
        for n, deadline in enumerate(deadlines)
    ]
    return ApprovalRequest.objects.bulk_create(rows, batch_size=2000)


def _escalation_lateness() -> list[str]:
    from django.utils import timezone

    from approvals.models import ApprovalEvent
    from tests.support import processes

    team, agent, _, policy = _setup()
    start = timezone.now() + timedelta(seconds=15)  # time to start the processes
    rng = random.Random(5)
    deadlines = [start + timedelta(seconds=rng.uniform(0, WINDOW_SECONDS)) for _ in range(PENDING)]
    created = _pending(team, agent, policy, deadlines)
    due = {r.pk: r.deadline for r in created}
    worker = processes.start_worker(name="bench-escalations", queues="escalations", concurrency=2)
    beat = processes.Process(
        "beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "cockpit",
            "beat",
            "-l",
            "WARNING",
            "-s",
            "/tmp/cockpit-bench-beat-schedule",
        ],
    )
    try:
        deadline = time.monotonic() + 15 + WINDOW_SECONDS + 60
        while time.monotonic() < deadline:
            done = ApprovalEvent.objects.filter(request_id__in=due.keys(), kind="escalated").count()
            if done >= PENDING:
                break
            time.sleep(1)
    finally:
        beat.stop()
        worker.stop()
    events = ApprovalEvent.objects.filter(request_id__in=due.keys(), kind="escalated").values_list("request_id", "at")
    lateness = [(at - due[pk]).total_seconds() for pk, at in events]
    missing = PENDING - len(lateness)
    return [
        f"{PENDING} requests falling due within {WINDOW_SECONDS} s; beat sweeps every second, 1 worker × 2 processes:",
        f"  escalated after the deadline: {summary_ms(lateness)}",
        f"  p99 {percentile(lateness, 99):.2f} s (target < 2 s); never escalated: {missing}",
    ]


QUEUE_SMALL = 100
QUEUE_SAMPLES = 50
QUEUE_PAGES = {
    "my queue": ("/approvals/", {}),
    "all pending": ("/approvals/?view=all", {}),
    "live refresh (htmx fragment)": ("/approvals/", {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "approval-queue"}),
}


def _queries(client, path: str, headers: dict[str, str]) -> int:  # noqa: ANN001
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured)


def _queue_page() -> list[str]:
    """Server time of the queue page (the whole Django stack in-process, no network) for an
    approver of two levels, with 10,000 requests pending in the team; and the number of queries
    it runs at 100 and at 10,000 pending (the page reads one page of rows, whatever is waiting)."""
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from approvals.models import ApprovalRequest

    team, agent, user, policy = _setup()
    rng = random.Random(11)
    now = timezone.now()

    def add(count: int) -> None:
        rows = _pending(team, agent, policy, [now + timedelta(seconds=rng.uniform(600, 7200)) for _ in range(count)])
        # Half of them escalated to L2 already (the approver decides at both levels).
        ApprovalRequest.objects.filter(pk__in=[r.pk for r in rows[::2]]).update(level=2)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE approvals_approvalrequest")

    client = Client()
    client.force_login(user)
    add(QUEUE_SMALL)
    for path, headers in QUEUE_PAGES.values():
        client.get(path, **headers)  # per-process caches (content types, permissions) filled
    small = {name: _queries(client, path, headers) for name, (path, headers) in QUEUE_PAGES.items()}
    add(PENDING - QUEUE_SMALL)
    large = {name: _queries(client, path, headers) for name, (path, headers) in QUEUE_PAGES.items()}
    lines = [
        f"the queue page of an approver of L1 and L2, {PENDING:,} requests pending ({QUEUE_SAMPLES} requests each):"
    ]
    for name, (path, headers) in QUEUE_PAGES.items():
        for _ in range(3):
            client.get(path, **headers)  # warm: templates compiled, connections open
        took = []
        for _ in range(QUEUE_SAMPLES):
            started = time.perf_counter()
            response = client.get(path, **headers)
            took.append(time.perf_counter() - started)
            assert response.status_code == 200
        same = "equal" if small[name] == large[name] else "NOT EQUAL"
        lines.append(f"  {name}: {summary_ms(took)}")
        lines.append(
            f"    p95 {percentile(took, 95) * 1000:.0f} ms (target < 150 ms); queries at {QUEUE_SMALL} pending: "
            f"{small[name]}, at {PENDING:,}: {large[name]} ({same})"
        )
    return lines


def run() -> Iterator[str]:
    yield from _queue_page()
    yield from _escalation_lateness()
