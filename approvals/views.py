"""Approvals pages: the queue and one request's pane with its decisions; the policies (versions,
rollback, editor, "test a decision"); the escalation policies; an agent's calibration (figures,
reliability plot, promotion, JSONL export).

Every view asks an access helper first (404 for what the user may not see, 403 for what they may
not do), then calls one service. Decisions are checked once more by the service itself
(``approvals.services.check_decider``), under the row lock. Live fragments are re-fetched
through these same views: htmx names the element in ``HX-Target`` and gets only its partial.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms import Form
from django.http import Http404, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from approvals import selectors, services
from approvals.forms import (
    ALL,
    MINE,
    ApproveForm,
    CalibrationWindowForm,
    EditForm,
    EscalationPolicyForm,
    ExecuteForm,
    PolicyForm,
    PolicyTestForm,
    PromoteForm,
    PromotionRuleForm,
    QueueFilterForm,
    RejectForm,
)
from approvals.models import GLOBAL_SCOPE, ApprovalRequest, EscalationPolicy, Policy
from approvals.plots import reliability_figure
from approvals.services import AlreadyDecided
from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.audit import Actor
from cockpit.forms import add_service_error, submit
from cockpit.models import Team
from cockpit.plotting import plotly_style_guards
from cockpit.roles import TeamPerm
from fleet import selectors as fleet_selectors
from fleet import services as fleet_services
from fleet.models import Agent

if TYPE_CHECKING:
    from cockpit.views import HtmxHttpRequest

EXPORT_CHUNK = 500


def _refused(request: HtmxHttpRequest) -> int:
    """The status of a re-rendered form: 422 for htmx (approvals.js swaps it in), else 400."""
    return 422 if request.htmx else 400


# --- The queue --------------------------------------------------------------------------------


@login_required
@require_GET
def queue(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    data = request.GET.copy()
    current = cockpit_selectors.current_team(request)
    if "team" not in data and current is not None:
        data["team"] = current.slug
    decider = selectors.decider_for(user)
    form = QueueFilterForm(
        data,
        teams=access.teams_for_user(user).order_by("name"),
        agents=fleet_selectors.visible_agents(user).order_by("name"),
        default_view=MINE if decider.approves_anywhere else ALL,
    )
    context: dict[str, Any] = {"form": form, "decider": decider, "queue": None, "now": timezone.now()}
    if not form.is_valid():
        return render(request, "approvals/queue.html", context, status=400)
    filters = form.queue_filters()
    context.update(
        queue=selectors.queue(user, decider, **filters),
        mine=filters["mine"],
        limit=filters["limit"],
        more=min(filters["limit"] + selectors.PAGE_SIZE, selectors.MAX_SHOWN),
        filter_team=form.cleaned_data["team"],
        level=filters["level"],
        selected=form.cleaned_data["selected"],
    )
    if request.htmx and request.htmx.target == "approval-queue":
        return render(request, "approvals/queue.html#queue", context)
    if context["selected"]:
        try:
            approval = selectors.get_request_for_user(user, context["selected"])
        except Http404:
            context["missing"] = True
        else:
            context.update(_pane_context(request, approval))
    return render(request, "approvals/queue.html", context)


# --- One request ------------------------------------------------------------------------------


def _pane_context(request: HtmxHttpRequest, approval: ApprovalRequest, **extra: Any) -> dict[str, Any]:
    """Everything the pane shows about one request: eight queries at most."""
    refusal = selectors.decision_refusal(request.user, approval) if approval.is_pending else None
    level = services.level_of(approval)
    context: dict[str, Any] = {
        "approval": approval,
        "level": level,
        "level_sla": selectors.duration_text(level.sla_seconds if level else services.DEFAULT_SLA_SECONDS),
        "arguments": selectors.argument_rows(approval.arguments),
        "changes": (
            selectors.argument_diff(approval.arguments, approval.edited_arguments)
            if approval.edited_arguments is not None
            else None
        ),
        "explain": selectors.policy_explain(approval),
        "rules": selectors.policy_rules(approval),
        "record": selectors.decision_record(approval),
        "path": selectors.escalation_path(approval),
        "history": selectors.request_history(approval),
        "now": timezone.now(),
        "can_decide": approval.is_pending and refusal is None,
        "refusal": refusal,
        "approve_form": ApproveForm(),
        "edit_form": EditForm.for_arguments(approval.arguments),
        "execute_form": ExecuteForm(),
        "executable": approval.manual and selectors.tool_is_callable(approval.action),
        "reject_form": RejectForm(),
    }
    context.update(extra)
    return context


@login_required
@require_GET
def detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    approval = selectors.get_request_for_user(request.user, pk)
    template = "approvals/detail.html#pane" if request.htmx else "approvals/detail.html"
    return render(request, template, _pane_context(request, approval))


def _decide(
    request: HtmxHttpRequest,
    pk: int,
    form: Form,
    form_name: str,
    decide: Callable[[ApprovalRequest, dict[str, Any]], ApprovalRequest],
) -> HttpResponse:
    """Call ``approval_decide`` through ``decide``. htmx gets the pane back: decided (200),
    already decided by someone else (409), not theirs to decide (403, with the reason), or the
    form with its errors (422). A plain form post is redirected to the queue with a message, or
    gets the request's page with the errors (400); a refusal is the 403 page with the reason."""
    approval = selectors.get_request_for_user(request.user, pk)
    extra: dict[str, Any] = {}
    status = 200
    if not form.is_valid():
        status = _refused(request)
    else:
        try:
            decided = decide(approval, form.cleaned_data)
        except AlreadyDecided as exc:
            if not request.htmx:
                messages.warning(request, " ".join(exc.messages))
                return redirect("approvals")
            extra["conflict"], status = " ".join(exc.messages), 409
        except PermissionDenied as exc:
            if not request.htmx:
                raise
            extra["refused"], status = str(exc), 403
        except ValidationError as exc:
            add_service_error(form, exc, {"edited_arguments": "arguments", "result": "result"})
            status = _refused(request)
        else:
            message = _decided_message(decided)
            if not request.htmx:
                messages.success(request, message)
                return redirect("approvals")
            fresh = selectors.get_request_for_user(request.user, pk)
            response = render(request, "approvals/detail.html#pane", _pane_context(request, fresh, decided_now=True))
            return trigger_client_event(response, "approvals:decided", {"message": message, "approval": pk})
    if status in (403, 409):
        approval = selectors.get_request_for_user(request.user, pk)  # as it is now
    else:
        extra[form_name] = form
    context = _pane_context(request, approval, **extra)
    template = "approvals/detail.html#pane" if request.htmx else "approvals/detail.html"
    return render(request, template, context, status=status)


