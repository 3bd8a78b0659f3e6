"""Every write of approvals: policies, escalation policies, requests, decisions, escalation and
expiry, notifications. Decisions and policy changes are audited; every change to a request
writes an ``ApprovalEvent`` and publishes ``approval.changed`` on commit."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import jsonschema
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from approvals import cedar
from approvals.models import (
    GLOBAL_SCOPE,
    ActivePolicy,
    ApprovalEvent,
    ApprovalKind,
    ApprovalRequest,
    ApprovalStatus,
    Channel,
    EscalationLevel,
    EscalationPolicy,
    Notification,
    NotificationStatus,
    OnExpiry,
    Policy,
    PromotionRule,
    team_scope,
)
from cockpit import live
from cockpit.audit import Actor, audit_record
from cockpit.lib.validation import IdempotencyConflict
from cockpit.models import ActorType, Team
from fleet.models import Agent, Run, Tool

DEFAULT_SLA_SECONDS = 15 * 60
SYSTEM = Actor.system("approvals")
ESCALATOR = Actor.system("escalation sweeper")


class AlreadyDecided(ValidationError):
    """Someone else decided first (or the request escalated away, expired, was withdrawn)."""


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def publish(request: ApprovalRequest, kind: str = "approval.changed", **extra: Any) -> None:
    live.publish(
        {
            "type": kind,
            "approval": request.pk,
            "status": request.status,
            "level": request.level,
            "agent": request.agent_id,
            **extra,
        },
        team_id=request.team_id,
        topics=[f"approval.{request.pk}"],
    )


def _toast(request: ApprovalRequest, level: EscalationLevel | None, text: str) -> None:
    """The in-app toast for the approvers of the request's level (their browsers pick it out)."""
    live.publish(
        {
            "type": "approval.toast",
            "approval": request.pk,
            "level_id": level.pk if level else None,
            "team": request.team_id,
            "text": text,
        },
        team_id=request.team_id,
    )


# --- Policies ---------------------------------------------------------------------------------


def _scope(team: Team | None) -> str:
    return GLOBAL_SCOPE if team is None else team_scope(team)


@transaction.atomic
def policy_save(*, actor: Actor, team: Team | None, source: str, comment: str = "") -> Policy:
    """Save a new version of the global policy set (``team=None``) or of a team's, and make it
    the active one. A source that does not parse, or does not fit the schema, is refused with
    every problem listed (and nothing is saved)."""
    source = source.strip() + "\n"
    problems = cedar.validate(source)
    if problems:
        raise ValidationError({"source": problems})
    if team is None and not source.strip("\n").strip():
        raise ValidationError({"source": ["The global policy cannot be empty: nothing would be allowed."]})
    scope = _scope(team)
    last = Policy.objects.select_for_update().filter(scope=scope).order_by("-version").first()
    policy = Policy.objects.create(
        scope=scope,
        team=team,
        version=(last.version + 1) if last else 1,
        source=source,
        comment=comment.strip(),
        author=actor.user_or_none,
        author_label=actor.label,
    )
    _activate(policy, actor)
    audit_record(
        actor=actor,
        action="policy.save",
        obj=policy,
        team=team,
        after={"scope": scope, "version": policy.version, "comment": policy.comment},
        reason=comment,
    )
    live.publish({"type": "policy.changed", "scope": scope}, team_id=team.pk if team else None)
    return policy


def _activate(policy: Policy, actor: Actor) -> None:
    ActivePolicy.objects.update_or_create(
        scope=policy.scope,
        defaults={"policy": policy, "activated_at": timezone.now(), "activated_by_label": actor.label},
    )


@transaction.atomic
def policy_activate(*, actor: Actor, policy: Policy) -> Policy:
    """Put an earlier version back in force (a rollback)."""
    current = ActivePolicy.objects.select_for_update().filter(scope=policy.scope).first()
    if current and current.policy_id == policy.pk:
        return policy
    _activate(policy, actor)
    audit_record(
        actor=actor,
        action="policy.activate",
        obj=policy,
        team=policy.team,
        before={"version": current.policy.version if current else None},
        after={"version": policy.version},
    )
    live.publish({"type": "policy.changed", "scope": policy.scope}, team_id=policy.team_id)
    return policy


def active_policies(team: Team | int) -> list[Policy]:
    """The versions in force for a team: the global set, then the team's own (if any)."""
    scopes = [GLOBAL_SCOPE, team_scope(team)]
    rows = ActivePolicy.objects.filter(scope__in=scopes).select_related("policy", "policy__team")
    by_scope = {row.scope: row.policy for row in rows}
    return [by_scope[s] for s in scopes if s in by_scope]


