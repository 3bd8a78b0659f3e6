"""Fleet pages: agents, one agent, version diffs, runs, one run; and the operator's controls.

Every view asks ``fleet.selectors.get_*_for_user`` first (404 for what the user may not see,
403 for what they may not do), then calls one service. Live fragments are re-fetched through
these same views: an htmx request names its target element, and the view renders only that
partial (see ``_render_page``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms import Form
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.audit import Actor
from cockpit.forms import submit
from cockpit.roles import TeamPerm
from fleet import selectors, services
from fleet.forms import (
    AgentSloForm,
    AgentStatusForm,
    AgentTierForm,
    CancelForm,
    ReasonForm,
    RunFilterForm,
    RunOverrideForm,
    VersionDiffForm,
)
from fleet.models import Agent, AgentStatus, Run, RunStatus

if TYPE_CHECKING:
    from cockpit.views import HtmxHttpRequest

Builder = Callable[[], dict[str, Any]]

# --- Helpers ----------------------------------------------------------------------------------


def _render_page(
    request: HtmxHttpRequest,
    template: str,
    context: dict[str, Any],
    fragments: dict[str, tuple[str, Builder]],
) -> HttpResponse:
    """The whole page, or, for a live re-fetch of one fragment (htmx names its element id in
    ``HX-Target``), only that partial, built with only the queries it needs."""
    target = request.htmx.target if request.htmx else None
    if target in fragments:
        partial, build = fragments[target]
        return render(request, f"{template}#{partial}", {**context, **build()})
    page = dict(context)
    for _, build in fragments.values():
        page.update(build())
    return render(request, template, page)


def _error_messages(form: Form) -> list[str]:
    return [str(message) for message in chain.from_iterable(form.errors.values())]


def _done(response: HttpResponse, message: str) -> HttpResponse:
    """Tell the page an action succeeded: static/fleet/js/fleet.js closes the dialog and shows
    ``message``; the live bus refreshes whatever the action changed."""
    return trigger_client_event(response, "fleet:done", {"message": message})


def _safe_next(request: HtmxHttpRequest, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    allowed = url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure())
    return target if allowed else fallback


@dataclass(frozen=True)
class Confirmation:
    """What a confirmation (fleet/confirm.html) asks before an action that needs a reason."""

    title: str
    text: str
    submit: str
    action: str
    back: str
    reason_label: str
    reason_required: bool = True
    danger: bool = True
    hidden: dict[str, str] = field(default_factory=dict)


def _confirm(request: HtmxHttpRequest, confirm: Confirmation, form: Form, *, status: int = 200) -> HttpResponse:
    """A confirmation with a reason: inside the page's dialog for htmx, else a page of its own."""
    context = {"confirm": confirm, "form": form, "in_dialog": bool(request.htmx)}
    template = "fleet/confirm.html#form" if request.htmx else "fleet/confirm.html"
    return render(request, template, context, status=status)


def _refused(request: HtmxHttpRequest) -> int:
    """The status of a re-rendered form: 422 for htmx (fleet.js swaps it in), else 400."""
    return 422 if request.htmx else 400


# --- Agents -----------------------------------------------------------------------------------


@login_required
@require_GET
def agents(request: HtmxHttpRequest) -> HttpResponse:
    team = cockpit_selectors.current_team(request)
    context = {
        "team": team,
        "tiles": selectors.agent_tiles(request.user, team=team),
        "simulated": selectors.simulated_providers(),
    }
    template = "fleet/agents.html#rows" if request.htmx else "fleet/agents.html"
    return render(request, template, context)


@login_required
@require_GET
def agent_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = selectors.get_agent_for_user(request.user, pk)
    user_access = access.for_user(request.user)
    can_manage = user_access.can(TeamPerm.MANAGE, agent.team_id)
    context: dict[str, Any] = {
        "agent": agent,
        "can_operate": user_access.can(TeamPerm.OPERATE, agent.team_id),
        "can_manage": can_manage,
    }
    if can_manage:
        context.update(_settings_forms(agent))
    return _render_page(request, "fleet/agent_detail.html", context, _agent_fragments(request, agent))


