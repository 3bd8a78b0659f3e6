"""An agent's calibration: its decisions and rates, time to decision against the SLA, the
reliability figure's data, the JSONL export, and the tier promotion (suggested, applied by
admins, audited) with its rule."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus, PromotionRule
from approvals.services import approval_decide, promotion_rule_save
from cockpit.models import AuditEvent
from cockpit.plotting import PlotlyJsFinder, plotly_style_guards
from cockpit.roles import Role
from fleet.models import Agent, AgentEvent, Tier
from tests.approvals.test_views_queue import ask
from tests.factories import SYSTEM
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db


def page_url(agent: Agent) -> str:
    return reverse("approval-calibration", args=[agent.pk])


def decided(
    agent: Agent,
    *,
    confidence: float | None,
    status: str,
    waited: float = 60,
    days_ago: float = 1,
    action: str = "test.effect",
) -> ApprovalRequest:
    """A request decided ``waited`` seconds after it was made, ``days_ago`` days ago."""
    request = ask(agent, confidence=confidence, action=action)
    if status == ApprovalStatus.EXPIRED:
        ApprovalRequest.objects.filter(pk=request.pk).update(status=status, decided_by_label="escalation sweeper")
    else:
        approval_decide(
            actor=SYSTEM,
            request=request,
            approve=status != ApprovalStatus.REJECTED,
            reason="not covered" if status == ApprovalStatus.REJECTED else "",
            edited_arguments={"label": "edited"} if status == ApprovalStatus.APPROVED_WITH_EDITS else None,
        )
    created = timezone.now() - timedelta(days=days_ago)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        created_at=created, decided_at=created + timedelta(seconds=waited)
    )
    return ApprovalRequest.objects.get(pk=request.pk)


@pytest.fixture
def agent(make_agent):  # noqa: ANN001, ANN201
    return make_agent("test-approval", tier=Tier.ASSISTED)


@pytest.fixture
def history(agent, approvers) -> list[ApprovalRequest]:  # noqa: ANN001
    """Four human decisions (30 s, 60 s, 90 s, 300 s after the request), one expiry, one
    decided by policy at once, one still pending, one from 100 days ago."""
    rows = [
        decided(agent, confidence=0.95, status=ApprovalStatus.APPROVED, waited=30),
        decided(agent, confidence=0.75, status=ApprovalStatus.APPROVED, waited=60),
        decided(agent, confidence=0.72, status=ApprovalStatus.APPROVED_WITH_EDITS, waited=90),
        decided(agent, confidence=0.3, status=ApprovalStatus.REJECTED, waited=300),
        decided(agent, confidence=0.5, status=ApprovalStatus.EXPIRED, waited=900),
    ]
    by_policy, _ = ask(agent, confidence=0.99), None
    ApprovalRequest.objects.filter(pk=by_policy.pk).update(
        status=ApprovalStatus.APPROVED, decided_by_label="policy", decided_at=timezone.now()
    )
    ask(agent, confidence=0.6)  # pending
    rows.append(decided(agent, confidence=0.1, status=ApprovalStatus.REJECTED, waited=10, days_ago=100))
    return rows


# --- The page ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_calibration_is_for_anyone_who_sees_the_team(case, client, agent, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.get(page_url(agent)).status_code == case.status(ok=200)
    assert client.get(reverse("approval-decisions-export", args=[agent.pk])).status_code == case.status(ok=200)


def test_decisions_rates_and_time_to_decision(client, agent, admin_user, history) -> None:
    client.force_login(admin_user)
    figures = client.get(page_url(agent)).context["figures"]  # the last 90 days
    assert (figures.approved, figures.edited, figures.rejected, figures.expired) == (2, 1, 1, 1)
    assert (figures.approval_rate, figures.unchanged_rate, figures.edit_rate, figures.rejection_rate) == (
        75.0,
        50.0,
        25.0,
        25.0,
    )
    # Nearest rank over 30, 60, 90, 300 s: the 2nd and the 4th.
    assert (figures.median_seconds, figures.p95_seconds) == (60.0, 300.0)
    # L1 of the approvers' path is 60 s: two of the four came within it.
    assert (figures.sla_seconds, figures.within_sla, figures.within_sla_rate) == (60, 2, 50.0)
    assert figures.by_level == {1: 4, 2: 0, 3: 0, 4: 0}
    every = client.get(page_url(agent), {"window": "all"}).context["figures"]
    assert (every.decided, every.rejected) == (5, 2)


def test_the_page_shows_the_figures(client, agent, admin_user, history) -> None:
    client.force_login(admin_user)
    html = client.get(page_url(agent)).content.decode()
    assert "75.0 %" in html and "50.0 % as proposed" in html and "25.0 %" in html
    assert ">1 min<" in html and ">5 min<" in html  # median, p95
    assert "<strong>50 %</strong> of decisions came within the first level" in html
    assert reverse("approval-decisions-export", args=[agent.pk]) in html


def test_a_bad_window_is_ignored_for_the_default(client, agent, admin_user, history) -> None:
    client.force_login(admin_user)
    response = client.get(page_url(agent), {"window": "forever"})
    assert response.status_code == 200 and response.context["days"] == 90


# --- Reliability ------------------------------------------------------------------------------


def test_the_reliability_figure_has_the_bins_the_diagonal_and_the_counts(client, agent, admin_user) -> None:
    for confidence, status in (
        (1.0, ApprovalStatus.APPROVED),  # 1.0 belongs to the top bin
        (0.95, ApprovalStatus.APPROVED),
        (0.7, ApprovalStatus.APPROVED),  # 0.7 opens the 0.7 bin
        (0.79, ApprovalStatus.APPROVED_WITH_EDITS),  # approved, but not as proposed
        (0.3, ApprovalStatus.REJECTED),
        (None, ApprovalStatus.APPROVED),  # no confidence: not in the plot
        (0.5, ApprovalStatus.EXPIRED),  # nobody judged it: not in the plot
    ):
        decided(agent, confidence=confidence, status=status)
    client.force_login(admin_user)
    response = client.get(page_url(agent))
    bins = response.context["bins"]
    assert [(b.lower, b.count, b.unchanged) for b in bins if b.count] == [(0.3, 1, 0), (0.7, 2, 1), (0.9, 2, 2)]
    bars, diagonal, line = response.context["figure"]["data"]
    assert bars["type"] == "bar" and list(bars["y"]) == [0, 0, 0, 1, 0, 0, 0, 2, 0, 2]
    assert list(bars["x"]) == [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    assert (list(diagonal["x"]), list(diagonal["y"]), diagonal["line"]["dash"]) == ([0, 1], [0, 1], "dash")
    assert list(line["x"]) == [0.35, 0.75, 0.95] and list(line["y"]) == [0.0, 0.5, 1.0]
    assert [list(c) for c in line["customdata"]] == [[0, 1], [1, 2], [2, 2]]
    html = response.content.decode()
    assert '<script id="reliability-figure" type="application/json">' in html
    assert json.loads(html.split('type="application/json">')[1].split("</script>")[0])["data"][0]["type"] == "bar"


def test_without_confidences_there_is_no_plot(client, agent, admin_user) -> None:
    decided(agent, confidence=None, status=ApprovalStatus.APPROVED)
    client.force_login(admin_user)
    response = client.get(page_url(agent))
    assert response.context["figure"] is None
    assert "plotly.min.js" not in response.content.decode() and "No decision with a stated confidence" in (
        response.content.decode()
    )


def test_plotly_js_is_served_from_the_plotly_package_under_a_strict_csp(client, agent, admin_user) -> None:
    found = finders.find("plotly/plotly.min.js")
    assert found and found.endswith("plotly/package_data/plotly.min.js")
    assert [path for path, _ in PlotlyJsFinder().list(None)] == ["plotly.min.js"]  # nothing else of the package
    assert finders.find("plotly/widgetbundle.js") is None
    response = client.get("/static/plotly/plotly.min.js")
    assert response.status_code == 200 and "javascript" in response["Content-Type"]
    decided(agent, confidence=0.8, status=ApprovalStatus.APPROVED)
    client.force_login(admin_user)
    page = client.get(page_url(agent))
    html = page.content.decode()
    csp = page["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert '<script src="/static/plotly/plotly.min.js" defer></script>' in html
    assert 'id="plotly.js-style-global"' in html and "style=" not in html
    guards = plotly_style_guards()
    assert guards and all(f'<template id="{guard}"></template>' in html for guard in guards)


# --- Export -----------------------------------------------------------------------------------


def read(response) -> bytes:  # noqa: ANN001
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


def test_the_export_is_one_json_object_per_decision(client, agent, admin_user, history) -> None:
    client.force_login(admin_user)
    response = client.get(reverse("approval-decisions-export", args=[agent.pk]))
    assert response.streaming and response["Content-Type"] == "application/jsonl; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-test-approval-decisions.jsonl"'
    lines = [json.loads(line) for line in read(response).decode().splitlines()]
    # Every human decision and the expiry, oldest decision first; not the pending request, not
    # what policy decided at once.
    assert [line["id"] for line in lines] == [r.pk for r in sorted(history, key=lambda r: r.decided_at)]
    edited = next(line for line in lines if line["decision"] == "approved_with_edits")
    assert set(edited) == {
        "id",
        "kind",
        "action",
        "arguments",
        "reasoning",
        "confidence",
        "risk",
        "decision",
        "edits",
        "reason",
        "level",
        "decided_by",
        "created_at",
        "decided_at",
        "waited_seconds",
    }
    assert edited["arguments"] == {"label": "refund-1"} and edited["edits"] == {"label": "edited"}
    assert (edited["confidence"], edited["waited_seconds"], edited["level"], edited["decided_by"]) == (
        0.72,
        90.0,
        1,
        "tests",
    )
    assert edited["action"] == "test.effect" and edited["reasoning"] == "the parcel arrived broken"
    rejected = next(line for line in lines if line["decision"] == "rejected")
    assert rejected["reason"] == "not covered" and rejected["edits"] is None


# --- Promotion --------------------------------------------------------------------------------


@pytest.fixture
def earned(agent, team) -> Agent:  # noqa: ANN001
    """A tier-3 agent meeting its team's rule: three decisions, all approved as proposed."""
    promotion_rule_save(actor=SYSTEM, team=team, min_decisions=3, min_unchanged_rate=100, max_violations=0)
    for _ in range(3):
        decided(agent, confidence=0.9, status=ApprovalStatus.APPROVED)
    return agent


