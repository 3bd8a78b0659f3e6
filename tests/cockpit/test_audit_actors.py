"""The audit names who really did it: every operator action, from every entry point, records the
authenticated principal (the session's user, or the API key and its owner) in the audit row, in
the object's history and on the page the live event makes the browser re-fetch."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

import tests.fleet.agents  # noqa: F401  (test agents and tools)
from approvals.models import ApprovalRequest, Policy
from cockpit.audit import Actor
from cockpit.models import ApiKey, AuditEvent, Scope
from cockpit.roles import Role
from finops.models import Budget
from fleet import services as fleet_services
from fleet.models import Agent, AgentEvent, AgentKind, Run, RunEvent, RunStatus, Tier
from tests.approvals import conftest as approvals_fixtures
from tests.factories import UserFactory
from tests.fleet import conftest as fleet_fixtures
from tests.fleet.conftest import execute
from tests.support.live import connect, session_cookie

pytestmark = pytest.mark.django_db

# The fleet's and the approvals' fixtures: agents, runs, approvers at L1–L3, the Cedar gate.
_fleet_basics = approvals_fixtures._fleet_basics
approvers = approvals_fixtures.approvers
make_agent = fleet_fixtures.make_agent
start = fleet_fixtures.start


@pytest.fixture
def olivia(team):  # noqa: ANN001, ANN201
    return UserFactory(username="olivia", roles=[(team, Role.OPERATOR)])


def paused_rows(run: Run) -> list[tuple[str, str | None]]:
    """(actor label, actor username) of the run's history rows that made it paused."""
    return [
        (e.actor_label, e.actor_user.username if e.actor_user else None)
        for e in RunEvent.objects.filter(run=run, kind=RunEvent.Kind.STATUS, to_status=RunStatus.PAUSED)
    ]


# --- The demo's bug: olivia's pause, shown as andre's ------------------------------------------


def test_a_pause_asked_while_waiting_stays_the_operators_when_an_approver_decides(
    client, make_agent, start, approvers, olivia
) -> None:
    """olivia pauses a run that waits for approval; ana (an approver) approves; the run parks as
    paused. The history, the run page and the audit say olivia paused it, never ana."""
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="refund-1"))
    request = ApprovalRequest.objects.get(run=run)
    client.force_login(olivia)
    assert client.post(reverse("run-pause", args=[run.pk]), {"reason": "checking the amount"}).status_code == 302
    client.force_login(approvers["ana"])
    assert client.post(reverse("approval-approve", args=[request.pk]), {"note": ""}).status_code in (200, 302)

    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.status_reason == "checking the amount"
    assert paused_rows(run) == [("olivia", "olivia")]
    approval_row = RunEvent.objects.get(run=run, kind=RunEvent.Kind.APPROVAL)
    assert (approval_row.actor_label, approval_row.actor_user) == ("ana", approvers["ana"])
    audited = {
        (e.action, e.actor_label)
        for e in AuditEvent.objects.filter(action__in=["run.pause", "approval.approve"], team=run.team)
    }
    assert audited == {("run.pause", "olivia"), ("approval.approve", "ana")}

    client.force_login(olivia)
    page = client.get(reverse("run-detail", args=[run.pk]), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="run-timeline")
    paused_entry = page.content.decode().split("status-paused")[1].split("</li>")[0]
    assert "olivia" in paused_entry and "ana" not in paused_entry


def test_a_pause_a_worker_honours_stays_the_operators(make_agent, start, client, olivia) -> None:
    """The worker parks the run at its next step; the history row that says so names olivia."""
    run = start(make_agent("test-linear"), n=3)
    claimed = fleet_services.run_claim(run_id=run.pk, owner="worker-1")
    assert claimed is not None and claimed.status == RunStatus.RUNNING
    client.force_login(olivia)
    client.post(reverse("run-pause", args=[run.pk]), {"reason": "looks odd"})
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    run = execute(run)
    assert run.status == RunStatus.PAUSED and run.status_reason == "looks odd"
    assert paused_rows(run) == [("olivia", "olivia")]


