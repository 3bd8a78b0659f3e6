"""The runs API: external agents register, poll directives and report; operators control."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections
from django.test import Client

from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.roles import Role
from cockpit.services import api_key_create
from fleet import services
from fleet.models import AgentKind, Run, RunStatus, Step
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


@pytest.fixture
def key(team) -> str:
    return api_key_create(actor=SYSTEM, team=team, name="crm agent", scopes=["runs", "read"])[1]


@pytest.fixture
def external(make_agent):  # noqa: ANN001, ANN201
    return make_agent("crm-sync", kind=AgentKind.EXTERNAL)


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def post(client: Client, url: str, body: dict, **extra: str):  # noqa: ANN201
    return client.post(url, body, content_type="application/json", **extra)


def test_an_external_agent_registers_a_run_once_per_idempotency_key(client, key, external) -> None:
    body = {
        "agent": "crm-sync",
        "idempotency_key": "sync-2026-11-21",
        "input_summary": "nightly CRM sync",
    }
    first = post(client, "/api/v1/runs", body, **auth(key))
    assert first.status_code == 201
    data = first.json()
    assert (data["agent"], data["kind"], data["status"], data["directive"]) == (
        "crm-sync",
        "external",
        "running",
        "continue",
    )
    again = post(client, "/api/v1/runs", body, **auth(key))
    assert again.status_code == 200 and again.json()["id"] == data["id"]
    assert Run.objects.count() == 1


def test_the_idempotency_key_header_works_too(client, key, external) -> None:
    first = post(client, "/api/v1/runs", {"agent": "crm-sync"}, HTTP_IDEMPOTENCY_KEY="k-1", **auth(key))
    second = post(client, "/api/v1/runs", {"agent": "crm-sync"}, HTTP_IDEMPOTENCY_KEY="k-1", **auth(key))
    assert (first.status_code, second.status_code) == (201, 200)


def test_managed_runs_start_through_the_api(client, key, make_agent, django_capture_on_commit_callbacks) -> None:
    make_agent("test-linear")
    with django_capture_on_commit_callbacks(execute=True):  # tasks run eagerly in tests
        response = post(
            client,
            "/api/v1/runs",
            {"agent": "test-linear", "managed": True, "input": {"n": 2}},
            **auth(key),
        )
    assert response.status_code == 201
    run = Run.objects.get(pk=response.json()["id"])
    assert run.status == RunStatus.SUCCEEDED and run.result == {"stages": 2}
    assert AuditEvent.objects.filter(action="run.create", object_id=str(run.pk), actor_type="api_key").exists()


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"agent": "nope"}, 404, "Not found."),
        (
            {"agent": "crm-sync", "managed": True},
            400,
            "runs elsewhere (external); it cannot be started here.",
        ),
        ({"agent": "crm-sync", "input": "text"}, 422, "The request is not valid: see 'errors'."),
    ],
)
def test_bad_requests_get_clear_errors_and_create_nothing(client, key, external, body, status, detail) -> None:
    response = post(client, "/api/v1/runs", body, **auth(key))
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert not Run.objects.exists()


def test_other_teams_runs_are_invisible(client, key, make_agent, other_team) -> None:
    theirs = make_agent("crm-sync", kind=AgentKind.EXTERNAL, owner=other_team)
    run, _ = services.run_create(actor=SYSTEM, agent=theirs)
    assert client.get(f"/api/v1/runs/{run.pk}", **auth(key)).status_code == 404
    assert client.get(f"/api/v1/runs/{run.pk}/directive", **auth(key)).status_code == 404
    assert post(client, f"/api/v1/runs/{run.pk}/events", {"type": "step"}, **auth(key)).status_code == 404
    assert post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).status_code == 404


def test_a_read_only_key_cannot_register_runs(client, team, external) -> None:
    reader = api_key_create(actor=SYSTEM, team=team, name="dashboards", scopes=["read"])[1]
    response = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(reader))
    assert response.status_code == 403 and "lacks the 'runs' scope" in response.json()["detail"]


def test_steps_and_the_end_are_reported(client, key, external) -> None:
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    step = post(
        client,
        f"/api/v1/runs/{run_id}/events",
        {
            "type": "step",
            "kind": "llm",
            "name": "classify",
            "model": "openai/gpt-4.1-mini",
            "tokens_in": 120,
            "tokens_out": 30,
            "cost": "0.0004",
            "duration_seconds": 1.5,
        },
        **auth(key),
    )
    assert step.status_code == 200 and step.json()["directive"] == "continue"
    end = post(
        client,
        f"/api/v1/runs/{run_id}/events",
        {"type": "status", "status": "succeeded", "result": {"synced": 42}},
        **auth(key),
    )
    assert end.json()["directive"] == "stop"
    run = Run.objects.get(pk=run_id)
    assert (run.status, run.step_count, run.result) == ("succeeded", 1, {"synced": 42})
    step = Step.objects.get(run=run)
    assert (step.name, step.tokens_in, str(step.cost)) == ("classify", 120, "0.000400")
    # The run's totals are its spans' (what FinOps counts), not the reported figures too.
    assert (run.tokens_in, run.cost) == (0, 0)
    late = post(client, f"/api/v1/runs/{run_id}/events", {"type": "step", "name": "late"}, **auth(key))
    assert late.status_code == 400 and "already succeeded" in late.json()["detail"]


def test_reports_are_validated(client, key, external) -> None:
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    for body, status in [
        ({"type": "step", "kind": "dance"}, 422),
        ({"type": "status", "status": "paused"}, 422),
        ({"type": "gossip"}, 422),
        ({"type": "step", "tokens_in": -3}, 422),
    ]:
        assert post(client, f"/api/v1/runs/{run_id}/events", body, **auth(key)).status_code == status, body
    assert Run.objects.get(pk=run_id).step_count == 0


def test_directive_follows_operator_actions(client, key, external, admin_user) -> None:
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    run = Run.objects.get(pk=run_id)
    directive = lambda: client.get(f"/api/v1/runs/{run_id}/directive", **auth(key)).json()  # noqa: E731
    assert directive()["directive"] == "continue"
    services.run_pause(actor=Actor.for_user(admin_user), run=run, reason="vendor outage")
    assert directive() | {"overrides": {}} == {
        "run": run_id,
        "status": "paused",
        "directive": "pause",
        "reason": "vendor outage",
        "overrides": {},
    }
    services.run_override(actor=Actor.for_user(admin_user), run=run, changes={"max_steps": 10})
    services.run_resume(actor=Actor.for_user(admin_user), run=run)
    assert directive()["directive"] == "continue" and directive()["overrides"] == {"max_steps": 10}
    services.run_cancel(actor=Actor.for_user(admin_user), run=run, reason="duplicate")
    assert directive()["directive"] == "cancel"


@pytest.mark.django_db(transaction=True)
def test_long_poll_returns_as_soon_as_the_directive_changes(key, external, admin_user) -> None:
    client = Client()
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    result: dict = {}

    def poll() -> None:
        started = time.monotonic()
        try:
            result["body"] = Client().get(f"/api/v1/runs/{run_id}/directive?wait=30", **auth(key)).json()
            result["seconds"] = time.monotonic() - started
        finally:
            connections.close_all()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.8)
    assert poller.is_alive(), "the poll must wait while nothing changes"
    services.run_pause(actor=Actor.for_user(admin_user), run=Run.objects.get(pk=run_id), reason="hold")
    poller.join(timeout=40)
    assert result["body"]["directive"] == "pause"
    assert result["seconds"] < 25, "woke when the directive changed, not when the wait ran out"


def test_long_poll_times_out_with_the_same_directive(client, key, external) -> None:
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    started = time.monotonic()
    body = client.get(f"/api/v1/runs/{run_id}/directive?wait=1", **auth(key)).json()
    assert body["directive"] == "continue" and time.monotonic() - started >= 0.9
    assert client.get(f"/api/v1/runs/{run_id}/directive?wait=31", **auth(key)).status_code == 422


@pytest.mark.parametrize("case", matrix(allowed={Role.OPERATOR, Role.ADMIN}, org=True), ids=str)
def test_operator_control_follows_the_matrix(case, client, team, other_team, make_agent) -> None:
    agent = make_agent("crm-sync", kind=AgentKind.EXTERNAL)
    run, _ = services.run_create(actor=SYSTEM, agent=agent)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = post(client, f"/api/v1/runs/{run.pk}/pause", {"reason": "check"})
    assert response.status_code == case.status(ok=200)
    run.refresh_from_db()
    assert (run.status == RunStatus.PAUSED) is (case.outcome == "ok")


def test_operator_control_needs_a_session_not_a_key(client, key, external) -> None:
    run_id = post(client, "/api/v1/runs", {"agent": "crm-sync"}, **auth(key)).json()["id"]
    assert post(client, f"/api/v1/runs/{run_id}/pause", {}, **auth(key)).status_code == 401


def test_cancel_without_a_reason_is_refused(client, admin_user, external) -> None:
    run, _ = services.run_create(actor=SYSTEM, agent=external)
    client.force_login(admin_user)
    response = post(client, f"/api/v1/runs/{run.pk}/cancel", {"reason": ""})
    assert response.status_code == 422 and "Say why" in response.json()["detail"]
    assert response.json()["errors"] == [{"field": "reason", "message": "Say why the run is cancelled."}]
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_lists_and_details(client, key, external) -> None:
    for n in range(3):
        post(client, "/api/v1/runs", {"agent": "crm-sync", "idempotency_key": f"k{n}"}, **auth(key))
    page = client.get("/api/v1/runs?limit=2", **auth(key)).json()
    assert len(page["items"]) == 2 and page["next_before"] == page["items"][-1]["id"]
    rest = client.get(f"/api/v1/runs?limit=2&before={page['next_before']}", **auth(key)).json()
    assert len(rest["items"]) == 1 and rest["next_before"] is None
    detail = client.get(f"/api/v1/runs/{page['items'][0]['id']}", **auth(key)).json()
    assert detail["steps"] == [] and detail["directive"] == "continue"
    agents = client.get("/api/v1/agents", **auth(key)).json()
    assert [a["slug"] for a in agents] == ["crm-sync"]


@pytest.mark.django_db(transaction=True)
def test_waiting_directive_long_polls_hold_no_database_connection(team, external, admin_user) -> None:
    """Six agents long-poll their directive on a server whose pool has two connections: all six
    get in, a plain GET answers while they wait, and each of them sees the pause."""
    import json
    import urllib.request

    from cockpit.models import ApiKey
    from tests.support import processes

    keys = [api_key_create(actor=SYSTEM, team=team, name=f"agent {n}", scopes=["runs"])[1] for n in range(6)]
    run_id = post(Client(), "/api/v1/runs", {"agent": "crm-sync"}, **auth(keys[0])).json()["id"]
    ApiKey.objects.update(last_used_at=None)
    web, base = processes.start_web(env={"COCKPIT_DB_POOL_SIZE": "2"})
    bodies: dict[int, dict] = {}

    def get(path: str, key: str) -> dict:
        call = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(call, timeout=60) as response:
            return json.loads(response.read())

    def poll(n: int) -> None:
        try:
            bodies[n] = get(f"/api/v1/runs/{run_id}/directive?wait=30", keys[n])
        finally:
            connections.close_all()

    polls = [threading.Thread(target=poll, args=(n,), daemon=True) for n in range(6)]
    try:
        for thread in polls:
            thread.start()
        deadline = time.monotonic() + 25
        while ApiKey.objects.filter(last_used_at__isnull=True).exists():
            assert time.monotonic() < deadline, "long-polls are waiting for a database connection"
            time.sleep(0.1)
        assert get(f"/api/v1/runs/{run_id}/directive", keys[0])["directive"] == "continue"
        assert all(thread.is_alive() for thread in polls)
        services.run_pause(actor=Actor.for_user(admin_user), run=Run.objects.get(pk=run_id), reason="hold")
        for thread in polls:
            thread.join(25)
        assert [bodies.get(n, {}).get("directive") for n in range(6)] == ["pause"] * 6
    finally:
        web.stop()