def test_the_default_rule_asks_for_a_thousand_decisions(client, agent, admin_user) -> None:
    for _ in range(3):
        decided(agent, confidence=0.9, status=ApprovalStatus.APPROVED)
    client.force_login(admin_user)
    response = client.get(page_url(agent))
    promotion = response.context["promotion"]
    assert (promotion.rule.min_decisions, promotion.rule.min_unchanged_rate, promotion.rule.max_violations) == (
        1000,
        99,
        0,
    )
    assert not promotion.meets and "Suggest promoting" not in response.content.decode()
    assert "at least 1,000 decisions (3)" in response.content.decode()


def test_meeting_the_rule_suggests_the_next_tier(client, earned, team, make_user) -> None:
    client.force_login(make_user(Role.ADMIN, team))
    html = client.get(page_url(earned)).content.decode()
    assert "Suggest promoting to tier 2 · Supervised." in html
    assert reverse("approval-promote", args=[earned.pk]) in html
    client.force_login(make_user(Role.VIEWER, team))
    html = client.get(page_url(earned)).content.decode()
    assert "Suggest promoting to tier 2" in html and reverse("approval-promote", args=[earned.pk]) not in html


def test_one_rejection_is_a_violation(client, earned, admin_user) -> None:
    decided(earned, confidence=0.9, status=ApprovalStatus.REJECTED)
    client.force_login(admin_user)
    promotion = client.get(page_url(earned)).context["promotion"]
    assert promotion.violations == 1 and not promotion.meets


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_applying_a_promotion_follows_the_matrix(case, client, earned, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("approval-promote", args=[earned.pk]), {"tier": 2, "reason": "calibrated"})
    assert response.status_code == case.status(ok=302)
    earned.refresh_from_db()
    assert earned.tier == (Tier.SUPERVISED if case.outcome == "ok" else Tier.ASSISTED)