def test_a_cancellation_a_worker_finishes_stays_the_operators(make_agent, start, client, olivia) -> None:
    """A cancelled run with a side effect to undo ends at the hands of a worker; the history row
    that ends it names olivia, who cancelled it."""
    run = execute(start(make_agent("test-effects"), action="pause", labels=["x"]))
    assert run.status == RunStatus.PAUSED
    client.force_login(olivia)
    client.post(reverse("run-cancel", args=[run.pk]), {"reason": "duplicate ticket"})
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.cancel_requested  # a worker undoes the refund first
    run = execute(run)
    ended = RunEvent.objects.get(run=run, kind=RunEvent.Kind.STATUS, to_status=RunStatus.CANCELLED)
    assert (run.status, ended.actor_label, ended.actor_user) == (RunStatus.CANCELLED, "olivia", olivia)
    assert ended.reason == "duplicate ticket"


# --- The matrix: action × entry point ----------------------------------------------------------
#
# Each case is one operator action through one entry point: a browser form (plain, or htmx), the
# REST API with a session, or the REST API with an API key. Setup actions are taken first by
# someone else (andre, another operator) through the same client, so that a "current actor"
# cached anywhere would show. After the action, the case asserts who is named:
#
# * in the audit row (its type, its user or key, its label);
# * in the object's own history (the run's history, the approval's, the policy's author, …);
# * in the live event: every audited action announces ``audit.created`` to the team's group on
#   commit. Events carry ids only (see cockpit/live.py); a browser receiving it re-fetches the
#   audit log's rows, and that page must name the actor (run pages likewise show it on the
#   timeline).
#
# The live bus has no write path of its own: the websocket only subscribes and pings, so every
# action reaches its service through one of the entry points below.

RULE = (
    '@id("no-merging")\n'
    'forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"crm.merge");\n'
)


@dataclass
class World:
    team: Any
    olivia: Any  # operator: pauses, resumes, cancels, overrides, quarantines
    andre: Any  # another operator, who acts first
    ana: Any  # approver at L1
    kim: Any  # admin of the team: policies, budgets, keys; reads the audit log
    victor: Any  # viewer: a browser watching the live bus
    external: Agent
    managed: Agent
    key: ApiKey
    secret: str
    client: Client = field(default_factory=Client)

    def login(self, user: Any) -> Client:
        self.client.force_login(user)
        return self.client

    def key_label(self) -> str:
        return f"agent key ({self.key.display_prefix}, kim's key)"


@dataclass(frozen=True)
class Case:
    action: str  # the audit action
    entry: str  # browser | htmx | api | api-key
    actor: str  # who acts: a user of the world, or "key"

    def __str__(self) -> str:
        return f"{self.action}-{self.entry}"


def _api(client: Client, path: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def _register_run(world: World) -> Run:
    """An external run, registered by the agent with its API key."""
    response = _api(world.client, "/api/v1/runs", {"agent": "ext"}, HTTP_AUTHORIZATION=f"Bearer {world.secret}")
    assert response.status_code == 201, response.content
    return Run.objects.get(pk=response.json()["id"])


def _paused_run(world: World) -> Run:
    run = _register_run(world)
    assert world.login(world.andre).post(reverse("run-pause", args=[run.pk]), {"reason": "andre's"}).status_code == 302
    return run


def _pending_approval(world: World) -> ApprovalRequest:
    response = _api(
        world.client,
        "/api/v1/approvals",
        {"agent": "managed", "action": "test.effect", "arguments": {"label": "refund-1"}, "confidence": 0.5},
        HTTP_AUTHORIZATION=f"Bearer {world.secret}",
    )
    assert response.status_code == 201, response.content
    request = ApprovalRequest.objects.get(pk=response.json()["id"])
    assert request.is_pending
    return request


HTMX = {"HTTP_HX_REQUEST": "true"}


def _run_control(verb: str, body: dict[str, Any], setup: Callable[[World], Run]) -> Callable[[Case, World], Any]:
    def act(case: Case, world: World) -> Any:
        run = setup(world)
        client = world.login(world.olivia)
        if case.entry == "api":
            response = _api(client, f"/api/v1/runs/{run.pk}/{verb}", body)
        else:
            form = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in body.items()}
            if verb == "override":
                form = {"temperature": "0.5", "reason": body["reason"]}
            response = client.post(
                reverse(f"run-{verb}", args=[run.pk]), form, **(HTMX if case.entry == "htmx" else {})
            )
        assert response.status_code in (200, 204, 302), response.content
        return run

    return act


