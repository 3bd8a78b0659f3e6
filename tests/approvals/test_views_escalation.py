"""The escalation page (levels, members, channels; never a webhook secret) and its editor for
team admins: good input saves (audited), bad input re-renders with the errors and changes
nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from approvals.models import EscalationLevel, EscalationPolicy, OnExpiry
from approvals.services import escalation_policy_save
from cockpit.models import AuditEvent
from cockpit.roles import Role
from tests.factories import SYSTEM
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
PAGE = "/approvals/escalation/"
SECRET = "s3cret-signing-key"


def form_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Alpha approvals",
        "agent": "",
        "risk": "",
        "on_expiry": OnExpiry.REJECT,
        "separation_of_duties": "on",
        "l1-group": "",
        "l1-sla": "2",
        "l1-sla_unit": "min",
        "l1-channels": ["email"],
        "l2-sla": "",
        "l2-sla_unit": "min",
        "l3-sla": "",
        "l3-sla_unit": "min",
        "l4-sla": "",
        "l4-sla_unit": "min",
    }
    data.update(overrides)
    return data


def levels_of(policy: EscalationPolicy) -> list[tuple[int, str | None, int, list[str], str, str]]:
    return [
        (lv.level, lv.group.name if lv.group else None, lv.sla_seconds, lv.channels, lv.webhook_url, lv.webhook_secret)
        for lv in policy.levels.select_related("group").order_by("level")
    ]


@pytest.fixture
def hooked(team, approvers) -> EscalationPolicy:  # noqa: ANN001
    """The approvers' policy, with a signed webhook at L2."""
    groups = [Group.objects.get(name=f"{team.slug} L{n}") for n in (1, 2, 3)]
    return escalation_policy_save(
        actor=SYSTEM,
        team=team,
        name="Alpha approvals",
        levels=[
            {"group": groups[0], "sla_seconds": 60, "channels": ["email"]},
            {
                "group": groups[1],
                "sla_seconds": 90,
                "channels": ["webhook"],
                "webhook_url": "https://hooks.example.com/alpha",
                "webhook_secret": SECRET,
            },
            {"group": groups[2], "sla_seconds": 300, "channels": []},
        ],
    )


# --- Reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_everyone_reads_their_teams_paths_and_never_a_secret(case, client, team, other_team, hooked) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert SECRET not in html
    if case.outcome == "ok":
        assert "alpha L2" in html and "cleo" in html and "1 min 30 s" in html
        assert "https://hooks.example.com/alpha" in html and ">signed<" in html
        assert "Reject the action" in html and "whoever started a run may not approve" in html
    else:
        assert "alpha L2" not in html


def test_the_editor_is_offered_to_team_admins_only(client, team, make_user, hooked) -> None:
    edit = reverse("approval-escalation-edit", args=[hooked.pk])
    client.force_login(make_user(Role.ADMIN, team))
    assert edit in client.get(PAGE).content.decode()
    client.force_login(make_user(Role.APPROVER, team))
    assert edit not in client.get(PAGE).content.decode()


