from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from cockpit import access, live, selectors

# (label, url name, what marks it active: url names, or prefixes of url names before a "-")
NAV = [
    ("Fleet", "fleet-overview", {"fleet-overview", "agents", "agent", "discovered"}),
    ("Runs", "runs", {"runs", "run"}),
    ("Approvals", "approvals", {"approvals", "approval"}),
    ("Traces", "traces", {"traces", "trace"}),
    ("Incidents", "incidents", {"incidents", "incident"}),
    ("FinOps", "finops", {"finops"}),
    ("Audit", "audit", {"audit"}),
]


def _active(url_name: str | None, marks: set[str]) -> bool:
    return url_name is not None and any(url_name == m or url_name.startswith(f"{m}-") for m in marks)


def cockpit(request: HttpRequest) -> dict[str, Any]:
    if not request.user.is_authenticated:
        return {}
    match = request.resolver_match
    here = match.url_name if match else None
    user_access = access.for_user(request.user)
    teams = list(selectors.visible_teams(request.user))
    team = selectors.current_team(request)
    topics = [live.team_topic(t.pk) for t in ([team] if team else teams)]
    if user_access.is_org_wide and team is None:
        topics.append(live.ORG_TOPIC)
    return {
        "nav": [{"label": label, "url_name": name, "active": _active(here, marks)} for label, name, marks in NAV],
        "switch_teams": teams,
        "current_team": team,
        "live_topics": ",".join(topics),
        "user_access": user_access,
    }