def _quarantine(case: Case, world: World) -> Any:
    run = _register_run(world)
    client = world.login(world.olivia)
    response = client.post(
        reverse("agent-status", args=[world.external.pk]),
        {"status": "quarantined", "reason": "leaking PII"},
        **(HTMX if case.entry == "htmx" else {}),
    )
    assert response.status_code in (204, 302), response.content
    return run


def _decide(case: Case, world: World) -> Any:
    request = _pending_approval(world)
    client = world.login(world.ana)
    if case.entry == "api":
        response = _api(client, f"/api/v1/approvals/{request.pk}/decision", {"decision": "approve"})
    else:
        response = client.post(
            reverse("approval-approve", args=[request.pk]), {"note": ""}, **(HTMX if case.entry == "htmx" else {})
        )
    assert response.status_code in (200, 302), response.content
    return request


def _policy(case: Case, world: World) -> Any:
    client = world.login(world.kim)
    response = client.post(
        reverse("approval-policy-save"),
        {"scope": world.team.slug, "source": RULE, "comment": "no merging"},
        **(HTMX if case.entry == "htmx" else {}),
    )
    assert response.status_code in (200, 302), response.content
    return Policy.objects.filter(team=world.team).order_by("-version").first()


BUDGET_FORM = {
    "name": "Alpha monthly",
    "scope": "team",
    "team": "alpha",
    "period": "month",
    "limit_usd": "100.00",
    "thresholds": "80, 100",
    "action": "pause",
    "alert_emails": "",
    "webhook_url": "",
    "webhook_secret": "",
}


def _budget_create(case: Case, world: World) -> Any:
    response = world.login(world.kim).post(reverse("finops-budget-create"), BUDGET_FORM)
    assert response.status_code == 302, response.content
    return Budget.objects.get(name="Alpha monthly")


def _budget_raise(case: Case, world: World) -> Any:
    from finops.services import budget_create

    budget = budget_create(
        actor=Actor.system("tests"), team=world.team, name="Alpha monthly", scope="team", limit_usd=Decimal(100)
    )
    response = world.login(world.kim).post(
        reverse("finops-budget-raise", args=[budget.pk]), {"limit_usd": "150.00", "reason": "quarter end"}
    )
    assert response.status_code == 302, response.content
    return budget


def _key_create(case: Case, world: World) -> Any:
    response = world.login(world.kim).post(
        reverse("api-keys"), {"team": "alpha", "name": "collector", "scopes": ["ingest"]}
    )
    assert response.status_code == 201, response.content
    return ApiKey.objects.get(name="collector")


def _run_create_by_key(case: Case, world: World) -> Any:
    world.login(world.andre)  # a session open in the same client does not make andre the actor
    return _register_run(world)


def _approval_by_key(case: Case, world: World) -> Any:
    world.login(world.andre)
    return _pending_approval(world)


ACTS: dict[str, Callable[[Case, World], Any]] = {
    "run.pause": _run_control("pause", {"reason": "olivia's"}, _register_run),
    "run.resume": _run_control("resume", {"reason": "olivia's"}, _paused_run),
    "run.cancel": _run_control("cancel", {"reason": "olivia's"}, _paused_run),
    "run.override": _run_control("override", {"changes": {"temperature": 0.5}, "reason": "olivia's"}, _paused_run),
    "agent.quarantine": _quarantine,
    "approval.approve": _decide,
    "policy.save": _policy,
    "budget.create": _budget_create,
    "budget.raise": _budget_raise,
    "api_key.create": _key_create,
    "run.create": _run_create_by_key,
    "approval.request": _approval_by_key,
}

