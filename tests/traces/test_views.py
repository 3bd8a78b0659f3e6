"""The trace list and the trace view: who sees what, every filter, pages that neither skip nor
repeat, the trace view's span rows (cheap at 10,000 spans), a span's detail with its
conversation, and approvals and operator actions inline with who and how long."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cockpit.audit import Actor
from cockpit.roles import Role
from fleet.models import AgentKind, RunEvent, RunStatus, Step, StepKind, StepStatus
from fleet.services import agent_create, run_create
from tests.traces import explorer_spans as ex
from traces import selectors, store
from traces.models import Trace

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("tests")


def names(response) -> list[str]:  # noqa: ANN001
    return [t.title for t in response.context["page"].traces]


def one_span_traces(team, count: int, *, prefix: str = "job", minutes: int = 1, **kw) -> list[str]:  # noqa: ANN001
    """``count`` traces of one span each, started a minute apart (the last is the newest)."""
    rows = []
    for n in range(count):
        trace_id = ex.new_trace_id()
        rows.append(ex.row(trace_id, f"{prefix} {n}", start_ms=n * minutes * 60_000, duration_ms=100, **kw))
    store.write(team, rows, now=ex.T0)
    return [r["trace_id"] for r in rows]


# --- Who sees what ----------------------------------------------------------------------------


def test_the_list_shows_only_the_teams_one_may_see(client, make_user, team, other_team) -> None:
    one_span_traces(team, 2, prefix="ours")
    one_span_traces(other_team, 2, prefix="theirs")
    client.force_login(make_user(Role.VIEWER, team))
    response = client.get(reverse("traces"))
    assert response.status_code == 200
    assert sorted(names(response)) == ["ours 0", "ours 1"]


@pytest.mark.parametrize(
    "endpoint", ["trace-detail", "trace-data", "trace-narrative", "trace-span"], ids=lambda e: e.split("-")[-1]
)
def test_every_endpoint_of_a_trace_is_404_for_other_teams(client, make_user, team, other_team, endpoint) -> None:
    trace = ex.agent_trace(other_team, spans=60)
    span_id = trace.root_span_id
    args = [trace.pk, span_id] if endpoint == "trace-span" else [trace.pk]
    client.force_login(make_user(Role.ADMIN, team))
    assert client.get(reverse(endpoint, args=args)).status_code == 404
    client.force_login(make_user(Role.VIEWER, other_team))
    assert client.get(reverse(endpoint, args=args)).status_code == 200


def test_signed_out_people_are_sent_to_sign_in(client, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    for url in (reverse("traces"), reverse("trace-detail", args=[trace.pk]), reverse("trace-data", args=[trace.pk])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/account/login/")


def test_unknown_trace_and_span_are_404(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    assert client.get(reverse("trace-detail", args=[999_999])).status_code == 404
    assert client.get(reverse("trace-span", args=[trace.pk, "0123456789abcdef"])).status_code == 404
    assert client.get(reverse("trace-span", args=[trace.pk, "not-a-span-id"])).status_code == 404


def test_the_live_topic_of_a_trace_is_for_those_who_may_see_it(make_user, team, other_team) -> None:
    from cockpit import live

    trace = ex.agent_trace(team, spans=60)
    assert live.can_subscribe(make_user(Role.VIEWER, team), f"trace.{trace.pk}")
    assert not live.can_subscribe(make_user(Role.ADMIN, other_team), f"trace.{trace.pk}")


# --- Filters ----------------------------------------------------------------------------------


def test_each_filter_narrows_the_list(client, admin_user, team) -> None:
    agent = agent_create(actor=SYSTEM, team=team, slug="support-desk", name="Support desk", kind=AgentKind.EXTERNAL)
    slow = ex.agent_trace(team, spans=60)  # linked to the agent by name; ~4 min, has errors, costs
    quick_id = ex.new_trace_id()
    store.write(
        team,
        [
            ex.row(quick_id, "summarise", span_type="chain", duration_ms=300, t0=ex.T0 + timedelta(hours=2)),
            ex.chat(quick_id, "", 1, 7, cost=0.5, t0=ex.T0 + timedelta(hours=2)) | {"model": "claude-haiku-4-5"},
        ],
        now=ex.T0,
    )
    quick = Trace.objects.get(trace_id=quick_id)
    failed_id = ex.new_trace_id()
    store.write(
        team, [ex.row(failed_id, "nightly export", error="disk full", t0=ex.T0 - timedelta(days=2))], now=ex.T0
    )
    failed = Trace.objects.get(trace_id=failed_id)
    assert slow.agent_id == agent.pk and slow.error_count > 0 and slow.status == "ok"
    client.force_login(admin_user)

    def shown(**query) -> set[str]:  # noqa: ANN003
        response = client.get(reverse("traces"), query)
        assert response.status_code == 200, response.context["form"].errors
        return {t.trace_id for t in response.context["page"].traces}

    everything = {slow.trace_id, quick.trace_id, failed.trace_id}
    assert shown() == everything
    assert shown(agent=agent.pk) == {slow.trace_id}
    assert shown(status="error") == {failed.trace_id}
    assert shown(with_errors="on") == {slow.trace_id, failed.trace_id}
    assert shown(model="haiku") == {quick.trace_id}
    assert shown(model="GPT-4o") == {slow.trace_id}  # any case
    assert shown(model="%") == shown(model="claude_haiku") == set()  # typed, not wildcards
    assert shown(since="2026-03-02T09:00", until="2026-03-02T10:00") == {slow.trace_id}
    assert shown(since="2026-03-02T11:00") == {quick.trace_id}
    assert shown(min_cost="0.4") == {quick.trace_id}
    assert shown(min_duration="60") == {slow.trace_id}
    assert shown(q="CRM.UPDATE") == {slow.trace_id}  # a tool name, any case
    assert shown(q="export") == {failed.trace_id}  # a span name
    assert shown(q=quick.trace_id) == {quick.trace_id}
    assert shown(q="no such span") == set()
    assert shown(team=team.slug, status="ok", with_errors="on") == {slow.trace_id}


def test_the_team_filter_and_the_team_switcher(client, make_user, team, other_team) -> None:
    one_span_traces(team, 1, prefix="ours")
    one_span_traces(other_team, 1, prefix="theirs")
    user = make_user(Role.VIEWER, team)
    from cockpit.services import membership_grant

    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.VIEWER)
    client.force_login(user)
    assert sorted(names(client.get(reverse("traces")))) == ["ours 0", "theirs 0"]
    assert names(client.get(reverse("traces"), {"team": other_team.slug})) == ["theirs 0"]
    client.post(reverse("team-switch"), {"team": team.slug})
    assert names(client.get(reverse("traces"))) == ["ours 0"]
    assert sorted(names(client.get(reverse("traces"), {"team": ""}))) == ["ours 0", "theirs 0"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "2026-03-02T10:00", "until": "2026-03-02T09:00"}, "must be before"),
        ({"after": "%%%garbage"}, "This page link is broken"),
        ({"min_cost": "-1"}, "greater than or equal to 0"),
        ({"status": "lost"}, "Select a valid choice"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(client, admin_user, team, query, message) -> None:
    one_span_traces(team, 1)
    client.force_login(admin_user)
    response = client.get(reverse("traces"), query)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_an_empty_store_explains_how_to_send_spans(client, make_user, team) -> None:
    client.force_login(make_user(Role.ADMIN, team))
    body = client.get(reverse("traces")).content.decode()
    assert "No traces yet" in body
    assert "http://testserver/v1/traces" in body and "OTEL_EXPORTER_OTLP_HEADERS" in body
    assert reverse("api-keys") in body  # admins can create the ingest key right away
    client.force_login(make_user(Role.VIEWER, team))
    body = client.get(reverse("traces")).content.decode()
    assert "Ask a team admin for an ingest key" in body and reverse("api-keys") not in body
    one_span_traces(team, 1)
    body = client.get(reverse("traces"), {"q": "nothing like it"}).content.decode()
    assert "No traces match" in body and "No traces yet" not in body


# --- Pages --------------------------------------------------------------------------------------


def test_pages_neither_skip_nor_repeat_and_newer_leads_back(client, admin_user, team) -> None:
    one_span_traces(team, 60, minutes=0)  # all started at the same moment: the id breaks the tie
    one_span_traces(team, 70, prefix="later", minutes=1)
    client.force_login(admin_user)
    seen: list[str] = []
    pages = []
    response = client.get(reverse("traces"))
    while True:
        page = response.context["page"]
        pages.append(names(response))
        seen += names(response)
        if not response.context["older"]:
            break
        response = client.get(reverse("traces") + "?" + response.context["older"])
    assert len(seen) == len(set(seen)) == 130
    assert [len(p) for p in pages] == [50, 50, 30]
    assert seen[0] == "later 69" and seen[-1].startswith("job ")
    # From the last page, "newer" walks back through the same pages.
    assert page.newer is not None
    response = client.get(reverse("traces") + "?" + response.context["newer"])
    assert names(response) == pages[1]
    response = client.get(reverse("traces") + "?" + response.context["newer"])
    assert names(response) == pages[0] and response.context["page"].is_first and not response.context["newer"]


def test_arrivals_are_counted_without_reshuffling_the_page(client, admin_user, team) -> None:
    one_span_traces(team, 3, prefix="old")
    client.force_login(admin_user)
    response = client.get(reverse("traces"), {"q": "job"})
    assert names(response) == []
    above = response.context["above"]
    arrivals_url = response.content.decode().split('id="trace-arrivals"')[1]
    assert f"above={above}" in arrivals_url and "q=job" in arrivals_url
    one_span_traces(team, 2, prefix="job")
    one_span_traces(team, 4, prefix="other")
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "trace-arrivals"}
    response = client.get(reverse("traces"), {"q": "job", "above": above}, **htmx)
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="trace-arrivals"') and "<table" not in body
    assert "2 new traces" in body
    response = client.get(reverse("traces"), {"above": above}, **htmx)
    assert "6 new traces" in response.content.decode()


def test_a_list_page_costs_the_same_queries_whatever_it_holds(client, admin_user, team, django_assert_max_num_queries):
    one_span_traces(team, 2)
    client.force_login(admin_user)
    client.get(reverse("traces"))
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("traces"))
    one_span_traces(team, 120, prefix="more")
    with django_assert_max_num_queries(len(few)):
        response = client.get(reverse("traces"))
    assert len(names(response)) == 50


# --- The trace view -----------------------------------------------------------------------------


def view_data(client, trace: Trace) -> dict:  # noqa: ANN001
    response = client.get(reverse("trace-data", args=[trace.pk]))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    return response.json()


def by_name(data: dict) -> dict[str, list]:
    return {data["strings"][r[2]]: r for r in data["spans"]}


def test_the_page_embeds_the_span_rows_and_the_data_endpoint_gives_the_same(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=200)
    client.force_login(admin_user)
    response = client.get(reverse("trace-detail", args=[trace.pk]))
    body = response.content.decode()
    embedded = json.loads(body.split('<script id="trace-data" type="application/json">')[1].split("</script>")[0])
    assert embedded == view_data(client, trace)
    assert len(embedded["spans"]) == trace.span_count
    assert 'data-live-topics="trace.' in body and f"{trace.span_count:,}" in body
    assert "gen_ai.input.messages" not in body  # attributes are fetched per span, not shipped


def test_span_rows_hold_the_tree_timing_status_and_cost(client, admin_user, team) -> None:
    trace_id, root, tool_id = ex.new_trace_id(), ex.new_span_id(), ex.new_span_id()
    rows = [
        ex.row(trace_id, "invoke_agent helper", span_id=root, span_type="agent", duration_ms=2000),
        ex.chat(trace_id, root, 100, 1, cost=0.25),
        ex.tool(trace_id, root, 1200, "crm.update", span_id=tool_id, error="HTTP 500", duration_ms=300),
        ex.row(trace_id, "late child", parent="feedfacefeedface", start_ms=1900),
    ]
    store.write(team, rows, now=ex.T0)
    client.force_login(admin_user)
    data = view_data(client, Trace.objects.get(trace_id=trace_id))
    assert data["format"][:4] == ["id", "parent", "name", "type"]
    assert data["duration"] == 2_000_000 and data["cost"] == 0.25
    spans = by_name(data)
    assert spans["invoke_agent helper"][:2] == [root, -1]
    chat = spans["chat gpt-4o"]
    assert (chat[1], chat[3], chat[4], chat[5], chat[6], chat[7], chat[8]) == (
        0,
        "llm",
        100_000,
        900_000,
        0,
        0.25,
        908,
    )
    assert data["strings"][chat[9]] == "gpt-4o"
    failing = spans["execute_tool crm.update"]
    assert (failing[0], failing[6]) == (tool_id, 2)
    assert spans["late child"][1] == selectors.MISSING_PARENT  # shown, flagged: its parent never arrived


def test_approvals_and_operator_actions_say_who_and_how_long(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    spans = by_name(view_data(client, trace))
    assert spans["approval payments.refund"][10] == "approved by Dana after 4 min 0 s — “photo confirms the damage”"
    assert spans["operator pause"][10] == "pause by Oscar — “customer called, hold on”"
    assert spans["operator pause"][5] == 0
    approval_id = spans["approval payments.refund"][0]
    body = client.get(reverse("trace-span", args=[trace.pk, approval_id])).content.decode()
    assert "payments.refund" in body and "Dana" in body and "4 min 0 s" in body
    assert "The parcel arrived broken" in body and "62 %" in body


def test_the_run_journal_adds_what_no_span_tells(client, admin_user, team) -> None:
    agent = agent_create(actor=SYSTEM, team=team, slug="ext", name="Ext", kind=AgentKind.EXTERNAL)
    run, _ = run_create(actor=SYSTEM, agent=agent, managed=False)
    trace_id, root = run.trace_id, ex.new_span_id()
    store.write(
        team,
        [
            ex.row(trace_id, "invoke_agent ext", span_id=root, span_type="agent", duration_ms=60_000),
            ex.operator(trace_id, root, 10_000, action="pause", by="Oscar"),
        ],
        now=ex.T0,
    )
    trace = Trace.objects.get(trace_id=trace_id)
    assert trace.run_id == run.pk
    # The pause has its span; the note and the override reached only the journal.
    RunEvent.objects.create(run=run, kind="directive", actor_label="Oscar", at=ex.T0 + timedelta(seconds=10))
    RunEvent.objects.create(run=run, kind="note", actor_label="Nina", reason="customer is VIP", at=ex.T0)
    RunEvent.objects.create(
        run=run, kind="override", actor_label="Omar", reason="cheaper model", at=ex.T0 + timedelta(seconds=20)
    )
    Step.objects.create(
        run=run,
        seq=1,
        kind=StepKind.APPROVAL,
        name="refund",
        status=StepStatus.WAITING,
        idempotency_key="k",
        started_at=ex.T0 + timedelta(seconds=30),
    )
    type(run).objects.filter(pk=run.pk).update(status=RunStatus.WAITING_APPROVAL)
    client.force_login(admin_user)
    data = view_data(client, trace)
    journal = {data["strings"][r[2]]: r for r in data["spans"] if r[0] == ""}
    assert set(journal) == {"note", "operator override", "approval refund"}
    assert journal["note"][10] == "by Nina — “customer is VIP” (from the run's journal)"
    assert journal["operator override"][1] == 0  # under the root span
    waiting = journal["approval refund"]
    assert waiting[3] == "approval" and waiting[10].startswith("waiting for a decision")
    assert waiting[5] > 0  # an open bar, growing until someone decides


def test_a_10000_span_trace_is_read_in_a_few_queries(client, admin_user, team, django_assert_max_num_queries) -> None:
    small = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    client.get(reverse("trace-detail", args=[small.pk]))
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("trace-detail", args=[small.pk]))
    big = ex.agent_trace(team, spans=10_000)
    assert big.span_count >= 10_000
    with django_assert_max_num_queries(len(few)):
        response = client.get(reverse("trace-detail", args=[big.pk]))
    assert response.status_code == 200
    with django_assert_max_num_queries(len(few)):
        data = view_data(client, big)
    assert len(data["spans"]) == big.span_count
    size = len(json.dumps(data, separators=(",", ":")))
    assert size < 120 * big.span_count  # compact: no attributes, names interned


def test_span_detail_renders_the_conversation_and_the_cost_so_far(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    spans = by_name(view_data(client, trace))
    body = client.get(reverse("trace-span", args=[trace.pk, spans["chat gpt-4o"][0]])).content.decode()
    assert 'class="msg msg-system"' in body and "You are the support desk." in body
    assert 'class="msg msg-user"' in body and "where is order #" in body
    assert 'class="msg msg-assistant"' in body and "left the warehouse yesterday" in body
    assert "812 in · 96 out" in body and "$0.0021" in body and "spent by its end" in body
    body = client.get(reverse("trace-span", args=[trace.pk, spans["execute_tool crm.update"][0]])).content.decode()
    assert "Arguments" in body and "&quot;order&quot;: 1042" in body and "&quot;carrier&quot;: &quot;DHL&quot;" in body


def test_span_detail_escapes_what_agents_send(client, admin_user, team) -> None:
    trace_id = ex.new_trace_id()
    evil = "<script>alert(1)</script>"
    store.write(
        team,
        [
            ex.row(
                trace_id,
                evil,
                span_type="llm",
                attributes={"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": evil},
            )
        ],
        now=ex.T0,
    )
    trace = Trace.objects.get(trace_id=trace_id)
    client.force_login(admin_user)
    for url in (reverse("trace-detail", args=[trace.pk]), reverse("trace-span", args=[trace.pk, trace.root_span_id])):
        body = client.get(url).content.decode()
        assert evil not in body and "alert(1)" in body


def test_the_narrative_tab_tells_the_story(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    response = client.get(reverse("trace-narrative", args=[trace.pk]))
    assert response.status_code == 200
    assert "What happened" in response.content.decode()
    assert len(response.context["narrative"]) >= 1


def test_the_header_refreshes_alone(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=60)
    client.force_login(admin_user)
    response = client.get(
        reverse("trace-detail", args=[trace.pk]), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="trace-header"
    )
    body = response.content.decode().lstrip()
    assert body.startswith('<section id="trace-header"') and "trace-data" not in body


def test_cost_in_the_header_matches_the_spans(client, admin_user, team) -> None:
    trace = ex.agent_trace(team, spans=200)
    client.force_login(admin_user)
    data = view_data(client, trace)
    assert Decimal(str(round(sum(r[7] or 0 for r in data["spans"]), 6))) == trace.cost


def test_the_trace_view_leads_to_its_incident(client, make_user, team) -> None:
    from traces.services import incident_open

    trace = ex.agent_trace(team, spans=60)
    url = reverse("trace-detail", args=[trace.pk])
    client.force_login(make_user(Role.VIEWER, team))
    assert "Mark as incident" not in client.get(url).content.decode()  # viewers read, operators act
    client.force_login(make_user(Role.OPERATOR, team))
    body = client.get(url).content.decode()
    assert "Mark as incident" in body and reverse("trace-export", args=[trace.pk]) in body
    incident = incident_open(actor=SYSTEM, trace=trace, title="Refund issued twice")
    body = client.get(url).content.decode()
    assert f"Incident #{incident.pk}" in body and "Mark as incident" not in body


def test_an_escalation_sits_with_the_approval_and_is_not_told_twice(client, admin_user, team) -> None:
    agent = agent_create(actor=SYSTEM, team=team, slug="ext", name="Ext", kind=AgentKind.EXTERNAL)
    run, _ = run_create(actor=SYSTEM, agent=agent, managed=False)
    trace_id, root = run.trace_id, ex.new_span_id()
    reason = "no decision within the SLA of L1; escalated to L2"
    escalation = ex.row(
        trace_id,
        "escalation L2",
        parent=root,
        start_ms=90_000,
        duration_ms=0,
        attributes={"cockpit.escalation.level": 2, "cockpit.escalation.from": 1, "cockpit.reason": reason},
    )
    store.write(
        team,
        [
            ex.row(trace_id, "invoke_agent ext", span_id=root, span_type="agent", duration_ms=600_000),
            ex.approval(trace_id, root, 1_000, minutes=6),
            escalation,
        ],
        now=ex.T0,
    )
    # The sweeper also notes the escalation in the run's journal, at the same moment.
    RunEvent.objects.create(
        run=run, kind="note", actor_label="escalation sweeper", reason=reason, at=ex.T0 + timedelta(seconds=90)
    )
    trace = Trace.objects.get(trace_id=trace_id)
    client.force_login(admin_user)
    data = view_data(client, trace)
    rows = by_name(data)
    assert rows["escalation L2"][3] == "approval"  # drawn with the approval it belongs to
    assert rows["escalation L2"][10] == f"escalated to L2 — “{reason}”"
    assert [r for r in data["spans"] if r[0] == ""] == []  # the journal's note is the same event
    body = client.get(reverse("trace-span", args=[trace.pk, escalation["span_id"]])).content.decode()
    assert "escalated to L2" in body
