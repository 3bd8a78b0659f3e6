"""Template tags the traces app lends to other pages: the fleet agents page's banner about
agents that send spans but are not in the fleet (``{% discovered_banner %}``), and the trace
view's incident and export buttons (``{% trace_incident_actions trace %}``)."""

from __future__ import annotations

from typing import Any

from django import template

from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.roles import TeamPerm
from traces.models import DiscoveredAgent

register = template.Library()


@register.inclusion_tag("traces/discovered.html#banner", takes_context=True)
def discovered_banner(context: Any) -> dict[str, Any]:
    """How many agents of the teams in view send spans without being in the fleet."""
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return {"discovered_count": 0}
    found = access.scope_to_user(DiscoveredAgent.objects.filter(adopted_as__isnull=True), request.user)
    team = cockpit_selectors.current_team(request)
    if team is not None:
        found = found.filter(team=team)
    return {"discovered_count": found.count()}


@register.filter
def micros_seconds(value: int | None) -> float | None:
    """Microseconds (``duration_us``) as seconds, for fleet's ``seconds`` filter."""
    return None if value is None else value / 1_000_000


@register.inclusion_tag("traces/incident_open.html#trace-actions", takes_context=True)
def trace_incident_actions(context: Any, trace: Any) -> dict[str, Any]:
    """The trace view's buttons: mark as incident (or open the incident it is in), and export as
    OTLP JSON. ``{% trace_incident_actions trace %}`` in the page head."""
    from traces.models import Incident, IncidentStatus

    request = context.get("request")
    user = getattr(request, "user", None)
    open_incident = Incident.objects.filter(trace=trace, status=IncidentStatus.OPEN).only("pk", "title").first()
    return {
        "trace": trace,
        "open_incident": open_incident,
        "can_mark": user is not None and access.has_team_perm(user, TeamPerm.OPERATE, trace.team_id),
    }