CASES = [
    *(
        Case(action, entry, "olivia")
        for action in ("run.pause", "run.resume", "run.cancel", "run.override")
        for entry in ("browser", "htmx", "api")
    ),
    Case("agent.quarantine", "browser", "olivia"),
    Case("agent.quarantine", "htmx", "olivia"),
    *(Case("approval.approve", entry, "ana") for entry in ("browser", "htmx", "api")),
    Case("policy.save", "browser", "kim"),
    Case("policy.save", "htmx", "kim"),
    Case("budget.create", "browser", "kim"),
    Case("budget.raise", "browser", "kim"),
    Case("api_key.create", "browser", "kim"),
    Case("run.create", "api-key", "key"),
    Case("approval.request", "api-key", "key"),
]


def _history(case: Case, world: World, obj: Any) -> list[tuple[str, str | None]]:
    """(label, username) of the history rows the action wrote on its object."""
    if isinstance(obj, Run) and case.action == "agent.quarantine":
        events = RunEvent.objects.filter(run=obj, to_status=RunStatus.PAUSED)
        agent_events = AgentEvent.objects.filter(agent=world.external, new="quarantined")
        return [
            *((e.actor_label, e.actor_user.username if e.actor_user else None) for e in events),
            *((e.actor_label, "(agent)") for e in agent_events),
        ]
    if isinstance(obj, Run):
        rows = RunEvent.objects.filter(run=obj).order_by("-id")
        latest = rows.first()
        return [(latest.actor_label, latest.actor_user.username if latest.actor_user else None)]
    if isinstance(obj, ApprovalRequest):
        obj.refresh_from_db()
        if case.action == "approval.request":
            created = obj.events.get(kind="created")
            return [(obj.requested_by_label, None), (created.actor_label, None)]
        event = obj.events.order_by("-id").first()
        return [(obj.decided_by_label, obj.decided_by.username), (event.actor_label, None)]
    if isinstance(obj, Policy):
        return [(obj.author_label, obj.author.username)]
    if isinstance(obj, Budget) and case.action == "budget.raise":
        return []  # a budget keeps no history of its own changes: the audit log is it
    if isinstance(obj, Budget):
        return [(obj.created_by_label, obj.created_by.username)]
    if isinstance(obj, ApiKey):
        return [(obj.created_by.username, obj.created_by.username)]
    raise AssertionError(obj)


def _expected_history(case: Case, world: World) -> list[tuple[str, str | None]]:
    if case.actor == "key":
        return [(world.key_label(), None)] * 2 if case.action == "approval.request" else [(world.key_label(), None)]
    if case.action == "agent.quarantine":
        return [("olivia", "olivia"), ("olivia", "(agent)")]
    if case.action == "budget.raise":
        return []
    if case.action == "approval.approve":
        return [("ana", "ana"), ("ana", None)]
    return [(case.actor, case.actor)]


def _audit_row(case: Case, world: World, since: int) -> AuditEvent:
    rows = list(AuditEvent.objects.filter(pk__gt=since, action=case.action))
    assert len(rows) == 1, [(r.action, r.actor_label) for r in AuditEvent.objects.filter(pk__gt=since)]
    row = rows[0]
    if case.actor == "key":
        assert (row.actor_type, row.actor_api_key_id, row.actor_user_id) == ("api_key", world.key.pk, None)
        assert row.actor_label == world.key_label()
    else:
        user = getattr(world, case.actor)
        assert (row.actor_type, row.actor_user_id, row.actor_api_key_id) == ("user", user.pk, None)
        assert row.actor_label == case.actor
    return row


def _audit_page_row(world: World, row: AuditEvent) -> str:
    """The audit log's rows as a browser re-fetches them on ``audit.created``, as kim sees them."""
    html = world.login(world.kim).get("/audit/?team=alpha", **HTMX).content.decode()
    match = re.search(rf'<tr data-id="{row.pk}">(.*?)</tr>', html, re.S)
    assert match, f"audit row #{row.pk} is not on the page"
    return match.group(1)


def _run_timeline_entry(world: World, run: Run) -> str:
    html = (
        world.login(world.victor)
        .get(reverse("run-detail", args=[run.pk]), HTTP_HX_TARGET="run-timeline", **HTMX)
        .content.decode()
    )
    return re.findall(r'<li class="tl-item tl-event.*?</li>', html, re.S)[-1]