def _agent_fragments(request: HtmxHttpRequest, agent: Agent) -> dict[str, tuple[str, Builder]]:
    def summary() -> dict[str, Any]:
        return {
            "tile": selectors.agent_tile(request.user, agent),
            "slo": selectors.agent_slo(agent),
        }

    def config() -> dict[str, Any]:
        return {
            "versions": selectors.agent_versions(agent),
            "tools": selectors.version_tools(agent.current_version),
            "simulated": selectors.simulated_providers(),
        }

    def runs() -> dict[str, Any]:
        return {"runs": selectors.recent_runs(agent)}

    return {
        "agent-summary": ("summary", summary),
        "agent-config": ("config", config),
        "agent-runs": ("runs", runs),
    }


def _settings_forms(agent: Agent) -> dict[str, Any]:
    return {
        "tier_form": AgentTierForm(initial={"tier": agent.tier}),
        "slo_form": AgentSloForm.for_agent(agent),
    }


# What confirming each status change says: (title, explanation, button).
AGENT_STATUS_COPY = {
    AgentStatus.QUARANTINED: (
        "Quarantine {name}?",
        "It takes no new runs, and each of its active runs pauses at its next step. "
        "Operators of those runs see your reason. Reactivate it once it is safe again.",
        "Quarantine agent",
    ),
    AgentStatus.PAUSED: (
        "Pause {name}?",
        "It takes no new runs, and each of its active runs pauses at its next step. "
        "Operators of those runs see your reason.",
        "Pause agent",
    ),
    AgentStatus.ACTIVE: (
        "Reactivate {name}?",
        "It accepts new runs again. Runs paused meanwhile stay paused: resume them one by one from their run pages.",
        "Reactivate agent",
    ),
}