def test_applying_is_audited_and_counting_starts_again(client, earned, admin_user) -> None:
    client.force_login(admin_user)
    response = client.post(
        reverse("approval-promote", args=[earned.pk]), {"tier": 2, "reason": "3 decisions, all approved"}, follow=True
    )
    assert "Test-Approval is now tier 2 · Supervised." in response.content.decode()
    audit = AuditEvent.objects.get(action="agent.set_tier", object_id=str(earned.pk))
    assert (audit.before, audit.after, audit.reason, audit.actor_label) == (
        {"tier": 3},
        {"tier": 2},
        "3 decisions, all approved",
        "alice-admin",
    )
    assert AgentEvent.objects.filter(agent=earned, kind="tier", new="2").exists()
    promotion = response.context["promotion"]
    assert promotion.decisions == 0 and not promotion.meets  # judged on decisions at the new tier


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tier": 2, "reason": ""}, "Say why; the tier change is kept in the audit log."),
        ({"tier": 1, "reason": "skip a tier"}, "does not meet the promotion rule to tier 1"),
    ],
)
def test_a_bad_promotion_changes_nothing(client, earned, admin_user, data, message) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("approval-promote", args=[earned.pk]), data)
    assert response.status_code == 400 and message in response.content.decode()
    earned.refresh_from_db()
    assert earned.tier == Tier.ASSISTED and not AuditEvent.objects.filter(action="agent.set_tier").exists()


