"""Reads of platform data that depend on who is asking."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from cockpit import access
from cockpit.models import ApiKey, AuditEvent, Membership, Team
from cockpit.roles import TeamPerm


def visible_teams(principal: Any) -> QuerySet[Team]:
    """Teams an API key or user may see, by name."""
    ids = access.principal_team_ids(principal, TeamPerm.VIEW)
    teams = Team.objects.all() if ids is None else Team.objects.filter(pk__in=ids)
    return teams.order_by("name")


def audit_scope(principal: Any) -> Q:
    """Which audit rows the principal may read: its teams' rows where it holds the audit
    permission; rows of no team only for organisation-wide auditors."""
    if isinstance(principal, ApiKey):
        return Q(team_id=principal.team_id)
    ids = access.for_user(principal).team_ids(TeamPerm.VIEW_AUDIT)
    if ids is None:
        return Q()
    return Q(team_id__in=ids)


def audit_events_for(
    principal: Any,
    *,
    team_slug: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(audit_scope(principal)).select_related("team")
    if team_slug:
        events = events.filter(team__slug=team_slug)
    if action:
        events = events.filter(action=action)
    if object_type:
        events = events.filter(object_type=object_type)
    if object_id:
        events = events.filter(object_id=object_id)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if since:
        events = events.filter(at__gte=since)
    if until:
        events = events.filter(at__lt=until)
    if before_id:
        events = events.filter(pk__lt=before_id)
    return list(events.order_by("-id")[:limit])


def audit_actions(principal: Any) -> list[str]:
    return list(
        AuditEvent.objects.filter(audit_scope(principal))
        .order_by("action")
        .values_list("action", flat=True)
        .distinct()
    )


def platform_counters(user: Any, team: Team | None) -> dict[str, int]:
    """The figures the fleet overview shows before any agent exists."""
    team_ids = access.for_user(user).team_ids(TeamPerm.VIEW)
    teams = Team.objects.all() if team_ids is None else Team.objects.filter(pk__in=team_ids)
    if team is not None:
        teams = teams.filter(pk=team.pk)
    audit_ids = access.for_user(user).team_ids(TeamPerm.VIEW_AUDIT)
    audit = AuditEvent.objects.filter(at__gte=timezone.now() - timedelta(hours=24))
    if audit_ids is not None:
        audit = audit.filter(team_id__in=audit_ids)
    if team is not None:
        audit = audit.filter(team_id=team.pk)
    return {
        "teams": teams.count(),
        "members": Membership.objects.filter(team__in=teams).values("user").distinct().count(),
        "api_keys": ApiKey.objects.active().filter(team__in=teams).count(),
        "audit_24h": audit.count(),
    }


SESSION_TEAM_KEY = "cockpit_team"


def current_team(request: Any) -> Team | None:
    """The team chosen in the team switcher, if the user may still see it; ``None`` = all."""
    if hasattr(request, "_cockpit_team"):
        return request._cockpit_team
    team = None
    slug = request.session.get(SESSION_TEAM_KEY) if hasattr(request, "session") else None
    if slug and request.user.is_authenticated:
        team = visible_teams(request.user).filter(slug=slug).first()
    request._cockpit_team = team
    return team


def api_keys_for() -> QuerySet[ApiKey]:
    return ApiKey.objects.select_related("team", "created_by", "revoked_by").order_by("revoked_at", "-created_at")


def members_by_user(team: Team) -> list[dict[str, Any]]:
    """The team's members, one row per user with their roles (uses prefetched memberships)."""
    rows: dict[int, dict[str, Any]] = {}
    for membership in team.memberships.all():
        row = rows.setdefault(membership.user_id, {"user": membership.user, "memberships": []})
        row["memberships"].append(membership)
    return sorted(rows.values(), key=lambda r: r["user"].get_username())


PROBE_CACHE_KEY = "system:last-probe"
AUDIT_CACHE_KEY = "system:last-audit-verify"


def health_checks() -> dict[str, bool]:
    from django.core.cache import cache
    from django.db import connection

    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = True
    except Exception:
        checks["database"] = False
    try:
        cache.get("healthz")
        checks["redis"] = True
    except Exception:
        checks["redis"] = False
    return checks


def system_status() -> dict[str, Any]:
    import platform
    import time

    import celery
    import django
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection

    started = time.perf_counter()
    checks = health_checks()
    return {
        "checks": checks,
        "check_ms": (time.perf_counter() - started) * 1000,
        "database": connection.vendor,
        "probe": cache.get(PROBE_CACHE_KEY) if checks["redis"] else None,
        "audit": cache.get(AUDIT_CACHE_KEY) if checks["redis"] else None,
        "users": get_user_model().objects.filter(is_active=True).count(),
        "teams": Team.objects.count(),
        "versions": {
            "Python": platform.python_version(),
            "Django": django.get_version(),
            "Celery": celery.__version__,
        },
    }
