"""Platform pages: the fleet overview, audit log, settings (teams, API keys), account, system."""

from __future__ import annotations

import time
from itertools import chain
from typing import Any

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from cockpit import access, selectors, services
from cockpit.audit import Actor
from cockpit.forms import ApiKeyCreateForm, AuditFilterForm, MembershipGrantForm, RevokeForm
from cockpit.models import Membership
from cockpit.roles import TeamPerm
from fleet import selectors as fleet_selectors


class HtmxHttpRequest(HttpRequest):
    """A request behind ``login_required``, with django-htmx's details."""

    user: User
    htmx: HtmxDetails


# The overview's live fragments, by element id (htmx sends it as HX-Target) → partial.
OVERVIEW_FRAGMENTS = {"fleet-counters": "counters", "fleet-tiles": "tiles"}


@login_required
@require_GET
def fleet_overview(request: HtmxHttpRequest) -> HttpResponse:
    team = selectors.current_team(request)
    fragment = OVERVIEW_FRAGMENTS.get(request.htmx.target or "") if request.htmx else None
    context: dict[str, Any] = {"team": team}
    if fragment in (None, "counters"):
        context["counters"] = selectors.platform_counters(request.user, team)
    if fragment in (None, "tiles"):
        context["tiles"] = fleet_selectors.agent_tiles(request.user, team=team)
    if fragment:
        return render(request, f"cockpit/fleet_overview.html#{fragment}", context)
    return render(request, "cockpit/fleet_overview.html", context)


@login_required
@require_POST
def team_switch(request: HttpRequest) -> HttpResponse:
    slug = request.POST.get("team", "")
    if slug:
        access.get_team_for_user(request.user, slug)  # 404 for a team the user cannot see
        request.session[selectors.SESSION_TEAM_KEY] = slug
    else:
        request.session.pop(selectors.SESSION_TEAM_KEY, None)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = reverse("fleet-overview")
    return redirect(target)


# --- Audit ------------------------------------------------------------------------------------

AUDIT_PAGE = 50


@login_required
@require_GET
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    user_access = access.for_user(request.user)
    if user_access.team_ids(TeamPerm.VIEW_AUDIT) == set():
        raise PermissionDenied("The audit log is open to admins, operators and finance of a team.")
    teams = access.teams_for_user(request.user, TeamPerm.VIEW_AUDIT)
    data = request.GET.copy()
    team = selectors.current_team(request)
    if "team" not in data and team is not None and teams.filter(pk=team.pk).exists():
        data["team"] = team.slug
    form = AuditFilterForm(data, teams=teams, actions=selectors.audit_actions(request.user))
    events: list[Any] = []
    if form.is_valid():
        f = form.cleaned_data
        events = selectors.audit_events_for(
            request.user,
            team_slug=f["team"].slug if f["team"] else None,
            action=f["action"] or None,
            actor=f["actor"] or None,
            since=f["since"],
            until=f["until"],
            before_id=f["before"],
            limit=AUDIT_PAGE,
        )
    older = None
    if len(events) == AUDIT_PAGE:
        query = data.copy()
        query["before"] = events[-1].pk
        older = query.urlencode()
    context = {"form": form, "events": events, "older": older, "first_page": not data.get("before")}
    status = 200 if form.is_valid() else 400
    if request.htmx:
        return render(request, "cockpit/audit.html#rows", context, status=status)
    return render(request, "cockpit/audit.html", context, status=status)


# --- Settings: API keys -----------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    teams = access.teams_for_user(request.user, TeamPerm.MANAGE)
    if not teams.exists():
        raise PermissionDenied("API keys are managed by a team's admins.")
    new_key = None
    if request.method == "POST":
        form = ApiKeyCreateForm(request.POST, teams=teams)
        if form.is_valid():
            api_key, new_key = services.api_key_create(
                actor=Actor.from_request(request),
                team=form.cleaned_data["team"],
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
            )
            form = ApiKeyCreateForm(teams=teams, initial={"team": api_key.team.slug})
        # The secret is shown in this response and never again, so no redirect here.
    else:
        team = selectors.current_team(request)
        form = ApiKeyCreateForm(teams=teams, initial={"team": team.slug if team else None})
    keys = access.scope_to_user(selectors.api_keys_for(), request.user, TeamPerm.MANAGE)
    status = 201 if new_key else (400 if request.method == "POST" else 200)
    return render(
        request,
        "cockpit/api_keys.html",
        {"form": form, "keys": keys, "new_key": new_key},
        status=status,
    )


