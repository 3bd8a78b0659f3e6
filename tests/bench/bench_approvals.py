"""Approvals: how late escalations are with 10,000 pending requests falling due within a minute;
a burst of 1,000 requests asked through the API falling due within the same few seconds, with
email at each of four 5-second levels; 500 agents long-polling while others use the API; and
how long the queue page takes with 10,000 pending."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count

from tests.bench.util import percentile, summary_ms

TITLE = "Approvals: escalation lateness (10,000 pending; a 1,000 burst with email), long-polls, the queue page"
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


BURST = 1_000
BURST_SLA = 5
BURST_LEVELS = 4
BURST_CLIENTS = 16
LONG_POLLS = 500
LONG_POLL_WAIT = 20
WORKER_QUEUES = "default,escalations,notifications,ingest,rollups,maintenance"


def _beat():  # noqa: ANN202
    from tests.support import processes

    return processes.Process(
        "beat",
        [sys.executable, "-m", "celery", "-A", "cockpit", "beat", "-l", "WARNING", "-s", "/tmp/cockpit-bench-beat-2"],
    )


def _api_team(slug: str, levels: int, sla: int, channels: list[str]):  # noqa: ANN202
    """A team with an external agent, one approver per level (with an email address), an
    escalation policy of ``levels`` levels and an API key; returns (team, agent, key)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from approvals.services import escalation_policy_save
    from cockpit.audit import Actor
    from cockpit.models import Team
    from cockpit.roles import Role
    from cockpit.services import api_key_create, group_members_set, membership_grant
    from fleet.models import Agent, AgentKind

    actor = Actor.system("bench")
    slug = f"{slug}-{int(time.time())}"  # a new team each run (history rows cannot be deleted)
    team = Team.objects.create(slug=slug, name=slug)
    agent, _ = Agent.objects.get_or_create(
        team=team, slug="burst-agent", defaults={"name": "Burst agent", "kind": AgentKind.EXTERNAL, "tier": 3}
    )
    groups = []
    for level in range(1, levels + 1):
        user, _ = get_user_model().objects.get_or_create(
            username=f"{slug}-l{level}", defaults={"email": f"{slug}-l{level}@example.com"}
        )
        membership_grant(actor=actor, user=user, team=team, role=Role.APPROVER)
        group, _ = Group.objects.get_or_create(name=f"{slug} L{level}")
        group_members_set(actor=actor, group=group, users=[user])
        groups.append(group)
    escalation_policy_save(
        actor=actor,
        team=team,
        name=slug,
        levels=[{"group": g, "sla_seconds": sla, "channels": channels} for g in groups],
    )
    _, key = api_key_create(actor=actor, team=team, name=f"{slug} agent", scopes=["approvals"])
    return team, agent, key


