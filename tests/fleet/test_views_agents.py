"""Agent pages: the list, one agent (SLOs, versions, tools), version diffs, and the agent's
controls (status, tier, objectives) with their permission matrices and refusals."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cockpit.models import AuditEvent
from cockpit.roles import Role
from fleet.models import AgentStatus, ModelProvider, ProviderKind, Run, RunStatus, Step, StepKind
from fleet.selectors import version_diff
from fleet.services import agent_set_status, agent_version_create
from tests.factories import SYSTEM
from tests.fleet.conftest import execute
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
EVERY_ROLE = set(Role.values)


def detail_url(agent) -> str:  # noqa: ANN001
    return reverse("agent-detail", args=[agent.pk])


# --- List and detail --------------------------------------------------------------------------


def test_agents_list_shows_visible_agents_with_simulated_models(client, make_user, make_agent, team, other_team):
    make_agent("test-linear", slug="ours", primary_model="sim/sim-large")
    make_agent("test-linear", slug="theirs", owner=other_team)
    client.force_login(make_user(Role.VIEWER, team))
    response = client.get(reverse("agents"))
    assert [tile.agent.slug for tile in response.context["tiles"]] == ["ours"]
    html = response.content.decode()
    assert "sim/sim-large" in html and ">simulated</span>" in html
    assert 'data-live-on="run.changed run.created agent.changed"' in html


def test_a_real_provider_model_is_not_labelled_simulated(client, admin_user, make_agent):
    ModelProvider.objects.create(name="openai", kind=ProviderKind.OPENAI)
    make_agent("test-linear", primary_model="openai/gpt-4.1-mini")
    client.force_login(admin_user)
    html = client.get(reverse("agents")).content.decode()
    assert "openai/gpt-4.1-mini" in html and ">simulated</span>" not in html


@pytest.mark.parametrize("case", matrix(allowed=EVERY_ROLE, org=True), ids=str)
def test_agent_page_is_for_anyone_who_sees_the_team(case, client, make_agent, team, other_team):
    agent = make_agent("test-linear")
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.get(detail_url(agent)).status_code == case.status(ok=200)


def test_agent_page_shows_configuration_tools_and_runs(client, admin_user, make_agent, start):
    agent = make_agent("test-effects", tools=["test.effect", "test.read"], fallback_models=["sim/sim-large"])
    run = execute(start(agent))
    client.force_login(admin_user)
    response = client.get(detail_url(agent))
    html = response.content.decode()
    assert [row.name for row in response.context["tools"]] == ["test.effect", "test.read"]
    assert "risk-low" in html and "changes things" in html and "read only" in html
    assert "test.undo" in html  # the effect's compensation
    assert reverse("run-detail", args=[run.pk]) in html
    assert "sim/sim-small" in html and "sim/sim-large" in html
    assert html.count(">simulated</span>") >= 2


def test_agent_page_fragments_are_live(client, admin_user, make_agent):
    agent = make_agent("test-linear")
    client.force_login(admin_user)
    html = client.get(detail_url(agent)).content.decode()
    assert f'data-live-topics="team.{agent.team_id},agent.{agent.pk}"' in html
    assert f'data-live-match=\'{{"agent": "{agent.pk}"}}\'' in html
    for target in ("agent-summary", "agent-runs", "agent-config"):
        response = client.get(detail_url(agent), HTTP_HX_TARGET=target, **HTMX)
        body = response.content.decode().lstrip()
        assert body.startswith(f'<section id="{target}"'), target
        assert "<html" not in body


def test_agent_page_queries_do_not_grow_with_runs_and_versions(
    client, admin_user, make_agent, start, django_assert_max_num_queries
):
    agent = make_agent("test-linear")
    execute(start(agent))
    client.force_login(admin_user)
    client.get(detail_url(agent))
    with CaptureQueriesContext(connection) as few:
        client.get(detail_url(agent))
    for n in range(3):
        agent_version_create(actor=SYSTEM, agent=agent, version=f"1.{n + 1}.0", primary_model="sim/x")
    for _ in range(5):
        execute(start(agent))
    with django_assert_max_num_queries(len(few)):
        client.get(detail_url(agent))


# --- Objectives -------------------------------------------------------------------------------


def _slo_states(client, agent) -> dict[str, str]:  # noqa: ANN001
    return {figure.label: figure.state for figure in client.get(detail_url(agent)).context["slo"]}


def test_objectives_without_runs_have_no_data(client, admin_user, make_agent):
    agent = make_agent("test-linear")
    client.force_login(admin_user)
    assert _slo_states(client, agent) == {
        "Success rate": "no-data",
        "p95 LLM call": "no-data",
        "p95 tool call": "no-data",
        "Cost per successful run": "no-target",
    }


def test_objectives_met_and_not_met(client, admin_user, make_agent, start):
    agent = make_agent("test-llm")
    agent.slo_cost_per_success = Decimal("0.50")
    agent.save()
    ok, bad = execute(start(agent)), execute(start(agent))
    Run.objects.filter(pk=bad.pk).update(status=RunStatus.FAILED)
    Run.objects.filter(pk__in=[ok.pk, bad.pk]).update(cost=Decimal("0.40"))
    now = timezone.now()
    Step.objects.filter(run__agent=agent, kind=StepKind.LLM).update(
        started_at=now - timedelta(seconds=2), ended_at=now
    )
    client.force_login(admin_user)

    states = _slo_states(client, agent)
    assert states["Success rate"] == "missed"  # 50 % < 95 %
    assert states["p95 LLM call"] == "met"  # 2 s ≤ 20 s
    assert states["p95 tool call"] == "no-data"
    assert states["Cost per successful run"] == "missed"  # $0.80 for one success > $0.50
    html = client.get(detail_url(agent)).content.decode()
    assert "not met" in html and ">met<" in html

    Run.objects.filter(pk=bad.pk).update(status=RunStatus.SUCCEEDED)
    states = _slo_states(client, agent)
    assert states["Success rate"] == "met"
    assert states["Cost per successful run"] == "met"  # $0.40 per success


def test_runs_that_ended_before_the_window_do_not_count(client, admin_user, make_agent, start):
    agent = make_agent("test-linear")
    old = execute(start(agent))
    Run.objects.filter(pk=old.pk).update(status=RunStatus.FAILED, ended_at=timezone.now() - timedelta(days=8))
    client.force_login(admin_user)
    assert _slo_states(client, agent)["Success rate"] == "no-data"


# --- Status: pause, quarantine, reactivate ----------------------------------------------------


def status_url(agent) -> str:  # noqa: ANN001
    return reverse("agent-status", args=[agent.pk])


@pytest.mark.parametrize("case", matrix(allowed={Role.OPERATOR, Role.ADMIN}, org=True), ids=str)
def test_quarantine_follows_the_matrix(case, client, make_agent, team, other_team):
    agent = make_agent("test-linear")
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(status_url(agent), {"status": "quarantined", "reason": "odd refunds"})
    assert response.status_code == case.status(ok=302)
    agent.refresh_from_db()
    expected = AgentStatus.QUARANTINED if case.outcome == "ok" else AgentStatus.ACTIVE
    assert agent.status == expected


@pytest.mark.parametrize("case", matrix(allowed={Role.OPERATOR, Role.ADMIN}), ids=str)
def test_confirmation_form_follows_the_matrix(case, client, make_agent, team, other_team):
    agent = make_agent("test-linear")
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(status_url(agent), {"status": "paused"})
    assert response.status_code == case.status(ok=200)


def test_confirmation_asks_for_a_reason_in_the_dialog(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    response = client.get(status_url(agent), {"status": "quarantined", "next": "/"}, **HTMX)
    html = response.content.decode()
    assert "<html" not in html
    assert "Quarantine Test-Linear?" in html
    assert 'hx-target="#fleet-dialog"' in html
    assert "required" in html.split('name="reason"')[1].split(">")[0]
    assert 'name="next" value="/"' in html


def test_htmx_quarantine_answers_no_content_and_says_so(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    response = client.post(status_url(agent), {"status": "quarantined", "reason": "odd"}, **HTMX)
    assert response.status_code == 204
    assert "fleet:done" in response["HX-Trigger"] and "quarantined" in response["HX-Trigger"]
    agent.refresh_from_db()
    assert (agent.status, agent.status_reason) == ("quarantined", "odd")
    assert AuditEvent.objects.filter(action="agent.quarantine", reason="odd").exists()


def test_quarantine_without_a_reason_is_refused_and_changes_nothing(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    response = client.post(status_url(agent), {"status": "quarantined", "reason": " "}, **HTMX)
    assert response.status_code == 422
    assert "Say why" in response.content.decode()
    page = client.post(status_url(agent), {"status": "quarantined"})
    assert page.status_code == 400 and "Say why" in page.content.decode()
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE
    assert not AuditEvent.objects.filter(action="agent.quarantine").exists()


def test_an_illegal_or_unknown_status_is_refused(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    refused = client.post(status_url(agent), {"status": "active"}, **HTMX)
    assert refused.status_code == 422 and "cannot go from active to active" in refused.content.decode()
    assert client.post(status_url(agent), {"status": "deleted", "reason": "x"}).status_code == 400
    assert client.get(status_url(agent), {"status": "deleted"}).status_code == 400


def test_plain_post_redirects_to_a_safe_next(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    back = client.post(status_url(agent), {"status": "paused", "reason": "x", "next": "/"})
    assert back["Location"] == "/"
    evil = client.post(status_url(agent), {"status": "active", "next": "https://evil.example/"})
    assert evil["Location"] == detail_url(agent)


def test_reactivation_needs_no_reason(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    agent_set_status(actor=SYSTEM, agent=agent, status="paused", reason="maintenance")
    client.force_login(make_user(Role.OPERATOR, team))
    assert client.post(status_url(agent), {"status": "active"}, **HTMX).status_code == 204
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE


# --- Tier and objectives (admins) -------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_tier_change_follows_the_matrix(case, client, make_agent, team, other_team):
    agent = make_agent("test-linear", tier=2)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("agent-tier", args=[agent.pk]), {"tier": 4, "reason": "audit"})
    assert response.status_code == case.status(ok=302)
    agent.refresh_from_db()
    assert agent.tier == (4 if case.outcome == "ok" else 2)


def test_settings_are_shown_to_admins_only(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    client.force_login(make_user(Role.OPERATOR, team))
    assert 'id="agent-settings"' not in client.get(detail_url(agent)).content.decode()
    client.force_login(make_user(Role.ADMIN, team))
    assert 'id="agent-settings"' in client.get(detail_url(agent)).content.decode()


def test_tier_change_needs_a_reason_and_a_real_tier(client, admin_user, make_agent):
    agent = make_agent("test-linear", tier=2)
    client.force_login(admin_user)
    url = reverse("agent-tier", args=[agent.pk])
    no_reason = client.post(url, {"tier": 3, "reason": ""}, **HTMX)
    assert no_reason.status_code == 422 and "Say why the tier changes" in no_reason.content.decode()
    bad_tier = client.post(url, {"tier": 9, "reason": "x"}, **HTMX)
    assert bad_tier.status_code == 422 and "Select a valid choice" in bad_tier.content.decode()
    agent.refresh_from_db()
    assert agent.tier == 2
    done = client.post(url, {"tier": 3, "reason": "refunds"}, **HTMX)
    assert done.status_code == 200 and done.content.decode().lstrip().startswith('<section id="agent-settings"')
    agent.refresh_from_db()
    assert agent.tier == 3


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}), ids=str)
def test_objectives_change_follows_the_matrix(case, client, make_agent, team, other_team):
    agent = make_agent("test-linear")
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(
        reverse("agent-slo", args=[agent.pk]),
        {"success_rate": "99", "p95_llm_seconds": "8", "p95_tool_seconds": "2"},
    )
    assert response.status_code == case.status(ok=302)
    agent.refresh_from_db()
    assert agent.slo_success_rate == (Decimal(99) if case.outcome == "ok" else Decimal(95))


def test_bad_objectives_are_refused_with_the_message(client, admin_user, make_agent):
    agent = make_agent("test-linear")
    client.force_login(admin_user)
    url = reverse("agent-slo", args=[agent.pk])
    values = {"success_rate": "90", "p95_llm_seconds": "-1", "p95_tool_seconds": "2"}
    response = client.post(url, values, **HTMX)
    assert response.status_code == 422
    assert "Latency targets must be positive." in response.content.decode()
    plain = client.post(url, {**values, "success_rate": "150"}, follow=True)
    assert "Ensure this value is less than or equal to 100." in plain.content.decode()
    agent.refresh_from_db()
    assert (agent.slo_success_rate, agent.slo_p95_llm_seconds) == (Decimal(95), 20.0)


# --- Version diff -----------------------------------------------------------------------------


@pytest.fixture
def two_versions(make_agent):  # noqa: ANN201
    agent = make_agent(
        "test-effects",
        version="1.0.0",
        fallback_models=["sim/sim-large", "sim/sim-small"],
        tools=["test.effect", "test.read"],
        prompts={"system": "Be brief.", "tone": "formal"},
        run_budget="0.05",
    )
    old = agent.current_version
    new = agent_version_create(
        actor=SYSTEM,
        agent=agent,
        version="1.1.0",
        primary_model="sim/sim-small",
        fallback_models=["sim/sim-small", "sim/sim-large"],
        tools=["test.effect", "test.flaky"],
        prompts={"system": "Be brief and kind.", "reply": "Sign as Care"},
        run_budget=Decimal("0.05"),
        notes="kinder",
    )
    return agent, old, new


def test_version_diff_reports_each_field(two_versions):
    agent, old, new = two_versions
    diff = {d.name: d for d in version_diff(old, new)}
    assert not diff["primary_model"].changed
    assert not diff["run_budget"].changed  # 0.050000 == 0.05
    assert diff["tools"].added == ["test.flaky"] and diff["tools"].removed == ["test.read"]
    assert diff["fallback_models"].changed and diff["fallback_models"].reordered
    assert diff["fallback_models"].added == [] and diff["fallback_models"].removed == []
    prompts = diff["prompts"]
    assert (prompts.added, prompts.removed, prompts.modified) == (["reply"], ["tone"], ["system"])
    assert diff["notes"].changed and diff["notes"].new == "kinder"


def test_version_diff_page_highlights_changes(client, make_user, two_versions, team):
    agent, old, new = two_versions
    client.force_login(make_user(Role.VIEWER, team))
    url = reverse("agent-version-diff", args=[agent.pk])
    response = client.get(url, {"a": old.pk, "b": new.pk})
    assert response.status_code == 200
    html = response.content.decode()
    assert (
        '<div class="diff-item diff-added"><span class="diff-mark" aria-label="added">+</span>'
        "<code>test.flaky</code>" in html
    )
    assert (
        '<div class="diff-item diff-removed"><span class="diff-mark" aria-label="removed">−</span>'
        "<code>test.read</code>" in html
    )
    assert "same items, new order" in html
    assert html.count('class="is-changed"') == 4  # fallbacks, prompts, tools, notes


def test_version_diff_refuses_bad_choices(client, admin_user, two_versions, make_agent):
    agent, old, new = two_versions
    stranger = make_agent("test-linear", slug="stranger").current_version
    client.force_login(admin_user)
    url = reverse("agent-version-diff", args=[agent.pk])
    same = client.get(url, {"a": old.pk, "b": old.pk})
    assert same.status_code == 400 and "Pick two different versions" in same.content.decode()
    foreign = client.get(url, {"a": stranger.pk, "b": new.pk})
    assert foreign.status_code == 400 and "Select a valid choice" in foreign.content.decode()
    assert client.get(url, {"a": "x"}).status_code == 400


@pytest.mark.parametrize("case", matrix(allowed=EVERY_ROLE), ids=str)
def test_version_diff_follows_the_matrix(case, client, two_versions, team, other_team):
    agent, old, new = two_versions
    client.force_login(case.make_user(team=team, other_team=other_team))
    url = reverse("agent-version-diff", args=[agent.pk])
    assert client.get(url, {"a": old.pk, "b": new.pk}).status_code == case.status(ok=200)