def test_a_promotion_the_agent_has_not_earned_is_refused(client, agent, admin_user) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("approval-promote", args=[agent.pk]), {"tier": 2, "reason": "trust me"})
    assert response.status_code == 400 and "does not meet the promotion rule" in response.content.decode()
    agent.refresh_from_db()
    assert agent.tier == Tier.ASSISTED


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_changing_the_rule_follows_the_matrix(case, client, agent, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(
        reverse("approval-promotion-rule", args=[agent.pk]),
        {"min_decisions": 50, "min_unchanged_rate": "95", "max_violations": 1},
    )
    assert response.status_code == case.status(ok=302)
    assert PromotionRule.objects.filter(team=team, min_decisions=50).exists() == (case.outcome == "ok")
    if case.outcome == "ok":
        assert AuditEvent.objects.filter(action="promotion_rule.save").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"min_decisions": 50, "min_unchanged_rate": "150", "max_violations": 0}, "less than or equal to 100"),
        ({"min_decisions": 0, "min_unchanged_rate": "99", "max_violations": 0}, "greater than or equal to 1"),
        ({"min_decisions": 50, "min_unchanged_rate": "99", "max_violations": -1}, "greater than or equal to 0"),
    ],
)
def test_a_bad_rule_is_refused_and_changes_nothing(client, agent, team, admin_user, data, message) -> None:
    promotion_rule_save(actor=SYSTEM, team=team, min_decisions=10, min_unchanged_rate=90, max_violations=0)
    client.force_login(admin_user)
    response = client.post(reverse("approval-promotion-rule", args=[agent.pk]), data)
    assert response.status_code == 400 and message in response.content.decode()
    assert 'cal-rule" open' in response.content.decode()
    rule = PromotionRule.objects.get(team=team)
    assert (rule.min_decisions, rule.min_unchanged_rate, rule.max_violations) == (10, 90, 0)
