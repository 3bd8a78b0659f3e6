"""Template tags the traces app lends to other pages: the fleet agents page's banner about
agents that send spans but are not in the fleet (``{% discovered_banner %}``)."""

from __future__ import annotations

from typing import Any

from django import template

from cockpit import access
from cockpit import selectors as cockpit_selectors
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
