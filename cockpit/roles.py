"""Roles: what each of the five role groups may do.

A role is held either for one team (a ``Membership``: guardian object permissions on that
``Team``) or organisation-wide (membership of the role's ``Group``: model-level permissions,
valid for every team). ``cockpit.access`` answers "may this user do X for team T" from both.
The groups and their permissions are kept in step with ``ROLE_PERMISSIONS`` after every migrate.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    APPROVER = "approver", "Approver"
    FINANCE = "finance", "Finance"
    ADMIN = "admin", "Admin"


class TeamPerm(models.TextChoices):
    """Permission codenames on ``cockpit.Team``; every team-scoped check names one of these."""

    VIEW = "view_team", "See the team's agents, runs, approvals and traces"
    OPERATE = "operate_team", "Pause, resume, cancel and override the team's runs and agents"
    APPROVE = "approve_team", "Decide the team's approval requests"
    VIEW_COSTS = "view_team_costs", "See the team's costs, budgets and forecasts"
    VIEW_AUDIT = "view_team_audit", "See the team's audit log"
    MANAGE = "manage_team", "Manage the team's settings, members, API keys, policies and budgets"


ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({TeamPerm.VIEW}),
    Role.OPERATOR: frozenset({TeamPerm.VIEW, TeamPerm.OPERATE, TeamPerm.VIEW_AUDIT}),
    Role.APPROVER: frozenset({TeamPerm.VIEW, TeamPerm.APPROVE}),
    Role.FINANCE: frozenset({TeamPerm.VIEW, TeamPerm.VIEW_COSTS, TeamPerm.VIEW_AUDIT}),
    Role.ADMIN: frozenset(TeamPerm.values),
}


def ensure_role_groups(**kwargs: object) -> None:
    """Create the five role groups with the permissions their role grants organisation-wide
    (after every ``migrate``, and after a test database is flushed)."""
    from django.contrib.auth.models import Group, Permission

    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=str(role))
        group.permissions.set(Permission.objects.filter(content_type__app_label="cockpit", codename__in=codenames))


def perms_for_roles(roles: set[str]) -> frozenset[str]:
    held: set[str] = set()
    for role in roles:
        held |= ROLE_PERMISSIONS[role]
    return frozenset(held)
