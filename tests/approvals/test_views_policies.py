"""The policies page: the sets in force and their versions, rollback and the editor for admins
(refusals keep what was typed and change nothing), and "test a decision"."""

from __future__ import annotations

import pytest
from django.urls import reverse

from approvals.models import ActivePolicy, Policy, team_scope
from approvals.services import policy_save
from cockpit.models import AuditEvent
from cockpit.roles import Role
from fleet.models import Tier
from tests.factories import SYSTEM
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
PAGE = "/approvals/policies/"
HTMX = {"HTTP_HX_REQUEST": "true"}
RULE = """@id("no-merging")
forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"crm.merge");
"""
REFUNDS = """@id("refunds-up-to-500")
forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"payments.refund")
when { context has amount_cents && context.amount_cents > 50000 };
"""


def in_force(team=None) -> Policy:  # noqa: ANN001
    return ActivePolicy.objects.get(scope=team_scope(team) if team else "global").policy


@pytest.fixture
def team_policy(team) -> Policy:  # noqa: ANN001
    policy_save(actor=SYSTEM, team=team, source=RULE, comment="first")
    return policy_save(actor=SYSTEM, team=team, source=REFUNDS, comment="refund ceiling")


# --- Reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True, other="ok", no_role="ok"), ids=str)
def test_everyone_reads_the_global_policy_and_their_teams(case, client, team, other_team, team_policy) -> None:
    policy_save(actor=SYSTEM, team=other_team, source=RULE, comment="theirs")
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(PAGE)
    assert response.status_code == 200
    labels = [scope.label for scope, _ in response.context["cards"]]
    html = response.content.decode()
    assert labels[0] == "Global policy" and "tier-1-full-auto" in html
    sees_alpha = case.where == "own" or case.where == "org"
    assert ("Alpha policy" in labels) == sees_alpha and ("refunds-up-to-500" in html) == sees_alpha
    assert ("Beta policy" in labels) == (case.where in ("other", "org"))


def test_versions_author_time_comment_and_live_markup(client, admin_user, team, team_policy) -> None:
    client.force_login(admin_user)
    html = client.get(PAGE).content.decode()
    card = html.split(f'id="policy-team-{team.pk}"')[1]
    assert "version 2 in force" in card and "refund ceiling" in card and "tests" in card
    assert "Earlier versions" in card and "v1" in card and "first" in card
    assert 'data-live-on="policy.changed"' in card and f'data-live-match=\'{{"scope": "team:{team.pk}"}}\'' in card
    response = client.get(PAGE, HTTP_HX_TARGET=f"policy-team-{team.pk}-versions", **HTMX)
    assert response.content.decode().lstrip().startswith(f'<div id="policy-team-{team.pk}-versions"')


@pytest.mark.parametrize(
    ("role", "org", "edits_team", "edits_global"),
    [(Role.ADMIN, False, True, False), (Role.APPROVER, False, False, False), (Role.ADMIN, True, True, True)],
)
def test_only_admins_get_the_editor(client, team, team_policy, make_user, role, org, edits_team, edits_global) -> None:
    from cockpit.services import org_role_grant
    from tests.factories import UserFactory

    if org:
        user = UserFactory()
        org_role_grant(actor=SYSTEM, user=user, role=role)
    else:
        user = make_user(role, team)
    client.force_login(user)
    cards = {scope.key: form for scope, form in client.get(PAGE).context["cards"]}
    assert (cards[team.slug] is not None) == edits_team
    assert (cards["global"] is not None) == edits_global


# --- Saving -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_saving_a_team_policy_follows_the_matrix(case, client, team, other_team, team_policy) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("approval-policy-save"), {"scope": team.slug, "source": RULE, "comment": "back"})
    assert response.status_code == case.status(ok=302)
    assert in_force(team).version == (3 if case.outcome == "ok" else 2)


def test_the_global_policy_is_for_superusers_and_org_admins(client, admin_user, superuser) -> None:
    before = in_force()
    client.force_login(admin_user)  # admin of a team only
    response = client.post(reverse("approval-policy-save"), {"scope": "global", "source": before.source + RULE})
    assert response.status_code == 403 and "Only superusers and organisation-wide admins" in response.content.decode()
    assert in_force() == before
    client.force_login(superuser)
    response = client.post(
        reverse("approval-policy-save"), {"scope": "global", "source": before.source + RULE}, **HTMX
    )
    assert response.status_code == 200 and "Global policy v2 is in force." in response["HX-Trigger"]
    assert in_force().version == 2
    assert AuditEvent.objects.filter(action="policy.save", actor_label="root").exists()


def test_saving_answers_htmx_with_the_card(client, admin_user, team, team_policy) -> None:
    client.force_login(admin_user)
    response = client.post(
        reverse("approval-policy-save"), {"scope": team.slug, "source": RULE, "comment": "no merging"}, **HTMX
    )
    html = response.content.decode().lstrip()
    assert response.status_code == 200 and html.startswith(
        f'<section class="card policy-card" id="policy-team-{team.pk}"'
    )
    assert "version 3 in force" in html and "no merging" in html
    assert AuditEvent.objects.filter(action="policy.save", actor_label="alice-admin", reason="no merging").exists()