def judge(
    *, team: Team, agent: Agent, tool: str, risk: str, side_effect: bool, context: dict[str, Any]
) -> tuple[cedar.Verdict, list[Policy]]:
    policies = active_policies(team)
    if not policies:
        verdict = cedar.Verdict(False, False, ["no policy in force"], [], [], ["no active policy"])
        return verdict, []
    subject = cedar.Subject(
        team=team.slug,
        agent=agent.slug,
        agent_kind=agent.kind,
        tier=agent.tier,
        threshold=agent.confidence_threshold,
        tool=tool,
        risk=risk,
        side_effect=side_effect,
        context=context,
    )
    return cedar.evaluate(cedar.policy_set([(p.pk, p.source) for p in policies]), subject), policies


def sample_number(*parts: object) -> int:
    """0–99, the same for the same action: which actions a sampling rule picks is reproducible."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) % 100


# --- Escalation policies ----------------------------------------------------------------------


@transaction.atomic
def escalation_policy_save(
    *,
    actor: Actor,
    team: Team,
    name: str,
    levels: Sequence[dict[str, Any]],
    agent: Agent | None = None,
    risk: str = "",
    on_expiry: str = OnExpiry.REJECT,
    separation_of_duties: bool = True,
) -> EscalationPolicy:
    """Create or replace the escalation policy of (team, agent, risk). ``levels`` are dicts with
    ``group`` (a ``Group`` or ``None`` for any approver of the team), ``sla_seconds``,
    ``channels``, ``webhook_url``, ``webhook_secret``, in order L1, L2, …"""
    if not 1 <= len(levels) <= 4:
        raise ValidationError({"levels": "A policy has one to four levels."})
    if agent is not None and agent.team_id != team.pk:
        raise ValidationError({"agent": "The agent belongs to another team."})
    for number, spec in enumerate(levels, start=1):
        if int(spec.get("sla_seconds", 0)) < 1:
            raise ValidationError({"levels": f"L{number}: the SLA must be at least one second."})
        unknown = set(spec.get("channels", [])) - {Channel.EMAIL, Channel.WEBHOOK}
        if unknown:
            raise ValidationError({"levels": f"L{number}: unknown channel(s) {', '.join(sorted(unknown))}."})
        if Channel.WEBHOOK in spec.get("channels", []) and not spec.get("webhook_url"):
            raise ValidationError({"levels": f"L{number}: the webhook channel needs a URL."})
    policy, created = EscalationPolicy.objects.update_or_create(
        team=team,
        agent=agent,
        risk=risk,
        defaults={"name": name, "on_expiry": on_expiry, "separation_of_duties": separation_of_duties},
    )
    before = _levels_snapshot(policy) if not created else None
    for old in policy.levels.all():
        if old.group_id:
            remove_perm("approvals.decide_at_level", old.group, old)
    policy.levels.all().delete()
    for number, spec in enumerate(levels, start=1):
        level = EscalationLevel.objects.create(
            policy=policy,
            level=number,
            group=spec.get("group"),
            sla_seconds=int(spec["sla_seconds"]),
            channels=list(spec.get("channels", [])),
            webhook_url=spec.get("webhook_url", ""),
            webhook_secret=spec.get("webhook_secret", ""),
        )
        if level.group_id:
            assign_perm("approvals.decide_at_level", level.group, level)
    audit_record(
        actor=actor,
        action="escalation_policy.save",
        obj=policy,
        team=team,
        before=before,
        after=_levels_snapshot(policy),
    )
    return policy


def _levels_snapshot(policy: EscalationPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "on_expiry": policy.on_expiry,
        "separation_of_duties": policy.separation_of_duties,
        "levels": [
            {
                "level": lv.level,
                "group": lv.group.name if lv.group else None,
                "sla_seconds": lv.sla_seconds,
                "channels": lv.channels,
            }
            for lv in policy.levels.select_related("group")
        ],
    }


def escalation_policy_for(team: Team | int, agent: Agent | int | None, risk: str) -> EscalationPolicy | None:
    """The most specific policy: agent and risk, agent, risk, then the team's default."""
    team_id = team.pk if isinstance(team, Team) else team
    agent_id = agent.pk if isinstance(agent, Agent) else agent
    candidates = [
        p
        for p in EscalationPolicy.objects.filter(team_id=team_id)
        if (p.agent_id in (None, agent_id)) and (p.risk in ("", risk))
    ]
    return max(candidates, key=lambda p: p.specificity, default=None)