# --- Editing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_editing_follows_the_matrix(case, client, team, other_team, hooked) -> None:
    before = levels_of(hooked)
    client.force_login(case.make_user(team=team, other_team=other_team))
    edit = reverse("approval-escalation-edit", args=[hooked.pk])
    assert client.get(edit).status_code == case.status(ok=200)
    response = client.post(edit, form_data(**{"l1-sla": "5"}))
    assert response.status_code == case.status(ok=302)
    after = levels_of(EscalationPolicy.objects.get(pk=hooked.pk))
    assert after != before if case.outcome == "ok" else after == before


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_creating_follows_the_matrix(case, client, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    new = reverse("approval-escalation-new")
    assert client.get(new, {"team": team.slug}).status_code == case.status(ok=200)
    response = client.post(new, {**form_data(), "team": team.slug})
    assert response.status_code == case.status(ok=302)
    assert EscalationPolicy.objects.filter(team=team).exists() == (case.outcome == "ok")


def test_a_new_path_is_saved_in_seconds_with_its_groups_and_audited(client, admin_user, team, approvers) -> None:
    l1, l2 = Group.objects.get(name="alpha L1"), Group.objects.get(name="alpha L2")
    client.force_login(admin_user)
    data = form_data(
        **{
            "name": "High risk",
            "risk": "high",
            "on_expiry": OnExpiry.CANCEL_RUN,
            "separation_of_duties": "",
            "l1-group": l1.pk,
            "l1-sla": "90",
            "l1-sla_unit": "s",
            "l2-group": l2.pk,
            "l2-sla": "10",
            "l2-channels": ["email", "webhook"],
            "l2-webhook_url": "https://hooks.example.com/high",
            "l2-webhook_secret": SECRET,
        }
    )
    response = client.post(reverse("approval-escalation-new"), {**data, "team": team.slug}, follow=True)
    policy = EscalationPolicy.objects.get(team=team, risk="high")
    assert response.redirect_chain[-1][0].endswith(f"#escalation-{policy.pk}")
    assert "High risk: saved, with 2 level(s)." in response.content.decode()
    assert (policy.on_expiry, policy.separation_of_duties) == (OnExpiry.CANCEL_RUN, False)
    assert levels_of(policy) == [
        (1, "alpha L1", 90, ["email"], "", ""),
        (2, "alpha L2", 600, ["email", "webhook"], "https://hooks.example.com/high", SECRET),
    ]
    assert EscalationLevel.objects.get(policy=policy, level=2).group.name == "alpha L2"
    assert AuditEvent.objects.filter(action="escalation_policy.save", actor_label="alice-admin").exists()
    assert SECRET not in response.content.decode()


def test_an_empty_secret_keeps_the_current_one_and_it_is_never_shown(client, admin_user, hooked) -> None:
    edit = reverse("approval-escalation-edit", args=[hooked.pk])
    client.force_login(admin_user)
    html = client.get(edit).content.decode()
    assert SECRET not in html and "A secret is set; leave empty to keep it." in html
    assert 'value="https://hooks.example.com/alpha"' in html and 'name="l2-sla" value="90"' in html
    l2 = Group.objects.get(name="alpha L2")
    data = form_data(
        **{
            "l2-group": l2.pk,
            "l2-sla": "3",
            "l2-channels": ["webhook"],
            "l2-webhook_url": "https://hooks.example.com/alpha",
        }
    )
    assert client.post(edit, data).status_code == 302
    assert levels_of(EscalationPolicy.objects.get(pk=hooked.pk))[1][2:] == (
        180,
        ["webhook"],
        "https://hooks.example.com/alpha",
        SECRET,
    )
    data["l2-webhook_secret"] = "new-key"
    client.post(edit, data)
    assert EscalationLevel.objects.get(policy=hooked, level=2).webhook_secret == "new-key"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"l1-sla": ""}, "Level 1 needs an SLA"),
        ({"l3-sla": "5"}, "L2 is empty: a path has no gaps."),
        ({"l1-channels": ["webhook"]}, "L1: the webhook channel needs a URL."),
        ({"l1-sla": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"l1-webhook_url": "not a url"}, "Enter a valid URL."),
        ({"l1-group": "999999"}, "Select a valid choice."),
        ({"on_expiry": "ignore"}, "Select a valid choice."),
        ({"name": ""}, "This field is required."),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(client, admin_user, hooked, overrides, message) -> None:
    before = levels_of(hooked)
    saves = AuditEvent.objects.filter(action="escalation_policy.save").count()
    client.force_login(admin_user)
    response = client.post(reverse("approval-escalation-edit", args=[hooked.pk]), form_data(**overrides))
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html and "Nothing was saved" in html
    assert SECRET not in html
    assert (
        levels_of(EscalationPolicy.objects.get(pk=hooked.pk)) == before
        and AuditEvent.objects.filter(action="escalation_policy.save").count() == saves
    )


def test_a_second_policy_for_the_same_agent_and_risk_is_refused(client, admin_user, team, hooked) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("approval-escalation-new"), {**form_data(name="Again"), "team": team.slug})
    assert response.status_code == 400 and "edit it instead" in response.content.decode()
    assert (
        EscalationPolicy.objects.filter(team=team).count() == 1 and EscalationPolicy.objects.get().name == hooked.name
    )


def test_what_a_policy_applies_to_cannot_be_changed_by_editing(client, admin_user, make_agent, hooked) -> None:
    agent = make_agent("test-approval")
    client.force_login(admin_user)
    edit = reverse("approval-escalation-edit", args=[hooked.pk])
    assert client.post(edit, form_data(agent=agent.pk, risk="high")).status_code == 302
    hooked.refresh_from_db()
    assert (hooked.agent_id, hooked.risk) == (None, "")


def test_role_groups_are_not_offered_as_approver_groups(client, admin_user, hooked) -> None:
    client.force_login(admin_user)
    options = (
        client.get(reverse("approval-escalation-edit", args=[hooked.pk])).content.decode().split('name="l1-group"')[1]
    )
    options = options.split("</select>")[0]
    assert "alpha L1" in options and ">admin<" not in options and ">approver<" not in options


def test_a_new_policy_needs_a_team(client, admin_user) -> None:
    client.force_login(admin_user)
    assert client.get(reverse("approval-escalation-new")).status_code == 400