def _decided_message(approval: ApprovalRequest) -> str:
    what = f"#{approval.pk} {approval.action} of {approval.agent.name}"
    if approval.kind == "review":
        verdict = "marked as right" if approval.status == "approved" else "flagged as a problem"
        return f"Review {what}: {verdict}."
    return f"{approval.get_status_display()}: {what}."


@login_required
@require_POST
def approve(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _decide(
        request,
        pk,
        ApproveForm(request.POST),
        "approve_form",
        lambda approval, data: services.approval_decide(
            actor=Actor.from_request(request),
            request=approval,
            approve=True,
            reason=data["note"],
            result=data["result"],
        ),
    )


@login_required
@require_POST
def approve_with_edits(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _decide(
        request,
        pk,
        EditForm(request.POST),
        "edit_form",
        lambda approval, data: services.approval_decide(
            actor=Actor.from_request(request),
            request=approval,
            approve=True,
            reason=data["note"],
            edited_arguments=data["arguments"],
            result=data["result"],
        ),
    )


@login_required
@require_POST
def execute(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """A manual (tier 4) request: the approver carries it out through Cockpit's tool."""
    return _decide(
        request,
        pk,
        ExecuteForm(request.POST),
        "execute_form",
        lambda approval, data: services.approval_execute(
            actor=Actor.from_request(request),
            request=approval,
            reason=data["note"],
            edited_arguments=data["arguments"],
        ),
    )


@login_required
@require_POST
def reject(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _decide(
        request,
        pk,
        RejectForm(request.POST),
        "reject_form",
        lambda approval, data: services.approval_decide(
            actor=Actor.from_request(request), request=approval, approve=False, reason=data["reason"]
        ),
    )


# --- Policies ---------------------------------------------------------------------------------


def _policy_cards(
    scopes: list[selectors.PolicyScope], bound: tuple[str, PolicyForm] | None = None
) -> list[tuple[selectors.PolicyScope, PolicyForm | None]]:
    """Each scope with its editor (for its admins): a fresh one holding the source in force, or
    the refused one with what was typed."""
    cards: list[tuple[selectors.PolicyScope, PolicyForm | None]] = []
    for scope in scopes:
        form = None
        if scope.can_manage:
            form = bound[1] if bound and bound[0] == scope.key else PolicyForm(initial={"source": scope.source})
        cards.append((scope, form))
    return cards


def _policy_test_context(request: HtmxHttpRequest) -> dict[str, Any]:
    form = PolicyTestForm(
        request.GET if "agent" in request.GET else None,
        agents=fleet_selectors.visible_agents(request.user).order_by("team__name", "name"),
    )
    verdict = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        verdict = selectors.policy_verdict(
            agent=data["agent"],
            action=data["action"],
            risk=data["risk"],
            side_effect=data["side_effect"],
            **form.subject(),
        )
    return {"test_form": form, "verdict": verdict}


@login_required
@require_GET
def policies(request: HtmxHttpRequest) -> HttpResponse:
    target = request.htmx.target if request.htmx else None
    if target == "policy-test":
        context = _policy_test_context(request)
        status = _refused(request) if context["test_form"].is_bound and context["verdict"] is None else 200
        return render(request, "approvals/policies.html#test", context, status=status)
    scopes = selectors.policy_scopes(request.user)
    if target:
        scope = next((s for s in scopes if f"{s.dom_id}-versions" == target), None)
        if scope is not None:
            return render(request, "approvals/policies.html#versions", {"scope": scope})
    context = {"cards": _policy_cards(scopes), **_policy_test_context(request)}
    status = 400 if context["test_form"].is_bound and context["verdict"] is None else 200
    return render(request, "approvals/policies.html", context, status=status)


def _scope_team(request: HtmxHttpRequest, key: str) -> Team | None:
    """The policy set an editor posts to: ``None`` for the global one (superusers and
    organisation-wide admins only), else a team the user administers."""
    if key == GLOBAL_SCOPE:
        if not selectors.can_manage_scope(request.user, None):
            raise PermissionDenied(selectors.manage_refusal(None))
        return None
    return access.get_team_for_user(request.user, key, TeamPerm.MANAGE)


def _policy_card_response(
    request: HtmxHttpRequest, key: str, form: PolicyForm | None = None, *, status: int = 200
) -> HttpResponse:
    scopes = selectors.policy_scopes(request.user)
    bound = (key, form) if form is not None else None
    cards = _policy_cards(scopes, bound)
    if request.htmx:
        card = next(c for c in cards if c[0].key == key)
        return render(request, "approvals/policies.html#card", {"card": card}, status=status)
    context = {"cards": cards, **_policy_test_context(request)}
    return render(request, "approvals/policies.html", context, status=status)


@login_required
@require_POST
def policy_save(request: HtmxHttpRequest) -> HttpResponse:
    key = request.POST.get("scope", "")
    team = _scope_team(request, key)
    form = PolicyForm(request.POST)
    saved = submit(
        form,
        lambda data: services.policy_save(
            actor=Actor.from_request(request), team=team, source=data["source"], comment=data["comment"]
        ),
    )
    if saved is None:
        return _policy_card_response(request, key, form, status=_refused(request))
    message = f"{saved.scope_label} policy v{saved.version} is in force."
    if not request.htmx:
        messages.success(request, message)
        return redirect(
            f"{reverse('approval-policies')}#{'policy-global' if team is None else f'policy-team-{team.pk}'}"
        )
    return trigger_client_event(_policy_card_response(request, key), "approvals:done", {"message": message})


@login_required
@require_POST
def policy_activate(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    policy: Policy = selectors.get_policy_for_user(request.user, pk)
    services.policy_activate(actor=Actor.from_request(request), policy=policy)
    message = f"{policy.scope_label} policy v{policy.version} is in force again."
    key = GLOBAL_SCOPE if policy.team is None else policy.team.slug
    if not request.htmx:
        messages.success(request, message)
        return redirect(reverse("approval-policies"))
    return trigger_client_event(_policy_card_response(request, key), "approvals:done", {"message": message})


# --- Escalation -------------------------------------------------------------------------------


@login_required
@require_GET
def escalation(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "approvals/escalation.html", {"teams": selectors.escalation_overview(request.user)})


def _escalation_form(
    request: HtmxHttpRequest, team: Team, policy: EscalationPolicy | None, form: EscalationPolicyForm
) -> HttpResponse:
    if request.method == "POST":
        saved = submit(
            form,
            lambda data: services.escalation_policy_save(
                actor=Actor.from_request(request),
                team=team,
                name=data["name"],
                levels=form.level_specs(),
                agent=data["agent"],
                risk=data["risk"],
                on_expiry=data["on_expiry"],
                separation_of_duties=data["separation_of_duties"],
            ),
        )
        if saved is not None:
            messages.success(request, f"{saved.name}: saved, with {saved.levels.count()} level(s).")
            return redirect(f"{reverse('approval-escalation')}#escalation-{saved.pk}")
    context = {"team": team, "policy": policy, "form": form}
    status = 400 if form.is_bound else 200
    return render(request, "approvals/escalation_form.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def escalation_new(request: HtmxHttpRequest) -> HttpResponse:
    slug = request.POST.get("team") or request.GET.get("team")
    if not slug:
        return HttpResponseBadRequest("Say which team the policy is for (?team=<slug>).")
    team = access.get_team_for_user(request.user, slug, TeamPerm.MANAGE)
    form = (
        EscalationPolicyForm(request.POST, team=team) if request.method == "POST" else EscalationPolicyForm.blank(team)
    )
    return _escalation_form(request, team, None, form)


@login_required
@require_http_methods(["GET", "POST"])
def escalation_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    policy = selectors.get_escalation_policy_for_user(request.user, pk)
    form = (
        EscalationPolicyForm(request.POST, team=policy.team, policy=policy)
        if request.method == "POST"
        else EscalationPolicyForm.for_policy(policy)
    )
    return _escalation_form(request, policy.team, policy, form)


# --- Calibration ------------------------------------------------------------------------------


def _calibration_context(request: HtmxHttpRequest, agent: Agent, **forms: Form) -> dict[str, Any]:
    window = CalibrationWindowForm(request.GET)
    days = window.days() if window.is_valid() else 90
    since = timezone.now() - timedelta(days=days) if days else None
    bins = selectors.reliability(agent, since=since)
    promotion = selectors.promotion(agent)
    can_manage = access.for_user(request.user).can(TeamPerm.MANAGE, agent.team_id)
    context: dict[str, Any] = {
        "agent": agent,
        "window_form": window,
        "days": days,
        "figures": selectors.calibration(agent, since=since, sla_seconds=selectors.l1_sla_seconds(agent)),
        "bins": bins,
        "figure": reliability_figure(bins) if any(b.count for b in bins) else None,
        "plotly_style_guards": plotly_style_guards(),
        "promotion": promotion,
        "can_manage": can_manage,
    }
    if can_manage:
        context["rule_form"] = forms.get("rule_form") or PromotionRuleForm.for_rule(promotion.rule)
        promote_form = forms.get("promote_form")
        if promote_form is None and promotion.meets:
            promote_form = PromoteForm(initial={"tier": promotion.target_tier, "reason": _promotion_reason(promotion)})
        context["promote_form"] = promote_form
    return context


def _promotion_reason(promotion: selectors.Promotion) -> str:
    rate = promotion.unchanged_rate or 0
    return (
        f"Calibration: {promotion.decisions:,} decisions at tier {promotion.agent.tier}, "
        f"{rate:.1f} % approved unchanged, {promotion.violations} rejection(s)."
    )


@login_required
@require_GET
def calibration(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = fleet_selectors.get_agent_for_user(request.user, pk)
    return render(request, "approvals/calibration.html", _calibration_context(request, agent))


@login_required
@require_POST
def promotion_rule_save(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = fleet_selectors.get_agent_for_user(request.user, pk, TeamPerm.MANAGE)
    form = PromotionRuleForm(request.POST)
    saved = submit(
        form,
        lambda data: services.promotion_rule_save(actor=Actor.from_request(request), team=agent.team, **data),
    )
    if saved is None:
        context = _calibration_context(request, agent, rule_form=form)
        return render(request, "approvals/calibration.html", context, status=400)
    messages.success(request, f"Promotion rule of {agent.team.name} saved.")
    return redirect("approval-calibration", agent.pk)


@login_required
@require_POST
def promote(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    agent = fleet_selectors.get_agent_for_user(request.user, pk, TeamPerm.MANAGE)
    form = PromoteForm(request.POST)
    if form.is_valid():
        promotion = selectors.promotion(agent)
        if not promotion.meets or form.cleaned_data["tier"] != promotion.target_tier:
            form.add_error(None, f"{agent.name} does not meet the promotion rule to tier {form.cleaned_data['tier']}.")
    updated = submit(
        form,
        lambda data: fleet_services.agent_set_tier(
            actor=Actor.from_request(request), agent=agent, tier=data["tier"], reason=data["reason"]
        ),
    )
    if updated is None:
        context = _calibration_context(request, agent, promote_form=form)
        return render(request, "approvals/calibration.html", context, status=400)
    messages.success(request, f"{updated.name} is now tier {updated.tier} · {updated.get_tier_display()}.")
    return redirect("approval-calibration", agent.pk)


async def _stream(lines: Iterator[str]) -> AsyncIterator[str]:
    """Hand the lines to the ASGI server chunk by chunk (a synchronous iterator would be read to
    the end first); the database is read in the request's thread."""
    take = sync_to_async(lambda: "".join(islice(lines, EXPORT_CHUNK)), thread_sensitive=True)
    while chunk := await take():
        yield chunk


@login_required
@require_GET
def decisions_export(request: HtmxHttpRequest, pk: int) -> StreamingHttpResponse:
    agent = fleet_selectors.get_agent_for_user(request.user, pk)
    response = StreamingHttpResponse(
        _stream(selectors.decisions_export(agent)), content_type="application/jsonl; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{agent.team.slug}-{agent.slug}-decisions.jsonl"'
    return response