@transaction.atomic
def promotion_rule_save(
    *, actor: Actor, team: Team, min_decisions: int, min_unchanged_rate: Any, max_violations: int
) -> PromotionRule:
    rule, _ = PromotionRule.objects.get_or_create(team=team)
    before = {
        "min_decisions": rule.min_decisions,
        "min_unchanged_rate": str(rule.min_unchanged_rate),
        "max_violations": rule.max_violations,
    }
    rule.min_decisions, rule.min_unchanged_rate, rule.max_violations = (
        min_decisions,
        min_unchanged_rate,
        max_violations,
    )
    rule.full_clean()
    rule.save()
    audit_record(
        actor=actor,
        action="promotion_rule.save",
        obj=rule,
        team=team,
        before=before,
        after={
            "min_decisions": min_decisions,
            "min_unchanged_rate": str(min_unchanged_rate),
            "max_violations": max_violations,
        },
    )
    return rule


# --- Requests ---------------------------------------------------------------------------------


def _levels(policy: EscalationPolicy | None) -> list[EscalationLevel]:
    return list(policy.levels.select_related("group")) if policy else []


def level_of(request: ApprovalRequest) -> EscalationLevel | None:
    policy = request.escalation_policy
    if policy is None:
        return None
    return next((lv for lv in policy.levels.all() if lv.level == request.level), None)


