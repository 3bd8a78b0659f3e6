"""The traces read API: keys and sessions, team isolation, keyset pages that stay put while
traces arrive, filters, and clear 422s for what a client gets wrong."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cockpit.audit import Actor
from cockpit.roles import Role
from cockpit.services import api_key_create, api_key_revoke, membership_grant
from fleet.models import AgentKind
from fleet.services import agent_create
from tests.traces import explorer_spans as ex
from traces import store
from traces.models import Trace

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


def key_for(team, *scopes: str) -> str:  # noqa: ANN001
    return api_key_create(actor=SYSTEM, team=team, name="reader", scopes=list(scopes))[1]


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def one_span_traces(team, count: int, *, prefix: str = "job", **kw) -> list[str]:  # noqa: ANN001, ANN003
    rows = [
        ex.row(ex.new_trace_id(), f"{prefix} {n}", start_ms=n * 60_000, duration_ms=100, **kw) for n in range(count)
    ]
    store.write(team, rows, now=ex.T0)
    return [r["trace_id"] for r in rows]


# --- Who may read -----------------------------------------------------------------------------


def test_a_read_key_lists_its_own_teams_traces_only(client, team, other_team) -> None:
    ours = one_span_traces(team, 2)
    one_span_traces(other_team, 3)
    response = client.get("/api/v1/traces", **auth(key_for(team, "read")))
    assert response.status_code == 200
    body = response.json()
    assert {t["trace_id"] for t in body["items"]} == set(ours)
    assert body["next_cursor"] is None
    assert body["items"][0]["team"] == "alpha" and body["items"][0]["url"].startswith("/traces/")


@pytest.mark.parametrize("scopes", [("ingest",), ("runs", "approvals")])
def test_a_key_without_the_read_scope_is_refused(client, team, scopes) -> None:
    trace_id = one_span_traces(team, 1)[0]
    key = key_for(team, *scopes)
    for url in ("/api/v1/traces", f"/api/v1/traces/{trace_id}"):
        response = client.get(url, **auth(key))
        assert response.status_code == 403
        assert "lacks the 'read' scope" in response.json()["detail"]


def test_no_key_a_bad_key_and_a_revoked_key_are_401(client, team) -> None:
    assert client.get("/api/v1/traces").status_code == 401
    assert client.get("/api/v1/traces", **auth("ck_nonsense")).status_code == 401
    api_key, raw = api_key_create(actor=SYSTEM, team=team, name="old", scopes=["read"])
    api_key_revoke(actor=SYSTEM, api_key=api_key)
    response = client.get("/api/v1/traces", **auth(raw))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_a_trace_of_another_team_is_404(client, team, other_team) -> None:
    theirs = one_span_traces(other_team, 1)[0]
    assert client.get(f"/api/v1/traces/{theirs}", **auth(key_for(team, "read"))).status_code == 404
    assert client.get(f"/api/v1/traces/{theirs}", **auth(key_for(other_team, "read"))).status_code == 200


def test_people_read_the_traces_of_the_teams_they_see(client, make_user, team, other_team) -> None:
    ours = one_span_traces(team, 1)[0]
    theirs = one_span_traces(other_team, 1)[0]
    client.force_login(make_user(Role.VIEWER, team))
    assert [t["trace_id"] for t in client.get("/api/v1/traces").json()["items"]] == [ours]
    assert client.get(f"/api/v1/traces/{ours}").status_code == 200
    assert client.get(f"/api/v1/traces/{theirs}").status_code == 404
    client.force_login(make_user())  # signed in, no role anywhere
    assert client.get("/api/v1/traces").json()["items"] == []
    assert client.get(f"/api/v1/traces/{ours}").status_code == 404


# --- One trace ----------------------------------------------------------------------------------


def test_a_trace_comes_with_every_span_and_all_it_carried(client, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    response = client.get(f"/api/v1/traces/{trace.trace_id.upper()}", **auth(key_for(team, "read")))
    assert response.status_code == 200
    body = response.json()
    assert (body["trace_id"], body["name"], body["status"], body["span_count"]) == (
        trace.trace_id,
        "invoke_agent support-desk",
        "ok",
        trace.span_count,
    )
    assert body["models"] == ["gpt-4o"] and float(body["cost"]) == float(trace.cost)
    spans = body["spans"]
    assert len(spans) == trace.span_count
    starts = [datetime.fromisoformat(s["start_time"]) for s in spans]
    assert starts == sorted(starts)
    chat = next(s for s in spans if s["type"] == "llm")
    assert (chat["model"], chat["provider"], chat["input_tokens"], chat["output_tokens"]) == (
        "gpt-4o",
        "openai",
        812,
        96,
    )
    assert chat["kind"] == "internal" and chat["status"] == "unset"
    assert "gen_ai.input.messages" in chat["attributes"] and chat["resource"] == {"service.name": "support-bot"}
    failed = next(s for s in spans if s["status"] == "error")
    assert (failed["status_message"], failed["error_type"]) == ("timeout", "RuntimeError")
    approval = next(s for s in spans if s["type"] == "approval")
    assert "cockpit.approval.output" in approval["attributes"]


def test_a_trace_id_two_teams_hold_needs_the_team(client, make_user, team, other_team) -> None:
    trace_id = ex.new_trace_id()
    store.write(team, [ex.row(trace_id, "ours")], now=ex.T0)
    store.write(other_team, [ex.row(trace_id, "theirs")], now=ex.T0)
    user = make_user(Role.VIEWER, team)
    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.VIEWER)
    client.force_login(user)
    response = client.get(f"/api/v1/traces/{trace_id}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "team"
    assert (
        "alpha, beta" in response.json()["errors"][0]["message"]
        and "?team=" in response.json()["errors"][0]["message"]
    )
    response = client.get(f"/api/v1/traces/{trace_id}", {"team": "beta"})
    assert response.status_code == 200 and response.json()["name"] == "theirs"
    # A key sees its own team's only: no ambiguity.
    assert client.get(f"/api/v1/traces/{trace_id}", **auth(key_for(team, "read"))).json()["name"] == "ours"


# --- Pages and filters --------------------------------------------------------------------------


def test_pages_are_stable_while_traces_arrive(client, team) -> None:
    key = key_for(team, "read")
    one_span_traces(team, 5, prefix="first")
    seen = []
    response = client.get("/api/v1/traces", {"limit": 2}, **auth(key)).json()
    seen += [t["name"] for t in response["items"]]
    one_span_traces(team, 3, prefix="newer", t0=ex.T0 + timedelta(hours=1))  # arrive while the client pages
    while response["next_cursor"]:
        response = client.get("/api/v1/traces", {"limit": 2, "cursor": response["next_cursor"]}, **auth(key)).json()
        seen += [t["name"] for t in response["items"]]
    assert seen == ["first 4", "first 3", "first 2", "first 1", "first 0"]


def test_filters(client, team) -> None:
    agent_create(actor=SYSTEM, team=team, slug="support-desk", name="Support desk", kind=AgentKind.EXTERNAL)
    helper = ex.agent_trace(team, spans=60)
    failed_id = ex.new_trace_id()
    store.write(team, [ex.row(failed_id, "export", error="disk full", agent="exporter")], now=ex.T0)
    late = one_span_traces(team, 1, prefix="late", t0=ex.T0 + timedelta(days=1))[0]
    key = key_for(team, "read")

    def ids(**query) -> set[str]:  # noqa: ANN003
        response = client.get("/api/v1/traces", query, **auth(key))
        assert response.status_code == 200, response.json()
        return {t["trace_id"] for t in response.json()["items"]}

    assert ids(agent="support-desk") == {helper.trace_id}  # the fleet agent's slug
    assert ids(agent="exporter") == {failed_id}  # an agent as the spans named it
    assert ids(status="error") == {failed_id}
    assert ids(status="ok") == {helper.trace_id, late}
    assert ids(since="2026-03-03T00:00:00Z") == {late}
    assert ids(until="2026-03-03T00:00:00Z") == {helper.trace_id, failed_id}
    assert ids(team="alpha") == {helper.trace_id, failed_id, late}
    assert ids(team="beta") == set()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "!!not-ours"}, "cursor"),
        ({"since": "2026-03-03T00:00:00Z", "until": "2026-03-02T00:00:00Z"}, "until"),
    ],
)
def test_bad_parameters_are_422_with_the_field(client, team, query, field) -> None:
    response = client.get("/api/v1/traces", query, **auth(key_for(team, "read")))
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "The request is not valid: see 'errors'."
    assert field in [e["field"] for e in body["errors"]]


def test_a_malformed_trace_id_is_422(client, team) -> None:
    response = client.get("/api/v1/traces/not-a-trace-id", **auth(key_for(team, "read")))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "trace_id"


def test_the_openapi_document_describes_the_traces_api(client) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    listing, one = paths["/api/v1/traces"]["get"], paths["/api/v1/traces/{trace_id}"]["get"]
    assert listing["summary"] == "Trace summaries, newest first" and "next_cursor" in listing["description"]
    assert "?team=" in one["description"]
    assert {p["name"] for p in listing["parameters"]} >= {"agent", "status", "since", "until", "cursor", "limit"}
    span = schema["components"]["schemas"]["SpanOut"]["properties"]
    assert "approval" in span["type"]["description"]


def test_an_open_trace_is_listed_before_its_root_arrives(client, team) -> None:
    trace_id, root = ex.new_trace_id(), ex.new_span_id()
    store.write(team, [ex.chat(trace_id, root, 10, 1)], now=ex.T0)
    body = client.get(f"/api/v1/traces/{trace_id}", **auth(key_for(team, "read"))).json()
    assert (body["status"], body["name"], len(body["spans"])) == ("open", "", 1)
    assert Trace.objects.get(trace_id=trace_id).status == "open"