@login_required
@require_POST
def api_key_revoke(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    api_key = access.get_api_key_for_user(request.user, pk, TeamPerm.MANAGE)
    form = RevokeForm(request.POST)
    form.is_valid()
    api_key = services.api_key_revoke(
        actor=Actor.from_request(request),
        api_key=api_key,
        reason=form.cleaned_data.get("reason", ""),
    )
    if request.htmx:
        return render(request, "cockpit/api_keys.html#key-row", {"key": api_key})
    messages.success(request, f"Revoked {api_key}.")
    return redirect("api-keys")


# --- Settings: teams and roles ----------------------------------------------------------------


@login_required
@require_GET
def teams(request: HttpRequest) -> HttpResponse:
    visible = selectors.visible_teams(request.user).prefetch_related("memberships__user")
    user_access = access.for_user(request.user)
    rows = [
        {
            "team": team,
            "can_manage": user_access.can(TeamPerm.MANAGE, team.pk),
            "members": selectors.members_by_user(team),
        }
        for team in visible
    ]
    return render(request, "cockpit/teams.html", {"rows": rows, "grant_form": MembershipGrantForm()})


@login_required
@require_POST
def membership_grant(request: HttpRequest, slug: str) -> HttpResponse:
    team = access.get_team_for_user(request.user, slug, TeamPerm.MANAGE)
    form = MembershipGrantForm(request.POST)
    if not form.is_valid():
        for message in chain.from_iterable(form.errors.values()):
            messages.error(request, str(message))
        return redirect("teams")
    services.membership_grant(
        actor=Actor.from_request(request),
        user=form.cleaned_data["username"],
        team=team,
        role=form.cleaned_data["role"],
    )
    messages.success(request, f"{form.cleaned_data['username']} is now {form.cleaned_data['role']} of {team}.")
    return redirect("teams")


@login_required
@require_POST
def membership_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    membership = get_object_or_404(Membership.objects.select_related("team", "user"), pk=pk)
    access.get_team_for_user(request.user, membership.team.slug, TeamPerm.MANAGE)
    services.membership_revoke(actor=Actor.from_request(request), membership=membership)
    messages.success(request, f"{membership.user} is no longer {membership.role} of {membership.team}.")
    return redirect("teams")


# --- Account ----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def password_change(request: HtmxHttpRequest) -> HttpResponse:
    form = PasswordChangeForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = services.user_password_set(
            actor=Actor.from_request(request),
            user=request.user,
            password=form.cleaned_data["new_password1"],
        )
        update_session_auth_hash(request, user)
        messages.success(request, "Your password has been changed.")
        return redirect("fleet-overview")
    return render(
        request,
        "registration/password_change_form.html",
        {"form": form},
        status=400 if request.method == "POST" else 200,
    )


# --- System -----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def system(request: HtmxHttpRequest) -> HttpResponse:
    if not access.for_user(request.user).is_org_wide:
        raise PermissionDenied("The system page is for organisation-wide admins.")
    if request.method == "POST":
        from cockpit.tasks import live_probe, maintenance_audit_verify

        if request.POST.get("check") == "worker":
            live_probe.delay_on_commit(probe=request.POST.get("probe", ""), sent_at=time.time())
        elif request.POST.get("check") == "audit":
            maintenance_audit_verify.delay_on_commit(requested_by=request.user.get_username())
        return HttpResponse(status=204) if request.htmx else redirect("system")
    template = "cockpit/system.html#status" if request.htmx else "cockpit/system.html"
    return render(request, template, {"status": selectors.system_status()})


def healthz(request: HttpRequest) -> JsonResponse:
    """For load balancers: 200 when the database and Redis answer, else 503. No details."""
    checks = selectors.health_checks()
    return JsonResponse(
        {"status": "ok" if all(checks.values()) else "unavailable", **checks},
        status=200 if all(checks.values()) else 503,
    )
