"""Every write of the platform: teams, roles, API keys, passwords.

Each service is keyword-only, takes the ``actor`` performing it, runs in one transaction, writes
its audit row in that transaction, publishes its live event on commit and returns the object.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from cockpit import access, live
from cockpit.audit import Actor, audit_record, snapshot
from cockpit.models import ApiKey, Membership, Scope, Team
from cockpit.roles import ROLE_PERMISSIONS, Role, perms_for_roles

_KEY_ALPHABET = string.ascii_lowercase + string.digits


# --- Teams ------------------------------------------------------------------------------------


@transaction.atomic
def team_create(*, actor: Actor, slug: str, name: str, description: str = "") -> Team:
    team = Team(slug=slug, name=name, description=description)
    team.full_clean()
    team.save()
    audit_record(actor=actor, action="team.create", obj=team, after=snapshot(team, ["slug", "name"]))
    live.publish({"type": "team.changed", "team": team.pk}, team_id=None)
    return team


# --- Roles ------------------------------------------------------------------------------------


def _sync_team_perms(user: User, team: Team) -> None:
    """Make the user's guardian permissions on ``team`` equal what their roles there grant."""
    roles = set(Membership.objects.filter(user=user, team=team).values_list("role", flat=True))
    wanted = perms_for_roles(roles)
    for perm in frozenset().union(*ROLE_PERMISSIONS.values()):
        if perm in wanted:
            assign_perm(f"cockpit.{perm}", user, team)
        else:
            remove_perm(f"cockpit.{perm}", user, team)
    access.forget(user)


@transaction.atomic
def membership_grant(*, actor: Actor, user: User, team: Team, role: str) -> Membership:
    """Give ``user`` the ``role`` in ``team`` (no-op if already held)."""
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}; choose one of {', '.join(Role.values)}."})
    membership, created = Membership.objects.get_or_create(
        user=user, team=team, role=role, defaults={"granted_by": actor.user_or_none}
    )
    if created:
        _sync_team_perms(user, team)
        audit_record(
            actor=actor,
            action="membership.grant",
            obj=membership,
            team=team,
            after={"user": user.get_username(), "role": role},
        )
        live.publish({"type": "membership.changed", "team": team.pk}, team_id=team.pk)
    return membership


@transaction.atomic
def membership_revoke(*, actor: Actor, membership: Membership, reason: str = "") -> None:
    user, team, role = membership.user, membership.team, membership.role
    audit_record(
        actor=actor,
        action="membership.revoke",
        obj=membership,
        team=team,
        before={"user": user.get_username(), "role": role},
        reason=reason,
    )
    membership.delete()
    _sync_team_perms(user, team)
    live.publish({"type": "membership.changed", "team": team.pk}, team_id=team.pk)


@transaction.atomic
def org_role_grant(*, actor: Actor, user: User, role: str) -> None:
    """Give ``user`` the ``role`` for every team (membership of the role's group)."""
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    group = Group.objects.get(name=role)
    if not user.groups.filter(pk=group.pk).exists():
        user.groups.add(group)
        access.forget(user)
        audit_record(actor=actor, action="org_role.grant", obj=user, after={"role": role})
        live.publish({"type": "membership.changed"}, team_id=None)


# --- Users ------------------------------------------------------------------------------------


@transaction.atomic
def user_create(
    *,
    actor: Actor,
    username: str,
    password: str,
    email: str = "",
    first_name: str = "",
    is_superuser: bool = False,
) -> User:
    user = User(
        username=username,
        email=email,
        first_name=first_name,
        is_superuser=is_superuser,
        is_staff=is_superuser,
    )
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    audit_record(
        actor=actor,
        action="user.create",
        obj=user,
        after={"username": username, "email": email, "superuser": is_superuser},
    )
    return user


@transaction.atomic
def user_password_set(*, actor: Actor, user: User, password: str) -> User:
    user.set_password(password)
    user.save(update_fields=["password"])
    audit_record(actor=actor, action="user.password_change", obj=user)
    return user


@transaction.atomic
def user_login_record(*, actor: Actor, user: User) -> None:
    audit_record(actor=actor, action="user.login", obj=user)


# --- API keys ---------------------------------------------------------------------------------


def _validate_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in Scope.values]
    if unknown:
        raise ValidationError(
            {"scopes": f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(Scope.values)}."}
        )
    if not chosen:
        raise ValidationError({"scopes": "Choose at least one scope."})
    return chosen


@transaction.atomic
def api_key_create(*, actor: Actor, team: Team, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Create a key; returns it with the full secret, which is never stored and shown once."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name (what will use it?)."})
    chosen = _validate_scopes(scopes)
    prefix = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(ApiKey.PREFIX_LEN))
    key = f"ck_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        team=team,
        name=name[:100],
        prefix=prefix,
        secret_hash=ApiKey.hash_secret(key),
        scopes=chosen,
        created_by=actor.user_or_none,
    )
    audit_record(
        actor=actor,
        action="api_key.create",
        obj=api_key,
        after={"name": api_key.name, "prefix": api_key.display_prefix, "scopes": chosen},
    )
    live.publish({"type": "apikey.changed", "id": api_key.pk}, team_id=team.pk)
    return api_key, key


@transaction.atomic
def api_key_revoke(*, actor: Actor, api_key: ApiKey, reason: str = "") -> ApiKey:
    """Revoke a key at once; revoking a revoked key changes nothing."""
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.revoked_at is not None:
        return locked
    before = snapshot(locked, ["revoked_at"])
    locked.revoked_at = timezone.now()
    locked.revoked_by = actor.user_or_none
    locked.save(update_fields=["revoked_at", "revoked_by"])
    audit_record(
        actor=actor,
        action="api_key.revoke",
        obj=locked,
        before=before,
        after=snapshot(locked, ["revoked_at"]),
        reason=reason,
    )
    live.publish({"type": "apikey.changed", "id": locked.pk}, team_id=locked.team_id)
    return locked


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key``, or ``None``. Records the last-used time, at most
    once per ``API_KEY_TOUCH_SECONDS`` (a bookkeeping write, not audited)."""
    if not raw_key.startswith("ck_") or len(raw_key) < 4 + ApiKey.PREFIX_LEN:
        return None
    prefix = raw_key[3 : 3 + ApiKey.PREFIX_LEN]
    api_key = ApiKey.objects.select_related("team", "created_by").filter(prefix=prefix).first()
    if api_key is None or not secrets.compare_digest(api_key.secret_hash, ApiKey.hash_secret(raw_key)):
        return None
    if api_key.revoked_at is not None:
        return api_key  # the caller says "revoked", which is more useful than "invalid"
    now = timezone.now()
    stale = now - timedelta(seconds=settings.COCKPIT["API_KEY_TOUCH_SECONDS"])
    if api_key.last_used_at is None or api_key.last_used_at < stale:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key


@transaction.atomic
def group_members_set(*, actor: Actor, group: Group, users: Iterable[User]) -> Group:
    """Make ``users`` exactly the members of ``group`` (approver groups of escalation levels)."""
    wanted = {u.pk for u in users}
    before = sorted(group.user_set.values_list("username", flat=True))
    group.user_set.set(wanted)
    after = sorted(group.user_set.values_list("username", flat=True))
    if before != after:
        for user in User.objects.filter(pk__in=wanted):
            access.forget(user)
        audit_record(
            actor=actor, action="group.members_set", obj=group, before={"members": before}, after={"members": after}
        )
    return group
