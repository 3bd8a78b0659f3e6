"""Access helpers: roles per team (guardian object permissions) and organisation-wide."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404

from cockpit import access
from cockpit.audit import Actor
from cockpit.models import ApiKey, AuditEvent, Membership, Team
from cockpit.roles import ROLE_PERMISSIONS, Role, TeamPerm
from cockpit.services import api_key_create, membership_grant, membership_revoke, org_role_grant
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


@pytest.mark.parametrize("role", Role.values)
def test_a_team_role_grants_exactly_its_permissions_in_that_team_only(role, make_user, team, other_team) -> None:
    user = make_user(role, team)
    for perm in TeamPerm.values:
        assert access.has_team_perm(user, perm, team) is (perm in ROLE_PERMISSIONS[role]), perm
        assert access.has_team_perm(user, perm, other_team) is False


def test_roles_in_several_teams_add_up(make_user, team, other_team) -> None:
    user = make_user(Role.OPERATOR, team)
    membership_grant(actor=ACTOR, user=user, team=other_team, role=Role.FINANCE)
    user_access = access.for_user(user)
    assert user_access.team_ids(TeamPerm.OPERATE) == {team.pk}
    assert user_access.team_ids(TeamPerm.VIEW_COSTS) == {other_team.pk}
    assert set(access.teams_for_user(user)) == {team, other_team}


def test_revoking_one_role_keeps_what_another_role_grants(make_user, team) -> None:
    user = make_user(Role.OPERATOR, team)
    membership_grant(actor=ACTOR, user=user, team=team, role=Role.APPROVER)
    membership_revoke(actor=ACTOR, membership=Membership.objects.get(user=user, role=Role.OPERATOR))
    access.forget(user)
    assert not access.has_team_perm(user, TeamPerm.OPERATE, team)
    assert access.has_team_perm(user, TeamPerm.APPROVE, team)
    assert access.has_team_perm(user, TeamPerm.VIEW, team)
    assert AuditEvent.objects.filter(action="membership.revoke", team=team).count() == 1


def test_org_wide_role_covers_every_team_including_new_ones(make_user, team) -> None:
    user = make_user()
    org_role_grant(actor=ACTOR, user=user, role=Role.FINANCE)
    later = Team.objects.create(slug="later", name="Later")
    assert access.has_team_perm(user, TeamPerm.VIEW_COSTS, later)
    assert not access.has_team_perm(user, TeamPerm.OPERATE, later)
    assert access.for_user(user).is_org_wide


def test_inactive_users_hold_nothing(make_user, team) -> None:
    user = make_user(Role.ADMIN, team, is_active=False)
    assert not access.has_team_perm(user, TeamPerm.VIEW, team)


def test_access_is_computed_with_a_constant_number_of_queries(make_user, team, django_assert_max_num_queries) -> None:
    user = make_user(Role.VIEWER, team)
    for n in range(20):
        membership_grant(
            actor=ACTOR,
            user=user,
            team=Team.objects.create(slug=f"t{n}", name=f"T{n}"),
            role=Role.VIEWER,
        )
    access.forget(user)
    with django_assert_max_num_queries(4):
        assert len(access.for_user(user).team_ids()) == 21


def test_unknown_role_is_refused(make_user, team) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="Unknown role"):
        membership_grant(actor=ACTOR, user=make_user(), team=team, role="overlord")


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_get_for_user_follows_the_matrix(case, team, other_team) -> None:
    """The helper every view uses: 404 unless visible, 403 unless permitted."""
    user = case.make_user(team=team, other_team=other_team)
    api_key, _ = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    outcome = "ok"
    try:
        access.get_for_user(user, ApiKey.objects.all(), TeamPerm.MANAGE, pk=api_key.pk)
    except PermissionDenied:
        outcome = "forbidden"
    except Http404:
        outcome = "hidden"
    assert outcome == case.outcome


def test_get_for_user_hides_missing_objects(admin_user) -> None:
    with pytest.raises(Http404):
        access.get_for_user(admin_user, ApiKey.objects.all(), pk=9999)


def test_principal_scoping_for_api_keys(team, other_team) -> None:
    api_key, _ = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    assert access.principal_team_ids(api_key) == {team.pk}
    scoped = access.scope_to_principal(AuditEvent.objects.all(), api_key)
    assert set(scoped.values_list("team_id", flat=True)) == {team.pk}