@transaction.atomic
def approval_request_create(
    *,
    actor: Actor,
    agent: Agent,
    action: str,
    arguments: dict[str, Any],
    reasoning: str = "",
    confidence: float | None = None,
    risk: str = "medium",
    policy_decision: dict[str, Any] | None = None,
    policy: Policy | None = None,
    run: Run | None = None,
    step_seq: int | None = None,
    reasoning_step: int | None = None,
    external_ref: str = "",
    idempotency_key: str = "",
    callback_url: str = "",
    kind: str = ApprovalKind.APPROVAL,
    status: str = ApprovalStatus.PENDING,
    decided_by_label: str = "",
    notify: bool = True,
) -> tuple[ApprovalRequest, bool]:
    """Ask the right humans about an action (or record that policy decided it at once, with
    ``status``). Returns ``(request, created)``: an idempotency key seen before returns the
    request created the first time (``IdempotencyConflict`` if it came with another request),
    concurrent duplicates included."""
    team = agent.team
    idempotency_key = idempotency_key[:200]
    asked = {
        "agent_id": agent.pk,
        "run_id": run.pk if run else None,
        "kind": kind,
        "action": action[:160],
        "arguments": json_safe(arguments),
        "reasoning": reasoning[:8000],
        "confidence": confidence,
        "risk": risk,
        "external_ref": external_ref[:200],
        "callback_url": callback_url,
        "context": json_safe((policy_decision or {}).get("context")),
    }
    if idempotency_key:
        existing = ApprovalRequest.objects.filter(team=team, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed_request(existing, asked), False
    if confidence is not None and not 0 <= confidence <= 1:
        raise ValidationError({"confidence": "Confidence is between 0 and 1."})
    if not isinstance(arguments, dict):
        raise ValidationError({"arguments": "The arguments are a JSON object."})
    escalation = escalation_policy_for(team, agent, risk)
    levels = _levels(escalation)
    first = levels[0] if levels else None
    now = timezone.now()
    try:
        with transaction.atomic():  # a concurrent duplicate fails here, not the whole request
            request = ApprovalRequest.objects.create(
                kind=kind,
                team=team,
                agent=agent,
                run=run,
                step_seq=step_seq,
                external_ref=external_ref[:200],
                action=action[:160],
                arguments=json_safe(arguments),
                reasoning=reasoning[:8000],
                reasoning_step=reasoning_step,
                confidence=confidence,
                risk=risk,
                policy=policy,
                policy_decision=json_safe(policy_decision or {}),
                status=status,
                escalation_policy=escalation,
                level=1,
                deadline=now + timedelta(seconds=first.sla_seconds if first else DEFAULT_SLA_SECONDS),
                requested_by_label=actor.label,
                run_started_by=run.created_by if run else None,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                decided_by_label=decided_by_label,
                decided_at=now if status != ApprovalStatus.PENDING else None,
            )
    except IntegrityError:
        existing = ApprovalRequest.objects.filter(team=team, idempotency_key=idempotency_key).first()
        if not idempotency_key or existing is None:
            raise
        return _replayed_request(existing, asked), False
    ApprovalEvent.objects.create(
        request=request,
        kind=ApprovalEvent.Kind.CREATED,
        new=status,
        actor_label=actor.label,
        data={"level": 1, "policy": (policy_decision or {}).get("explain", "")},
    )
    if status == ApprovalStatus.PENDING and kind == ApprovalKind.APPROVAL and notify:
        _notify(request, first)
        _toast(request, first, f"{agent.name} wants to run {action} — approval needed")
    if actor.type != ActorType.SYSTEM:
        audit_record(
            actor=actor,
            action="approval.request",
            obj=request,
            team=team,
            after={"action": action, "status": status, "external_ref": external_ref},
        )
    if status != ApprovalStatus.PENDING and callback_url:
        _callback(request)
    publish(request, "approval.created")
    return request, True


def _replayed_request(existing: ApprovalRequest, asked: dict[str, Any]) -> ApprovalRequest:
    """The request an idempotency key created, when this is the same question again."""
    first = {name: getattr(existing, name) for name in asked if name != "context"}
    first["context"] = (existing.policy_decision or {}).get("context")
    if first != asked:
        raise IdempotencyConflict(
            f"This Idempotency-Key was used for a different request (approval {existing.pk}); "
            "send a new key for a new question."
        )
    return existing


def _recipients(request: ApprovalRequest, level: EscalationLevel | None) -> list[str]:
    from cockpit.roles import Role

    if level is not None and level.group_id:
        users = User.objects.filter(groups=level.group_id, is_active=True)
    else:
        users = User.objects.filter(
            memberships__team=request.team_id, memberships__role__in=[Role.APPROVER, Role.ADMIN], is_active=True
        )
    return sorted({u.email for u in users if u.email})


def _notify(request: ApprovalRequest, level: EscalationLevel | None) -> None:
    """One notification per channel of the level, created with the change that caused it; the
    unique (request, level, channel) is what keeps it to exactly one."""
    from approvals.tasks import notification_deliver

    if level is None:
        return
    for channel in level.channels:
        notification, created = Notification.objects.get_or_create(request=request, level=level.level, channel=channel)
        if created:
            transaction.on_commit(functools.partial(notification_deliver.delay, notification.pk), robust=True)


def _callback(request: ApprovalRequest) -> None:
    from approvals.tasks import notification_deliver

    notification, created = Notification.objects.get_or_create(
        request=request, level=request.level, channel=Channel.CALLBACK
    )
    if created:
        transaction.on_commit(functools.partial(notification_deliver.delay, notification.pk), robust=True)


# --- Deciding ---------------------------------------------------------------------------------


def decider_levels(user: User) -> set[int]:
    """Ids of the escalation levels at which ``user``'s groups may decide (guardian permission
    ``decide_at_level``; the content type is matched by name, see ``cockpit.access``)."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    ctype = {
        "content_type__app_label": "approvals",
        "content_type__model": "escalationlevel",
        "permission__codename": "decide_at_level",
    }
    ids = set(GroupObjectPermission.objects.filter(group__user=user, **ctype).values_list("object_pk", flat=True))
    ids |= set(UserObjectPermission.objects.filter(user=user, **ctype).values_list("object_pk", flat=True))
    return {int(pk) for pk in ids}


def check_decider(user: User, request: ApprovalRequest) -> None:
    """Raise ``PermissionDenied`` (with the reason) unless ``user`` may decide ``request`` now."""
    from cockpit import access
    from cockpit.roles import TeamPerm

    if not access.has_team_perm(user, TeamPerm.APPROVE, request.team_id):
        raise PermissionDenied(f"You are not an approver of {request.team.name}.")
    if request.kind == ApprovalKind.APPROVAL and not user.is_superuser:
        level = level_of(request)
        if level is not None and level.group_id and level.pk not in decider_levels(user):
            raise PermissionDenied(
                f"This request is at level L{request.level}, decided by {level.who}; you are not in it."
            )
    policy = request.escalation_policy
    separation = policy.separation_of_duties if policy else True
    if separation and request.run_started_by_id == user.pk:
        raise PermissionDenied(
            "You started this run: another approver must decide its actions (separation of duties)."
        )


@transaction.atomic
def approval_decide(
    *,
    actor: Actor,
    request: ApprovalRequest,
    approve: bool,
    reason: str = "",
    edited_arguments: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """Decide a pending request: approve (as proposed, or with edited arguments) or reject (a
    reason is required). Two approvers racing: the row lock lets one decide; the other gets
    ``AlreadyDecided`` naming who did. An approval lets the waiting run go on at once."""
    from fleet import services as fleet_services

    locked = (
        ApprovalRequest.objects.select_for_update(of=("self",))
        .select_related("team", "agent", "run", "escalation_policy")
        .get(pk=request.pk)
    )
    if not locked.is_pending:
        who = locked.decided_by_label or "the system"
        raise AlreadyDecided(f"Already {locked.get_status_display().lower()} by {who}.")
    if actor.type == ActorType.USER:
        check_decider(actor.user, locked)  # type: ignore[arg-type]
    reason = reason.strip()
    if not approve and not reason:
        raise ValidationError({"reason": "Say why you reject it: the agent and the audit log will show it."})
    if edited_arguments is not None:
        if not approve:
            raise ValidationError({"edited_arguments": "Edits come with an approval, not a rejection."})
        edited_arguments = _check_arguments(locked, edited_arguments)
        if edited_arguments == locked.arguments:
            edited_arguments = None
    status = (
        ApprovalStatus.REJECTED
        if not approve
        else ApprovalStatus.APPROVED_WITH_EDITS
        if edited_arguments is not None
        else ApprovalStatus.APPROVED
    )
    event = locked.transition_to(
        status,
        actor_label=actor.label,
        reason=reason,
        data={"level": locked.level, "edited": edited_arguments is not None},
    )
    now = timezone.now()
    locked.decided_by = actor.user_or_none
    locked.decided_by_label = actor.label
    locked.decided_at = now
    locked.decision_reason = reason
    locked.edited_arguments = json_safe(edited_arguments) if edited_arguments is not None else None
    locked.save()
    event.save()
    audit_record(
        actor=actor,
        action=f"approval.{'approve' if approve else 'reject'}",
        obj=locked,
        team=locked.team,
        before={"status": ApprovalStatus.PENDING, "arguments": locked.arguments},
        after={"status": status, "arguments": locked.final_arguments, "level": locked.level},
        reason=reason,
    )
    if locked.run is not None and locked.step_seq and locked.kind == ApprovalKind.APPROVAL:
        fleet_services.approval_step_decide(
            actor=actor,
            run=locked.run,
            step_seq=locked.step_seq,
            approved=approve,
            reason=reason,
            edited_args=locked.edited_arguments,
        )
    if locked.callback_url:
        _callback(locked)
    publish(locked)
    return locked


def _check_arguments(request: ApprovalRequest, edited: Any) -> dict[str, Any]:
    if not isinstance(edited, dict):
        raise ValidationError({"edited_arguments": "The edited arguments are a JSON object."})
    tool = Tool.objects.filter(name=request.action).first()
    if tool and tool.args_schema:
        try:
            jsonschema.validate(edited, tool.args_schema)
        except jsonschema.ValidationError as exc:
            raise ValidationError(
                {"edited_arguments": f"{request.action} would refuse these arguments: {exc.message}"}
            ) from None
    return json_safe(edited)


@transaction.atomic
def approval_withdraw(*, actor: Actor, request: ApprovalRequest, reason: str) -> ApprovalRequest:
    """The run no longer waits (it was cancelled): the request leaves every queue."""
    locked = ApprovalRequest.objects.select_for_update().get(pk=request.pk)
    if not locked.is_pending:
        return locked
    event = locked.transition_to(ApprovalStatus.CANCELLED, actor_label=actor.label, reason=reason)
    locked.decided_at = timezone.now()
    locked.decided_by_label = actor.label
    locked.decision_reason = reason
    locked.save()
    event.save()
    if locked.callback_url:
        _callback(locked)
    publish(locked)
    return locked


# --- Escalation and expiry --------------------------------------------------------------------


def approvals_sweep(*, now: datetime | None = None, batch: int = 500) -> int:
    """Escalate (or expire) every pending request whose deadline has passed. Safe to run in
    several workers at once and again after a crash: each batch locks its rows (PostgreSQL skips
    rows another sweeper holds) and re-checks the deadline, so a request moves one level at a
    time, exactly once per deadline."""
    now = now or timezone.now()
    total = 0
    while True:
        with transaction.atomic():
            due = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING, deadline__lte=now).order_by("deadline")
            if connection.vendor == "postgresql":
                due = due.select_for_update(skip_locked=True, of=("self",))
            rows = list(due.select_related("team", "agent", "run", "escalation_policy")[:batch])
            if not rows:
                return total
            levels = _levels_by_policy({r.escalation_policy_id for r in rows if r.escalation_policy_id})
            for request in rows:
                _escalate(request, levels.get(request.escalation_policy_id or 0, []), now)
        total += len(rows)
        if len(rows) < batch:
            return total


def _levels_by_policy(policy_ids: Iterable[int]) -> dict[int, list[EscalationLevel]]:
    grouped: dict[int, list[EscalationLevel]] = {}
    for level in EscalationLevel.objects.filter(policy_id__in=list(policy_ids)).select_related("group"):
        grouped.setdefault(level.policy_id, []).append(level)
    return grouped


def _escalate(request: ApprovalRequest, levels: list[EscalationLevel], now: datetime) -> None:
    following = next((lv for lv in levels if lv.level == request.level + 1), None)
    if following is not None:
        old = request.level
        request.level = following.level
        request.deadline = now + timedelta(seconds=following.sla_seconds)
        request.save(update_fields=["level", "deadline"])
        ApprovalEvent.objects.create(
            request=request,
            kind=ApprovalEvent.Kind.ESCALATED,
            old=f"L{old}",
            new=f"L{following.level}",
            actor_label=ESCALATOR.label,
            reason=f"no decision within the SLA of L{old}",
        )
        _notify(request, following)
        _toast(request, following, f"Escalated to you: {request.agent.name} wants to run {request.action}")
        publish(request, escalated_from=old)
        if request.run is not None:
            from fleet import services as fleet_services

            fleet_services.run_approval_escalated(
                actor=ESCALATOR, run=request.run, step_seq=request.step_seq, from_level=old, to_level=following.level
            )
        return
    _expire(request, now)


def _expire(request: ApprovalRequest, now: datetime) -> None:
    """Silence is never approval: past the last level's deadline the action is rejected (or the
    run cancelled, if the escalation policy says so)."""
    from fleet import services as fleet_services

    policy = request.escalation_policy
    on_expiry = policy.on_expiry if policy else OnExpiry.REJECT
    reason = f"no decision within the SLA of every level (L1–L{request.level}); expired as rejected"
    event = request.transition_to(ApprovalStatus.EXPIRED, actor_label=ESCALATOR.label, reason=reason)
    request.decided_at = now
    request.decided_by_label = ESCALATOR.label
    request.decision_reason = reason
    request.save(update_fields=["status", "decided_at", "decided_by_label", "decision_reason"])
    event.save()
    audit_record(
        actor=ESCALATOR,
        action="approval.expire",
        obj=request,
        team=request.team,
        after={"status": ApprovalStatus.EXPIRED, "on_expiry": on_expiry},
        reason=reason,
    )
    if request.run is not None and request.step_seq and request.kind == ApprovalKind.APPROVAL:
        if on_expiry == OnExpiry.CANCEL_RUN:
            fleet_services.run_cancel(actor=ESCALATOR, run=request.run, reason=reason)
        else:
            fleet_services.approval_step_decide(
                actor=ESCALATOR, run=request.run, step_seq=request.step_seq, approved=False, reason=reason
            )
    if request.callback_url:
        _callback(request)
    publish(request)


# --- Notifications ----------------------------------------------------------------------------


def notification_claim(notification_id: int) -> Notification | None:
    """Take a notification for sending, unless it was sent or is being sent."""
    claimed = Notification.objects.filter(
        pk=notification_id, status__in=[NotificationStatus.PENDING, NotificationStatus.FAILED]
    ).update(status=NotificationStatus.SENDING, attempts=F("attempts") + 1)
    if claimed != 1:
        return None
    return Notification.objects.select_related(
        "request", "request__team", "request__agent", "request__escalation_policy"
    ).get(pk=notification_id)


def notification_finish(notification: Notification, *, error: str = "") -> None:
    if error:
        Notification.objects.filter(pk=notification.pk).update(
            status=NotificationStatus.FAILED, last_error=error[:2000]
        )
        return
    Notification.objects.filter(pk=notification.pk).update(
        status=NotificationStatus.SENT, sent_at=timezone.now(), last_error=""
    )
    ApprovalEvent.objects.create(
        request=notification.request,
        kind=ApprovalEvent.Kind.NOTIFIED,
        new=notification.channel,
        actor_label=SYSTEM.label,
        data={"level": notification.level},
    )