@pytest.mark.parametrize("htmx", [True, False])
def test_a_bad_policy_is_refused_next_to_the_editor_and_keeps_what_was_typed(
    htmx, client, admin_user, team, team_policy
) -> None:
    typed = (
        '@id("typo")\nforbid (principal, action == Cockpit::Action::"execute", resource) '
        "when { resource.riskiness > 1 };"
    )
    client.force_login(admin_user)
    response = client.post(
        reverse("approval-policy-save"),
        {"scope": team.slug, "source": typed, "comment": "oops"},
        **(HTMX if htmx else {}),
    )
    assert response.status_code == (422 if htmx else 400)
    html = response.content.decode()
    card = html.split(f'id="policy-team-{team.pk}"')[1]
    problems = card.split("policy-problems has-problems")[1].split("</aside>")[0]
    assert "Not saved" in problems and "typo: " in problems
    assert "resource.riskiness &gt; 1 };</textarea>" in card
    assert "data-policy-editor open" in card
    assert in_force(team) == team_policy and Policy.objects.filter(team=team).count() == 2


def test_a_global_policy_cannot_be_emptied(client, superuser) -> None:
    client.force_login(superuser)
    for typed, message in (("", "Write the policy in Cedar"), ("  \n", "The global policy cannot be empty")):
        response = client.post(reverse("approval-policy-save"), {"scope": "global", "source": typed}, **HTMX)
        assert response.status_code == 422 and message in response.content.decode()
    assert in_force().version == 1


# --- Rollback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_rolling_back_follows_the_matrix(case, client, team, other_team, team_policy) -> None:
    first = Policy.objects.get(team=team, version=1)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("approval-policy-activate", args=[first.pk]))
    assert response.status_code == case.status(ok=302)
    assert in_force(team) == (first if case.outcome == "ok" else team_policy)


def test_rolling_back_is_audited_and_says_so(client, admin_user, team, team_policy) -> None:
    first = Policy.objects.get(team=team, version=1)
    client.force_login(admin_user)
    response = client.post(reverse("approval-policy-activate", args=[first.pk]), **HTMX)
    assert response.status_code == 200 and "Alpha policy v1 is in force again." in response["HX-Trigger"]
    assert "version 1 in force" in response.content.decode()
    assert AuditEvent.objects.filter(action="policy.activate", object_id=str(first.pk)).exists()
    # Only superusers and organisation-wide admins put a global version back.
    global_v1 = in_force()
    assert client.post(reverse("approval-policy-activate", args=[global_v1.pk])).status_code == 403


# --- Test a decision --------------------------------------------------------------------------


def verdict(client, **query: object):  # noqa: ANN001, ANN201
    response = client.get(PAGE, query, HTTP_HX_TARGET="policy-test", **HTMX)
    return response, response.context.get("verdict") if response.context else None


def test_testing_a_decision_names_the_rules(client, make_agent, team, make_user, team_policy) -> None:
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    client.force_login(make_user(Role.VIEWER, team))

    response, result = verdict(client, agent=agent.pk, tool="test.effect", confidence="0.9")
    assert response.status_code == 200 and response.content.decode().lstrip().startswith('<section id="policy-test"')
    assert result.verdict.allowed and not result.verdict.unattended
    assert (
        "a human must decide" in response.content.decode() and "data-verdict-unattended" in response.content.decode()
    )

    response, result = verdict(
        client, agent=agent.pk, action="payments.refund", risk="high", side_effect="on", amount="500.01"
    )
    assert not result.verdict.allowed and result.verdict.forbidden_by == ["refunds-up-to-500"]
    assert result.context["amount_cents"] == 50001
    assert ">forbidden<" in response.content.decode() and "refunds-up-to-500" in response.content.decode()
    assert [p.ref for p in result.policies] == ["global v1", "alpha v2"]

    _, result = verdict(client, agent=agent.pk, tool="test.read")
    assert result.verdict.allowed and result.verdict.unattended
    assert "read-only-unattended" in result.verdict.permitted_by


def test_testing_needs_an_agent_the_user_sees_and_an_action(client, make_agent, team, other_team, make_user) -> None:
    theirs = make_agent("test-approval", slug="theirs", owner=other_team)
    ours = make_agent("test-approval", slug="ours")
    client.force_login(make_user(Role.VIEWER, team))
    response, result = verdict(client, agent=theirs.pk, tool="test.effect")
    assert response.status_code == 422 and result is None and "Select a valid choice" in response.content.decode()
    response, result = verdict(client, agent=ours.pk)
    assert response.status_code == 422 and "Choose a tool, or name the action." in response.content.decode()
    plain = client.get(PAGE, {"agent": ours.pk, "confidence": "2"})
    assert plain.status_code == 400 and "less than or equal to 1" in plain.content.decode()