@login_required
@require_http_methods(["GET", "POST"])
def agent_status(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = selectors.get_agent_for_user(request.user, pk, TeamPerm.OPERATE)
    status = request.POST.get("status") if request.method == "POST" else request.GET.get("status")
    if status not in AGENT_STATUS_COPY:
        return HttpResponseBadRequest("Say which status: active, paused or quarantined.")
    next_url = _safe_next(request, reverse("agent-detail", args=[agent.pk]))
    title, text, button = AGENT_STATUS_COPY[AgentStatus(status)]
    stops = status != AgentStatus.ACTIVE
    confirm = Confirmation(
        title=title.format(name=agent.name),
        text=text,
        submit=button,
        action=reverse("agent-status", args=[agent.pk]),
        back=next_url,
        reason_label="Reason (shown to operators)" if stops else "Note (optional)",
        reason_required=stops,
        danger=stops,
        hidden={"status": status, "next": next_url},
    )
    if request.method == "GET":
        return _confirm(request, confirm, AgentStatusForm(initial={"status": status}))
    form = AgentStatusForm(request.POST)
    updated = submit(
        form,
        lambda data: services.agent_set_status(
            actor=Actor.from_request(request),
            agent=agent,
            status=data["status"],
            reason=data["reason"],
        ),
    )
    if updated is None:
        return _confirm(request, confirm, form, status=_refused(request))
    message = f"{updated.name} is {updated.get_status_display().lower()}."
    if request.htmx:
        return _done(HttpResponse(status=204), message)
    messages.success(request, message)
    return redirect(next_url)


def _settings_response(
    request: HtmxHttpRequest,
    agent: Agent,
    updated: Agent | None,
    form_name: str,
    form: Form,
    success: Callable[[Agent], str],
) -> HttpResponse:
    """htmx gets the settings card back (with the errors, if refused); a plain form post is
    redirected to the agent with a message."""
    if request.htmx:
        if updated is None:
            context = {"agent": agent, **_settings_forms(agent), form_name: form}
            return render(request, "fleet/agent_detail.html#settings", context, status=422)
        context = {"agent": updated, **_settings_forms(updated)}
        return _done(render(request, "fleet/agent_detail.html#settings", context), success(updated))
    if updated is None:
        for error in _error_messages(form):
            messages.error(request, error)
    else:
        messages.success(request, success(updated))
    return redirect("agent-detail", agent.pk)


@login_required
@require_POST
def agent_tier(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = selectors.get_agent_for_user(request.user, pk, TeamPerm.MANAGE)
    form = AgentTierForm(request.POST)
    updated = submit(
        form,
        lambda data: services.agent_set_tier(
            actor=Actor.from_request(request), agent=agent, tier=data["tier"], reason=data["reason"]
        ),
    )
    return _settings_response(
        request,
        agent,
        updated,
        "tier_form",
        form,
        lambda done: f"{done.name} is now tier {done.tier} · {done.get_tier_display()}.",
    )


@login_required
@require_POST
def agent_slo(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = selectors.get_agent_for_user(request.user, pk, TeamPerm.MANAGE)
    form = AgentSloForm(request.POST)
    updated = submit(
        form,
        lambda data: services.agent_slo_update(
            actor=Actor.from_request(request),
            agent=agent,
            success_rate=data["success_rate"],
            p95_llm_seconds=data["p95_llm_seconds"],
            p95_tool_seconds=data["p95_tool_seconds"],
            cost_per_success=data["cost_per_success"],
        ),
    )
    return _settings_response(
        request, agent, updated, "slo_form", form, lambda done: f"Objectives of {done.name} saved."
    )


@login_required
@require_GET
def agent_version_diff(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = selectors.get_agent_for_user(request.user, pk)
    form = VersionDiffForm(request.GET, agent=agent)
    diff = None
    if form.is_valid():
        diff = selectors.version_diff(form.cleaned_data["a"], form.cleaned_data["b"])
    context = {
        "agent": agent,
        "form": form,
        "diff": diff,
        "simulated": selectors.simulated_providers(),
    }
    return render(request, "fleet/version_diff.html", context, status=200 if diff else 400)


# --- Runs -------------------------------------------------------------------------------------


@login_required
@require_GET
def runs(request: HtmxHttpRequest) -> HttpResponse:
    data = request.GET.copy()
    team = cockpit_selectors.current_team(request)
    if "team" not in data and team is not None:
        data["team"] = team.slug
    form = RunFilterForm(
        data,
        teams=access.teams_for_user(request.user).order_by("name"),
        agents=selectors.visible_agents(request.user),
    )
    page = selectors.runs_page(request.user, **form.page_filters()) if form.is_valid() else None
    older = None
    if page is not None and page.older is not None:
        query = data.copy()
        query["after"] = page.older.encode()
        older = query.urlencode()
    newest = data.copy()
    newest.pop("after", None)
    context = {
        "form": form,
        "page": page,
        "older": older,
        "newest": newest.urlencode(),
        "first_page": not data.get("after"),
        "filter_team": form.cleaned_data.get("team") if page is not None else None,
    }
    template = "fleet/runs.html#rows" if request.htmx else "fleet/runs.html"
    return render(request, template, context, status=200 if page is not None else 400)


@login_required
@require_GET
def run_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, pk)
    return _render_page(request, "fleet/run_detail.html", {"run": run}, _run_fragments(request, run))


def _run_fragments(request: HtmxHttpRequest, run: Run) -> dict[str, tuple[str, Builder]]:
    def header() -> dict[str, Any]:
        return {
            "waiting_step": selectors.waiting_approval_step(run),
            "simulated": selectors.simulated_providers(),
        }

    def controls() -> dict[str, Any]:
        return _controls_context(request, run)

    def timeline() -> dict[str, Any]:
        return {"timeline": selectors.run_timeline(run)}

    def audit() -> dict[str, Any]:
        return {"audit": selectors.run_audit(request.user, run)}

    return {
        "run-header": ("header", header),
        "run-controls": ("controls", controls),
        "run-timeline": ("timeline", timeline),
        "run-audit": ("audit", audit),
    }


OVERRIDABLE_STATUSES = (RunStatus.PAUSED, RunStatus.WAITING_APPROVAL)


def _controls_context(request: HtmxHttpRequest, run: Run, **forms: Form) -> dict[str, Any]:
    can_operate = access.for_user(request.user).can(TeamPerm.OPERATE, run.team_id)
    context: dict[str, Any] = {
        "run": run,
        "can_operate": can_operate,
        "resume_approves": selectors.resume_approves(),
        **forms,
    }
    if can_operate and run.status in OVERRIDABLE_STATUSES:
        context["override_form"] = forms.get("override_form") or RunOverrideForm()
        providers = selectors.enabled_providers()
        context["providers"] = providers
        context["model_choices"] = selectors.model_choices(run.agent, run.version, providers)
    return context


def _run_control(
    request: HtmxHttpRequest,
    run: Run,
    form_name: str,
    form: Form,
    action: Callable[[dict[str, Any]], Run],
    success: str,
) -> HttpResponse:
    """Call a run control; htmx gets the controls fragment back (with the error, if refused),
    a plain form post is redirected to the run with a message."""
    updated = submit(form, action)
    if request.htmx:
        if updated is None:
            context = _controls_context(request, run, **{form_name: form})
            # Field errors of the override form show next to its fields, when it is shown.
            inline = form_name == "override_form" and "override_form" in context
            context["refused"] = list(form.non_field_errors()) if inline else _error_messages(form)
            return render(request, "fleet/run_detail.html#controls", context, status=422)
        response = render(request, "fleet/run_detail.html#controls", _controls_context(request, updated))
        return _done(response, success)
    if updated is None:
        for error in _error_messages(form):
            messages.error(request, error)
    else:
        messages.success(request, success)
    return redirect("run-detail", run.pk)


@login_required
@require_POST
def run_pause(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, pk, TeamPerm.OPERATE)
    return _run_control(
        request,
        run,
        "pause_form",
        ReasonForm(request.POST),
        lambda data: services.run_pause(actor=Actor.from_request(request), run=run, reason=data["reason"]),
        f"Run #{run.pk}: pause requested.",
    )


@login_required
@require_POST
def run_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, pk, TeamPerm.OPERATE)
    return _run_control(
        request,
        run,
        "resume_form",
        ReasonForm(request.POST),
        lambda data: services.run_resume(actor=Actor.from_request(request), run=run, reason=data["reason"]),
        f"Run #{run.pk} goes on.",
    )


@login_required
@require_POST
def run_override(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, pk, TeamPerm.OPERATE)
    form = RunOverrideForm(request.POST)
    return _run_control(
        request,
        run,
        "override_form",
        form,
        lambda data: services.run_override(
            actor=Actor.from_request(request),
            run=run,
            changes=form.changes(),
            reason=data["reason"],
        ),
        f"Run #{run.pk}: override saved; it applies from the next step.",
    )


@login_required
@require_http_methods(["GET", "POST"])
def run_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    run = selectors.get_run_for_user(request.user, pk, TeamPerm.OPERATE)
    run_url = reverse("run-detail", args=[run.pk])
    confirm = Confirmation(
        title=f"Cancel run #{run.pk} of {run.agent.name}?",
        text="The run stops at its next step. Side effects that have an undo (refunds, ledger "
        "postings) are reversed in reverse order, then the run ends as cancelled. This cannot "
        "be taken back.",
        submit="Cancel run",
        action=reverse("run-cancel", args=[run.pk]),
        back=run_url,
        reason_label="Reason (kept in the run's history and the audit log)",
    )
    if request.method == "GET":
        return _confirm(request, confirm, CancelForm())
    form = CancelForm(request.POST)
    updated = submit(
        form,
        lambda data: services.run_cancel(actor=Actor.from_request(request), run=run, reason=data["reason"]),
    )
    if updated is None:
        return _confirm(request, confirm, form, status=_refused(request))
    message = (
        f"Run #{run.pk} is cancelled."
        if updated.status == RunStatus.CANCELLED
        else f"Run #{run.pk}: cancellation requested; it stops at its next step."
    )
    if request.htmx:
        return _done(HttpResponse(status=204), message)
    messages.success(request, message)
    return redirect(run_url)