def _post_burst(base: str, key: str, count: int) -> tuple[list[dict], list[float], float]:
    import httpx

    bodies: list[dict] = []
    took: list[float] = []
    lock = threading.Lock()
    numbers = iter(range(count))

    def client() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                started = time.perf_counter()
                response = http.post(
                    "/api/v1/approvals",
                    json={
                        "agent": "burst-agent",
                        "action": "payments.refund",
                        "arguments": {"amount": "10.00", "n": n},
                        "reasoning": "benchmark burst",
                        "confidence": 0.7,
                        "risk": "high",
                    },
                )
                elapsed = time.perf_counter() - started
                assert response.status_code == 201, response.text
                with lock:
                    bodies.append(response.json())
                    took.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(BURST_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return bodies, took, time.perf_counter() - started


def _burst() -> list[str]:
    """1,000 requests asked through the API as fast as 16 clients can, on a policy of four
    5-second levels with email at each (to a local SMTP sink), with web, worker (2 processes,
    every queue but runs, as in `make demo`) and beat running: how late each level's escalation
    and the expiry are, and whether anything was skipped, doubled or approved on silence."""
    from django.utils.dateparse import parse_datetime

    from approvals.models import ApprovalEvent, ApprovalRequest, Notification
    from tests.support import processes
    from tests.support.receivers import SmtpSink

    _, _, key = _api_team("bench-burst", BURST_LEVELS, BURST_SLA, ["email"])
    sink = SmtpSink()
    mail_env = {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(sink.port), "EMAIL_USE_TLS": "false"}
    web, base = processes.start_web()
    worker = processes.start_worker(name="bench-burst", queues=WORKER_QUEUES, concurrency=2, env=mail_env)
    beat = _beat()
    try:
        time.sleep(3)  # beat's first ticks
        bodies, took, creating = _post_burst(base, key, BURST)
        ids = [b["id"] for b in bodies]
        first_deadline = {b["id"]: parse_datetime(b["deadline"]) for b in bodies}
        spread = (max(first_deadline.values()) - min(first_deadline.values())).total_seconds()
        give_up = time.monotonic() + BURST_SLA * BURST_LEVELS + 120
        while time.monotonic() < give_up:
            if not ApprovalRequest.objects.filter(pk__in=ids, status="pending").exists():
                break
            time.sleep(1)
        expected_mail = BURST * BURST_LEVELS
        while time.monotonic() < give_up and sink.messages < expected_mail:
            time.sleep(1)
    finally:
        beat.stop()
        worker.stop()
        web.stop()
        sink.stop()
    events: dict[int, list[tuple[str, str, object]]] = {}
    for request_id, kind, new, at in (
        ApprovalEvent.objects.filter(request_id__in=ids, kind__in=["escalated", "status"])
        .order_by("at", "id")
        .values_list("request_id", "kind", "new", "at")
    ):
        events.setdefault(request_id, []).append((kind, new, at))
    late: dict[str, list[float]] = {f"L{n} → L{n + 1}": [] for n in range(1, BURST_LEVELS)} | {"expiry": []}
    wrong = 0
    for request_id in ids:
        history = events.get(request_id, [])
        expected = [("escalated", f"L{n}") for n in range(2, BURST_LEVELS + 1)] + [("status", "expired")]
        if [(k, n) for k, n, _ in history] != expected:
            wrong += 1
            continue
        deadline = first_deadline[request_id]
        for name, (_, _, at) in zip(late, history, strict=True):
            late[name].append((at - deadline).total_seconds())
            deadline = at + timedelta(seconds=BURST_SLA)
    statuses = dict(
        ApprovalRequest.objects.filter(pk__in=ids)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    emails = Notification.objects.filter(request_id__in=ids, channel="email")
    lines = [
        f"{BURST} requests asked by {BURST_CLIENTS} clients over HTTP (daphne): {creating:.1f} s, "
        f"{BURST / creating:.0f} per second; per POST {summary_ms(took)}",
        f"  their first deadlines span {spread:.1f} s; {BURST_LEVELS} levels of {BURST_SLA} s, email at each "
        "(local SMTP); worker 2 processes on every queue but runs, beat every second:",
    ]
    for name, values in late.items():
        over = sum(v > 2 for v in values)
        lines.append(
            f"  {name} after the deadline: p50 {percentile(values, 50):.2f} s  p99 {percentile(values, 99):.2f} s  "
            f"max {max(values, default=float('nan')):.2f} s  (> 2 s: {over})"
        )
    lines.append(
        f"  final statuses {statuses}; histories not exactly L2, L3, L4, expired: {wrong}; "
        f"emails {emails.filter(status='sent').count()}/{BURST * BURST_LEVELS} sent (rows {emails.count()}), "
        f"{sink.messages} received"
    )
    return lines


def _long_polls() -> list[str]:
    """500 agents long-poll their own pending request (``?wait=20``) on one daphne (pool of 10
    connections) while another client times plain GETs; 50 of the requests are decided midway
    and their long-polls should return at once."""
    import asyncio

    import httpx
    from django.utils import timezone

    from approvals.services import approval_decide
    from cockpit.audit import Actor
    from tests.support import processes

    team, agent, key = _api_team("bench-polls", 1, 3600, [])
    from approvals.models import EscalationPolicy

    policy = EscalationPolicy.objects.get(team=team)
    rows = _pending(team, agent, policy, [timezone.now() + timedelta(hours=1)] * LONG_POLLS)
    ids = [r.pk for r in rows]
    decided = ids[:: LONG_POLLS // 50]
    web, base = processes.start_web()
    results: dict[int, tuple[int, float, str]] = {}
    plain: list[float] = []
    errors: list[str] = []
    decided_at: dict[int, float] = {}

    async def poll(http: httpx.AsyncClient, request_id: int) -> None:
        try:
            response = await http.get(f"/api/v1/approvals/{request_id}?wait={LONG_POLL_WAIT}")
            results[request_id] = (response.status_code, time.monotonic(), response.json().get("status", ""))
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(f"{type(exc).__name__}: {exc}")

    async def plain_gets(http: httpx.AsyncClient) -> None:
        await asyncio.sleep(5)  # the long-polls are in
        for n in range(50):
            started = time.perf_counter()
            response = await http.get(f"/api/v1/approvals/{ids[n]}")
            plain.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"plain GET {response.status_code}")
            await asyncio.sleep(0.1)

    def decide() -> None:
        for request_id in decided:
            from approvals.models import ApprovalRequest

            approval_decide(
                actor=Actor.system("bench"), request=ApprovalRequest.objects.get(pk=request_id), approve=True
            )
            decided_at[request_id] = time.monotonic()

    async def main() -> None:
        limits = httpx.Limits(max_connections=LONG_POLLS + 10, max_keepalive_connections=LONG_POLLS + 10)
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as polls,
            httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as other,
        ):
            waiting = [asyncio.create_task(poll(polls, i)) for i in ids]
            await plain_gets(other)
            await asyncio.to_thread(decide)
            await asyncio.gather(*waiting)

    try:
        asyncio.run(main())
    finally:
        web.stop()
    wake = [results[i][1] - decided_at[i] for i in decided if i in results and i in decided_at]
    ok = sum(1 for status, _, _ in results.values() if status == 200)
    approved = sum(1 for i in decided if results.get(i, (0, 0, ""))[2] == "approved")
    return [
        f"{LONG_POLLS} concurrent long-polls (?wait={LONG_POLL_WAIT}) on one daphne with a pool of 10 connections:",
        f"  answered 200: {ok}/{LONG_POLLS}; errors: {len(errors)} {errors[:3]}",
        f"  plain GETs meanwhile: {summary_ms(plain)}",
        f"  {len(decided)} decided midway, their long-polls returned {approved} approved; decision → answer: "
        f"{summary_ms(wake) if wake else 'n/a'}",
    ]


def run() -> Iterator[str]:
    yield from _queue_page()
    yield from _long_polls()
    yield from _burst()
    yield from _escalation_lateness()
