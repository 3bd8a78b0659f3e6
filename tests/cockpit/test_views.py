"""Platform pages: what each role sees, and what each may change."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from cockpit.audit import Actor
from cockpit.models import ApiKey, AuditEvent, Membership
from cockpit.roles import Role
from cockpit.services import api_key_create
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def test_fleet_overview_counts_only_visible_teams(client, make_user, team, other_team) -> None:
    api_key_create(actor=ACTOR, team=team, name="mine", scopes=["read"])
    api_key_create(actor=ACTOR, team=other_team, name="theirs", scopes=["read"])
    client.force_login(make_user(Role.VIEWER, team))
    response = client.get("/")
    assert response.context["counters"]["teams"] == 1
    assert response.context["counters"]["api_keys"] == 1


def test_fleet_counters_fragment_for_htmx(client, admin_user) -> None:
    client.force_login(admin_user)
    response = client.get("/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="fleet-counters")
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="fleet-counters"')
    assert "<html" not in html


def test_counters_fragment_skips_the_agent_tiles(client, admin_user) -> None:
    client.force_login(admin_user)
    response = client.get("/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="fleet-counters")
    assert "counters" in response.context and "tiles" not in response.context
    assert 'id="fleet-tiles"' not in response.content.decode()


def test_body_subscribes_to_the_users_teams_only(client, make_user, team, other_team) -> None:
    client.force_login(make_user(Role.OPERATOR, team))
    html = client.get("/").content.decode()
    assert f'data-live-topics="team.{team.pk}"' in html


def test_team_switch_scopes_pages_and_refuses_invisible_teams(client, make_user, team, other_team) -> None:
    user = make_user(Role.OPERATOR, team)
    from cockpit.services import membership_grant

    membership_grant(actor=ACTOR, user=user, team=other_team, role=Role.VIEWER)
    client.force_login(user)
    assert client.get("/").context["counters"]["teams"] == 2
    assert client.post(reverse("team-switch"), {"team": "beta", "next": "/audit/"})["Location"] == "/audit/"
    assert client.get("/").context["counters"]["teams"] == 1
    assert client.post(reverse("team-switch"), {"team": "nope"}).status_code == 404
    assert client.post(reverse("team-switch"), {"team": "", "next": "https://evil.example/"})["Location"] == "/"


# --- API keys page -----------------------------------------------------------------------------


def test_admin_creates_a_key_and_sees_it_once(client, admin_user, team) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("api-keys"), {"team": "alpha", "name": "collector", "scopes": ["ingest", "read"]})
    assert response.status_code == 201
    raw = re.search(r'<code id="new-key">(ck_[^<]+)</code>', response.content.decode()).group(1)
    assert ApiKey.objects.get(name="collector").secret_hash == ApiKey.hash_secret(raw)
    assert raw not in client.get(reverse("api-keys")).content.decode()


def test_invalid_key_form_shows_errors_and_creates_nothing(client, admin_user) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("api-keys"), {"team": "alpha", "name": "", "scopes": []})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_admin_cannot_create_keys_for_a_team_they_do_not_manage(client, admin_user, other_team) -> None:
    client.force_login(admin_user)
    response = client.post(reverse("api-keys"), {"team": "beta", "name": "sneaky", "scopes": ["read"]})
    assert response.status_code == 400
    assert not ApiKey.objects.filter(team=other_team).exists()


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_revoking_a_key_follows_the_matrix(case, client, team, other_team) -> None:
    api_key, _ = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("api-key-revoke", args=[api_key.pk]))
    assert response.status_code == case.status(ok=302)
    api_key.refresh_from_db()
    assert (api_key.revoked_at is not None) is (case.outcome == "ok")


def test_htmx_revoke_returns_the_updated_row(client, admin_user, team) -> None:
    api_key, _ = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    client.force_login(admin_user)
    response = client.post(reverse("api-key-revoke", args=[api_key.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode().strip()
    assert html.startswith(f'<tr id="api-key-{api_key.pk}"') and "revoked" in html


def test_key_page_is_for_team_admins(client, make_user, team) -> None:
    client.force_login(make_user(Role.OPERATOR, team))
    assert client.get(reverse("api-keys")).status_code == 403


# --- Audit page -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [
        (Role.VIEWER, 403),
        (Role.APPROVER, 403),
        (Role.OPERATOR, 200),
        (Role.FINANCE, 200),
        (Role.ADMIN, 200),
    ],
)
def test_audit_page_is_for_admins_operators_and_finance(client, make_user, team, role, status) -> None:
    client.force_login(make_user(role, team))
    assert client.get(reverse("audit")).status_code == status


def test_audit_page_lists_only_the_users_teams_and_filters(client, make_user, team, other_team) -> None:
    api_key_create(actor=ACTOR, team=team, name="ours", scopes=["read"])
    api_key_create(actor=ACTOR, team=other_team, name="theirs", scopes=["read"])
    client.force_login(make_user(Role.OPERATOR, team))
    events = client.get(reverse("audit")).context["events"]
    assert events and {e.team_id for e in events} == {team.pk}
    ours = ApiKey.objects.get(name="ours")
    filtered = client.get(reverse("audit"), {"action": "api_key.create"}).context["events"]
    assert [(e.action, e.object_id) for e in filtered] == [("api_key.create", str(ours.pk))]


def test_audit_page_rejects_bad_filters_clearly(client, admin_user) -> None:
    client.force_login(admin_user)
    response = client.get(reverse("audit"), {"since": "2026-02-01T00:00", "until": "2026-01-01T00:00"})
    assert response.status_code == 400  # like the runs and traces lists
    assert "&#x27;From&#x27; must be before &#x27;to&#x27;." in response.content.decode()


def test_audit_page_query_count_does_not_grow_with_rows(
    client, admin_user, team, django_assert_max_num_queries
) -> None:
    for n in range(30):
        api_key_create(actor=ACTOR, team=team, name=f"k{n}", scopes=["read"])
    client.force_login(admin_user)
    client.get(reverse("audit"))
    with django_assert_max_num_queries(16):
        client.get(reverse("audit"))


# --- Teams page -------------------------------------------------------------------------------


def test_team_admin_grants_and_revokes_roles(client, admin_user, make_user, team) -> None:
    bob = make_user(username="bob")
    client.force_login(admin_user)
    response = client.post(reverse("membership-grant", args=["alpha"]), {"username": "bob", "role": "approver"})
    assert response.status_code == 302
    membership = Membership.objects.get(user=bob, team=team, role="approver")
    client.post(reverse("membership-revoke", args=[membership.pk]))
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert AuditEvent.objects.filter(action__startswith="membership.", actor_user=admin_user).count() == 2


def test_granting_to_an_unknown_user_changes_nothing(client, admin_user) -> None:
    client.force_login(admin_user)
    client.post(reverse("membership-grant", args=["alpha"]), {"username": "ghost", "role": "viewer"})
    assert not Membership.objects.filter(user__username="ghost").exists()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.FINANCE])
def test_only_admins_change_roles(client, make_user, team, role) -> None:
    client.force_login(make_user(role, team))
    bob = make_user(username="bob")
    assert (
        client.post(reverse("membership-grant", args=["alpha"]), {"username": "bob", "role": "admin"}).status_code
        == 403
    )
    assert not Membership.objects.filter(user=bob).exists()


# --- System page ------------------------------------------------------------------------------


def test_system_page_is_for_organisation_wide_admins(client, admin_user, superuser) -> None:
    client.force_login(admin_user)
    assert client.get(reverse("system")).status_code == 403
    client.force_login(superuser)
    assert client.get(reverse("system")).status_code == 200


@pytest.mark.parametrize(
    ("path", "section"),
    [
        ("/", "Fleet"),
        ("/approvals/policies/", "Approvals"),
        ("/traces/incidents/", "Incidents"),
        ("/traces/discovered/", "Fleet"),
        ("/traces/", "Traces"),
        ("/finops/", "FinOps"),
    ],
)
def test_the_main_navigation_marks_the_section_of_the_page(client, superuser, team, path, section) -> None:
    client.force_login(superuser)
    response = client.get(path)
    assert response.status_code == 200
    nav = response.content.decode().split('<nav class="mainnav"', 1)[1].split("</nav>", 1)[0]
    assert re.findall(r'aria-current="page">([^<]+)<', nav) == [section]
