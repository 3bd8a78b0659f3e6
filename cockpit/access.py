"""Who may see and do what, for every app. Views and APIs ask here; templates never decide.

A user holds a role for one team (``Membership`` → guardian object permissions on the ``Team``)
or organisation-wide (the role's ``Group`` → model-level permissions, valid for every team).
Superusers hold everything.

The access helpers follow one rule (see docs/development.md § Who may):

* the object does not exist, or the user may not *see* its team → ``Http404``;
* the user sees it but may not perform ``perm`` on it → ``PermissionDenied`` (403).

Usage in a view::

    run = get_for_user(request.user, Run.objects.select_related("team"), TeamPerm.OPERATE, pk=pk)

Apps add ``get_<obj>_for_user`` wrappers next to their models' selectors when they need more
than a lookup. API keys (machines) are scoped to their team and their scopes; see
``principal_team_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import Http404
from guardian.models import GroupObjectPermission, UserObjectPermission

from cockpit.models import ApiKey, Team
from cockpit.roles import TeamPerm

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser = User | AnonymousUser

_CACHE_ATTR = "_cockpit_access"


@dataclass(frozen=True)
class UserAccess:
    """A user's permissions per team, computed once per request (two or three queries)."""

    org_perms: frozenset[str]
    team_perms: dict[int, frozenset[str]] = field(default_factory=dict)
    is_superuser: bool = False

    @property
    def is_org_wide(self) -> bool:
        """Sees every team (superuser, or an organisation-wide role)."""
        return self.is_superuser or TeamPerm.VIEW in self.org_perms

    def holds_anywhere(self, perm: str) -> bool:
        return self.team_ids(perm) != set()

    @property
    def manages_a_team(self) -> bool:
        return self.holds_anywhere(TeamPerm.MANAGE)

    @property
    def audits_a_team(self) -> bool:
        return self.holds_anywhere(TeamPerm.VIEW_AUDIT)

    def can(self, perm: str, team_id: int | None) -> bool:
        if self.is_superuser or perm in self.org_perms:
            return True
        return team_id is not None and perm in self.team_perms.get(team_id, frozenset())

    def team_ids(self, perm: str = TeamPerm.VIEW) -> set[int] | None:
        """Ids of the teams where ``perm`` is held; ``None`` means every team."""
        if self.is_superuser or perm in self.org_perms:
            return None
        return {team_id for team_id, perms in self.team_perms.items() if perm in perms}


NO_ACCESS = UserAccess(org_perms=frozenset())


def for_user(user: AnyUser) -> UserAccess:
    """The user's ``UserAccess``, cached on the user object (so once per request)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return NO_ACCESS
    cached = getattr(user, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    org_perms = frozenset(perm.split(".", 1)[1] for perm in user.get_all_permissions() if perm.startswith("cockpit."))
    team_perms: dict[int, frozenset[str]] = {}
    if not user.is_superuser:
        # guardian's object permissions on teams, held directly or through a group. The content
        # type is matched by name, not by a cached id (ids change when a test flushes them).
        ctype = {"content_type__app_label": "cockpit", "content_type__model": "team"}
        rows = (
            UserObjectPermission.objects.filter(user=user, **ctype)
            .values_list("object_pk", "permission__codename")
            .union(
                GroupObjectPermission.objects.filter(group__user=user, **ctype).values_list(
                    "object_pk", "permission__codename"
                )
            )
        )
        collected: dict[int, set[str]] = {}
        for object_pk, codename in rows:
            collected.setdefault(int(object_pk), set()).add(codename)
        team_perms = {team_id: frozenset(perms) for team_id, perms in collected.items()}
    access = UserAccess(org_perms=org_perms, team_perms=team_perms, is_superuser=user.is_superuser)
    setattr(user, _CACHE_ATTR, access)
    return access


def forget(user: AnyUser) -> None:
    """Drop the cached permissions (after a role change within the same request or test)."""
    for attr in (_CACHE_ATTR, "_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        if hasattr(user, attr):
            delattr(user, attr)


def has_team_perm(user: AnyUser, perm: str, team: Team | int | None) -> bool:
    team_id = team.pk if isinstance(team, Team) else team
    return for_user(user).can(perm, team_id)


def teams_for_user(user: AnyUser, perm: str = TeamPerm.VIEW) -> QuerySet[Team]:
    ids = for_user(user).team_ids(perm)
    return Team.objects.all() if ids is None else Team.objects.filter(pk__in=ids)


def scope_to_user[M: Model](
    queryset: QuerySet[M],
    user: AnyUser,
    perm: str = TeamPerm.VIEW,
    *,
    team_field: str = "team",
) -> QuerySet[M]:
    """Restrict a queryset of team-owned rows to the teams where the user holds ``perm``."""
    ids = for_user(user).team_ids(perm)
    if ids is None:
        return queryset
    return queryset.filter(**{f"{team_field}_id__in": ids})


def get_for_user[M: Model](
    user: AnyUser,
    queryset: QuerySet[M],
    perm: str = TeamPerm.VIEW,
    *,
    team_attr: str = "team_id",
    **lookup: Any,
) -> M:
    """One team-owned object: 404 unless its team is visible, 403 unless ``perm`` is held."""
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404("No such object.")
    team_id = obj.pk if isinstance(obj, Team) else getattr(obj, team_attr)
    access = for_user(user)
    if not access.can(TeamPerm.VIEW, team_id):
        raise Http404("No such object.")
    if perm != TeamPerm.VIEW and not access.can(perm, team_id):
        raise PermissionDenied(f"Your role in this team does not allow this ({perm.replace('_', ' ')}).")
    return obj


def get_team_for_user(user: AnyUser, slug: str, perm: str = TeamPerm.VIEW) -> Team:
    return get_for_user(user, Team.objects.all(), perm, slug=slug)


def get_api_key_for_user(user: AnyUser, pk: int, perm: str = TeamPerm.MANAGE) -> ApiKey:
    return get_for_user(user, ApiKey.objects.select_related("team"), perm, pk=pk)


# --- Machines ---------------------------------------------------------------------------------


def principal_team_ids(principal: Any, perm: str = TeamPerm.VIEW) -> set[int] | None:
    """Team ids a request's principal (an ``ApiKey`` or a user) may use; ``None`` = all.

    An API key acts for exactly its own team; what it may do there is limited by its scopes,
    which the API's auth classes check before the endpoint runs.
    """
    if isinstance(principal, ApiKey):
        return {principal.team_id}
    return for_user(principal).team_ids(perm)


def scope_to_principal[M: Model](
    queryset: QuerySet[M], principal: Any, perm: str = TeamPerm.VIEW, *, team_field: str = "team"
) -> QuerySet[M]:
    ids = principal_team_ids(principal, perm)
    if ids is None:
        return queryset
    return queryset.filter(**{f"{team_field}_id__in": ids})