@pytest.fixture
def world(team, approvers, make_agent) -> World:  # noqa: ANN001
    from cockpit.services import api_key_create

    kim = UserFactory(username="kim", roles=[(team, Role.ADMIN)])
    _, secret = api_key_create(
        actor=Actor.for_user(kim), team=team, name="agent key", scopes=[Scope.RUNS, Scope.APPROVALS]
    )
    return World(
        team=team,
        olivia=UserFactory(username="olivia", roles=[(team, Role.OPERATOR)]),
        andre=UserFactory(username="andre", roles=[(team, Role.OPERATOR)]),
        ana=approvers["ana"],
        kim=kim,
        victor=UserFactory(username="victor", roles=[(team, Role.VIEWER)]),
        external=make_agent("ext", kind=AgentKind.EXTERNAL),
        managed=make_agent("test-approval", slug="managed", tier=Tier.ASSISTED),
        key=ApiKey.objects.select_related("created_by").get(name="agent key"),
        secret=secret,
    )


async def _audit_announced(communicator: Any, audit_id: int) -> dict[str, Any]:
    """The ``audit.created`` event of row ``audit_id``, from what the websocket receives."""
    while True:
        event = await communicator.receive_json_from(timeout=10)
        if event.get("type") == "audit.created" and event.get("id") == audit_id:
            return event


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_the_actor_is_the_authenticated_principal(case: Case, world: World) -> None:
    since = await sync_to_async(lambda: AuditEvent.objects.order_by("-id").values_list("id", flat=True).first())()
    cookie = await sync_to_async(session_cookie)(world.victor)
    communicator, connected, _ = await connect(cookie, [f"team.{world.team.pk}"])
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "subscribed"

    def act_and_check() -> tuple[AuditEvent, Any]:
        obj = ACTS[case.action](case, world)
        row = _audit_row(case, world, since or 0)
        assert _history(case, world, obj) == _expected_history(case, world)
        return row, obj

    row, obj = await sync_to_async(act_and_check)()
    event = await _audit_announced(communicator, row.pk)
    assert event == {"type": "audit.created", "id": row.pk, "action": case.action}
    await communicator.disconnect()

    def page_shows_the_actor() -> None:
        assert escape(row.actor_label) in _audit_page_row(world, row)
        if isinstance(obj, Run) and case.action.startswith("run."):
            assert f'<span class="tl-actor">{escape(row.actor_label)}</span>' in _run_timeline_entry(world, obj)

    await sync_to_async(page_shows_the_actor)()


@pytest.mark.parametrize("verb", ["pause", "resume", "cancel", "override"])
def test_an_api_key_cannot_act_as_an_operator_and_nothing_is_recorded(world: World, verb: str) -> None:
    """Operator controls over the API are for signed-in people: a key (even one an admin created)
    gets a clear 401, and neither the run, its history nor the audit log changes."""
    run = _paused_run(world) if verb != "pause" else _register_run(world)
    world.client.logout()
    run.refresh_from_db()
    before = (run.status, RunEvent.objects.filter(run=run).count(), AuditEvent.objects.count())
    body = {"reason": "by key", "changes": {"temperature": 0.5}}
    response = _api(world.client, f"/api/v1/runs/{run.pk}/{verb}", body, HTTP_AUTHORIZATION=f"Bearer {world.secret}")
    assert response.status_code == 401 and "sign in" in response.json()["detail"]
    run.refresh_from_db()
    assert (run.status, RunEvent.objects.filter(run=run).count(), AuditEvent.objects.count()) == before


def test_an_api_key_cannot_decide_an_approval(world: World) -> None:
    request = _pending_approval(world)
    audited = AuditEvent.objects.count()
    response = _api(
        world.client,
        f"/api/v1/approvals/{request.pk}/decision",
        {"decision": "approve"},
        HTTP_AUTHORIZATION=f"Bearer {world.secret}",
    )
    assert response.status_code == 401
    request.refresh_from_db()
    assert request.is_pending and AuditEvent.objects.count() == audited
