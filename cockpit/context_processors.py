from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from cockpit import access, live, selectors

# (label, url name, the url names or namespaces that mark it active)
NAV = [
    (
        "Fleet",
        "fleet-overview",
        {"fleet-overview", "agents", "agent-detail", "agent-status", "agent-version-diff"},
    ),
    ("Runs", "runs", {"runs", "run-detail", "run-cancel"}),
    ("Approvals", "approvals", {"approvals"}),
    ("Traces", "traces", {"traces"}),
    ("FinOps", "finops", {"finops"}),
    ("Audit", "audit", {"audit"}),
]


def cockpit(request: HttpRequest) -> dict[str, Any]:
    if not request.user.is_authenticated:
        return {}
    match = request.resolver_match
    here = {match.url_name, match.namespace} if match else set()
    user_access = access.for_user(request.user)
    teams = list(selectors.visible_teams(request.user))
    team = selectors.current_team(request)
    topics = [live.team_topic(t.pk) for t in ([team] if team else teams)]
    if user_access.is_org_wide and team is None:
        topics.append(live.ORG_TOPIC)
    return {
        "nav": [{"label": label, "url_name": name, "active": bool(here & marks)} for label, name, marks in NAV],
        "switch_teams": teams,
        "current_team": team,
        "live_topics": ",".join(topics),
        "user_access": user_access,
    }
