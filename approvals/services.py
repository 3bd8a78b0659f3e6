"""Every write of approvals: policies, escalation policies, requests, decisions, escalation and
expiry, notifications. Decisions and policy changes are audited; every change to a request
writes an ``ApprovalEvent`` and publishes ``approval.changed`` on commit."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
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
from cockpit.audit import Actor, audit_record, audit_record_many
from cockpit.lib.actionhash import action_hash
from cockpit.lib.validation import IdempotencyConflict
from cockpit.models import ActorType, Team
from fleet.models import Agent, AlreadyDecided, Run, Tool

logger = logging.getLogger(__name__)

DEFAULT_SLA_SECONDS = 15 * 60
SYSTEM = Actor.system("approvals")
ESCALATOR = Actor.system("escalation sweeper")


class PolicyRefusal(ValidationError):
    """Policy refuses the edited arguments: a ``forbid`` on ``execute`` (``rules`` are its @ids),
    or they need a person at a higher level than the request is at (``level``). Nothing is
    decided; the request stays pending."""

    def __init__(self, message: str, *, rules: list[str], level: int | None = None) -> None:
        super().__init__({"edited_arguments": [message]})
        self.rules = rules
        self.level = level


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


def judge_arguments(request: ApprovalRequest, arguments: dict[str, Any]) -> cedar.Verdict:
    """Put the request's action with these arguments to the policies in force, the same way its
    proposal was: same agent, tool, risk, confidence, extra context and sample number; only what
    the arguments say (amount, currency, segment) comes from ``arguments``."""
    decision = request.policy_decision or {}
    stored = decision.get("context") or {}
    extra = decision.get("extra")
    if not isinstance(extra, dict):  # requests made before the extra context was kept
        extra = {k: stored[k] for k in ("customer_segment",) if k in stored}
    context = cedar.context_for(
        args=arguments, confidence=request.confidence, extra=extra, sample=int(stored.get("sample", 0))
    )
    verdict, _ = judge(
        team=request.team,
        agent=request.agent,
        tool=request.action,
        risk=request.risk,
        side_effect=bool(decision.get("side_effect", True)),
        context=context,
    )
    return verdict


def start_level(escalation: EscalationPolicy | None, wanted: int) -> int:
    """The level a request starts at when policy asks for ``wanted`` (``@level``): that level,
    or the escalation policy's last one if it has fewer; L1 without an escalation policy."""
    if escalation is None:
        return 1
    last = max((lv.level for lv in escalation.levels.all()), default=1)
    return max(1, min(wanted, last))


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
    level: int = 1,
    manual: bool = False,
) -> tuple[ApprovalRequest, bool]:
    """Ask the right humans about an action (or record that policy decided it at once, with
    ``status``). Returns ``(request, created)``: an idempotency key seen before returns the
    request created the first time. ``level`` is the level policy asks for (``@level``): the
    request starts there (or at the escalation policy's last level). ``manual``: a tier-4
    agent's proposal, which the approver carries out. ``IdempotencyConflict`` if the key came
    with another request before, concurrent duplicates included."""
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
    level = start_level(escalation, level)
    first = next((lv for lv in levels if lv.level == level), None)
    now = timezone.now()
    arguments = json_safe(arguments)
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
                arguments=arguments,
                reasoning=reasoning[:8000],
                reasoning_step=reasoning_step,
                confidence=confidence,
                risk=risk,
                policy=policy,
                policy_decision=json_safe(policy_decision or {}),
                status=status,
                escalation_policy=escalation,
                level=level,
                deadline=now + timedelta(seconds=first.sla_seconds if first else DEFAULT_SLA_SECONDS),
                requested_by_label=actor.label,
                run_started_by=run.created_by if run else None,
                idempotency_key=idempotency_key,
                callback_url=callback_url,
                decided_by_label=decided_by_label,
                decided_at=now if status != ApprovalStatus.PENDING else None,
                action_hash=action_hash(action[:160], arguments) if status == ApprovalStatus.APPROVED else "",
                manual=manual,
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
        data={"level": level, "policy": (policy_decision or {}).get("explain", "")},
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
    """Tell the level's approvers through each of its channels."""
    if level is not None:
        _notify_many((request, level.level, channel) for channel in level.channels)


def _callback(request: ApprovalRequest) -> None:
    """Tell the requesting agent (its ``callback_url``) that the request left ``pending``."""
    _notify_many([(request, request.level, Channel.CALLBACK)])


def _notify_many(wanted: Iterable[tuple[ApprovalRequest, int, str]]) -> None:
    """One notification per (request, level, channel), created with the change that causes it:
    the unique constraint is what keeps it to exactly one, however often a sweep or task runs.
    After the commit they are handed to the workers in one message (a sweep that escalates 500
    requests does not wait for 500 enqueues)."""
    from approvals.tasks import notification_deliver, notifications_deliver_many

    rows = [Notification(request=request, level=level, channel=channel) for request, level, channel in wanted]
    if not rows:
        return
    Notification.objects.bulk_create(rows, ignore_conflicts=True)
    keys = {(n.request_id, n.level, n.channel) for n in rows}
    unsent = Notification.objects.filter(
        request_id__in={n.request_id for n in rows}, status=NotificationStatus.PENDING, attempts=0
    ).values_list("pk", "request_id", "level", "channel")
    ids = sorted(pk for pk, *key in unsent if tuple(key) in keys)
    if len(ids) == 1:
        transaction.on_commit(functools.partial(notification_deliver.delay, ids[0]), robust=True)
    elif ids:
        transaction.on_commit(functools.partial(notifications_deliver_many.delay, ids), robust=True)


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
    result: Any = None,
) -> ApprovalRequest:
    """Decide a pending request: approve (as proposed, or with edited arguments) or reject (a
    reason is required). Two approvers racing: the row lock lets one decide; the other gets
    ``AlreadyDecided`` naming who did. An approval lets the waiting run go on at once.

    Edited arguments are put to policy like the proposal was (``PolicyRefusal`` when a rule
    forbids them, or when a rule wants a higher level than the request is at). An approval
    stores the SHA-256 of the action and the arguments that will run (``action_hash``). A manual
    (tier 4) request is approved with the ``result`` of the approver carrying it out."""
    locked = _lock_pending(actor, request)
    reason = reason.strip()
    if not approve and not reason:
        raise ValidationError({"reason": "Say why you reject it: the agent and the audit log will show it."})
    edited_arguments, edit_verdict = _check_edit(locked, approve, edited_arguments)
    if approve and locked.manual and locked.kind == ApprovalKind.APPROVAL and result is None:
        raise ValidationError(
            {
                "result": "This agent is tier 4 (Manual): carry the action out yourself, then record what "
                "happened as its result (the run receives it)."
            }
        )
    if result is not None and not (approve and locked.manual):
        raise ValidationError({"result": "Only a manual (tier 4) request is approved with a result."})
    return _record_decision(locked, actor, approve, reason, edited_arguments, edit_verdict, result)


def _lock_pending(actor: Actor, request: ApprovalRequest) -> ApprovalRequest:
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
    return locked


def _check_edit(
    locked: ApprovalRequest, approve: bool, edited: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, cedar.Verdict | None]:
    """The edited arguments as they will be stored (``None``: no edit), and policy's verdict on
    them. Refused: arguments the tool would refuse, a ``forbid``, a level above the request's."""
    if edited is None:
        return None, None
    if not approve:
        raise ValidationError({"edited_arguments": "Edits come with an approval, not a rejection."})
    edited = _check_arguments(locked, edited)
    if edited == locked.arguments:
        return None, None
    verdict = judge_arguments(locked, edited)
    if not verdict.allowed:
        raise PolicyRefusal(
            f"Policy forbids running {locked.action} with these arguments — {verdict.refusal()}. "
            "Nothing was decided: approve it as proposed, edit it again or reject it.",
            rules=verdict.forbidden_by or ["(no permit)"],
        )
    needed = 1 if verdict.unattended else start_level(locked.escalation_policy, verdict.level)
    if needed > locked.level:
        rules = ", ".join(verdict.needs_human_by) or "policy"
        raise PolicyRefusal(
            f"With these arguments the action must be decided at L{needed} or above ({rules}); this request "
            f"is at L{locked.level}. Nothing was decided: approve it as proposed, edit it again or reject it.",
            rules=verdict.needs_human_by,
            level=needed,
        )
    return edited, verdict


def _record_decision(
    locked: ApprovalRequest,
    actor: Actor,
    approve: bool,
    reason: str,
    edited_arguments: dict[str, Any] | None,
    edit_verdict: cedar.Verdict | None,
    result: Any,
) -> ApprovalRequest:
    from fleet import services as fleet_services

    status = (
        ApprovalStatus.REJECTED
        if not approve
        else ApprovalStatus.APPROVED_WITH_EDITS
        if edited_arguments is not None
        else ApprovalStatus.APPROVED
    )
    data: dict[str, Any] = {"level": locked.level, "edited": edited_arguments is not None}
    if edit_verdict is not None:
        data["edit_policy"] = edit_verdict.explain()
    event = locked.transition_to(status, actor_label=actor.label, reason=reason, data=data)
    now = timezone.now()
    locked.decided_by = actor.user_or_none
    locked.decided_by_label = actor.label
    locked.decided_at = now
    locked.decision_reason = reason
    locked.edited_arguments = json_safe(edited_arguments) if edited_arguments is not None else None
    locked.action_hash = action_hash(locked.action, locked.final_arguments) if approve else ""
    locked.result = json_safe(result) if result is not None else None
    locked.save()
    event.save()
    audit_record(
        actor=actor,
        action=f"approval.{'approve' if approve else 'reject'}",
        obj=locked,
        team=locked.team,
        before={"status": ApprovalStatus.PENDING, "arguments": locked.arguments},
        after={
            "status": status,
            "arguments": locked.final_arguments,
            "level": locked.level,
            "action_hash": locked.action_hash,
            **({"result": locked.result} if locked.manual and approve else {}),
        },
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
            action_hash=locked.action_hash,
            executed={"result": locked.result, "by": actor.label} if locked.manual and approve else None,
        )
    if locked.callback_url:
        _callback(locked)
    publish(locked)
    return locked


class ExecutionFailed(ValidationError):
    """The approver's run of a manual request's tool failed: nothing was decided."""


@transaction.atomic
def approval_execute(
    *,
    actor: Actor,
    request: ApprovalRequest,
    reason: str = "",
    edited_arguments: dict[str, Any] | None = None,
) -> ApprovalRequest:
    """A manual (tier 4) request carried out by the approver through Cockpit's registered tool:
    checked like any approval (who, policy on edits), the tool called once on the approver's
    behalf with the idempotency key the run's own step would have had, and the request approved
    with the tool's result. If the tool fails, nothing is decided (the request stays pending)."""
    from fleet.runtime import registry

    locked = _lock_pending(actor, request)
    if not locked.manual:
        raise ValidationError("Only a manual (tier 4) request is carried out by its approver.")
    try:
        spec = registry.get_tool(locked.action)
    except LookupError:
        raise ValidationError(
            f"{locked.action} is not a tool Cockpit can call: carry it out elsewhere and record the result."
        ) from None
    edited_arguments, edit_verdict = _check_edit(locked, True, edited_arguments)
    arguments = edited_arguments if edited_arguments is not None else _check_arguments(locked, locked.arguments)
    run, seq = locked.run, (locked.step_seq or 0) + 1
    invocation = registry.ToolInvocation(
        run_id=run.pk if run else 0,
        step_seq=seq if run else 0,
        attempt=1,
        idempotency_key=f"{run.trace_id}:{seq}" if run else f"approval:{locked.pk}",
        timeout=spec.timeout,
    )
    try:
        with transaction.atomic():
            result = spec.fn(invocation, **arguments)
    except Exception as exc:  # noqa: BLE001 - any tool error: shown to the approver, nothing decided
        raise ExecutionFailed({"result": f"{locked.action} failed: {type(exc).__name__}: {exc}"}) from None
    return _record_decision(
        locked, actor, True, reason.strip(), edited_arguments, edit_verdict, result if result is not None else {}
    )


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


# PostgreSQL advisory lock (session level) held by the one sweep running; any constant works, it
# only has to be the same in every process.
_SWEEP_LOCK_KEY = 0x6170_7377  # "apsw"
# A sweep that keeps finding work hands over after this long, so a worker is never held for good
# (the next beat tick starts the next sweep at once).
SWEEP_MAX_SECONDS = 50.0


@contextlib.contextmanager
def _sweep_lock() -> Iterator[bool]:
    """True if this process may sweep now; False if another sweep is running. Never waits.

    PostgreSQL: ``pg_try_advisory_lock`` on this connection, released at the end (or by the
    server when the connection dies, so a killed worker never leaves it held). SQLite: every
    write transaction already takes the database's write lock, so sweeps cannot overlap there.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_SWEEP_LOCK_KEY])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_SWEEP_LOCK_KEY])


def approvals_sweep(*, now: datetime | None = None, batch: int = 500) -> int | None:
    """Escalate (or expire) every pending request whose deadline has passed; the number moved,
    or ``None`` when another sweep is running (this one does nothing: at most one sweep runs at
    a time, so beat's ticks never pile up behind a slow one).

    Each batch is one transaction: one statement claims the due rows (``FOR UPDATE SKIP
    LOCKED`` re-checks each deadline under the lock), a few statements move them all, and the
    notifications, live events and audit rows are written in bulk (audit last, so the chain's
    lock is held only for the INSERT). A sweep that falls behind keeps claiming batches, each
    with a fresh ``now``, until nothing is due: it catches up instead of queueing more. Safe
    after a crash: the next sweep finds the same rows."""
    with _sweep_lock() as acquired:
        if not acquired:
            return None
        total = 0
        started = time.monotonic()
        while True:
            moved = _sweep_batch(now or timezone.now(), batch)
            total += moved
            if moved < batch or time.monotonic() - started > SWEEP_MAX_SECONDS:
                return total


@transaction.atomic
def _sweep_batch(now: datetime, batch: int) -> int:
    due = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING, deadline__lte=now).order_by("deadline")
    if connection.vendor == "postgresql":
        due = due.select_for_update(skip_locked=True, of=("self",))
    rows = list(due.select_related("team", "agent", "run", "escalation_policy")[:batch])
    if not rows:
        return 0
    levels = _levels_by_policy({r.escalation_policy_id for r in rows if r.escalation_policy_id})
    moves: dict[int, list[ApprovalRequest]] = {}
    expiring: list[ApprovalRequest] = []
    for request in rows:
        following = next(
            (lv for lv in levels.get(request.escalation_policy_id or 0, []) if lv.level == request.level + 1), None
        )
        if following is None:
            expiring.append(request)
        else:
            moves.setdefault(following.pk, []).append(request)
    by_pk = {lv.pk: lv for group in levels.values() for lv in group}
    for level_pk, requests in moves.items():
        _escalate_many(requests, by_pk[level_pk], now)
    audits = _expire_many(expiring, now) if expiring else []
    audit_record_many(audits)  # last: the chain's lock is held until the commit
    return len(rows)


def _levels_by_policy(policy_ids: Iterable[int]) -> dict[int, list[EscalationLevel]]:
    grouped: dict[int, list[EscalationLevel]] = {}
    for level in EscalationLevel.objects.filter(policy_id__in=list(policy_ids)).select_related("group"):
        grouped.setdefault(level.policy_id, []).append(level)
    return grouped


def _escalate_many(requests: list[ApprovalRequest], following: EscalationLevel, now: datetime) -> None:
    """Move requests that are all at the level before ``following`` up to it, together."""
    old = following.level - 1
    deadline = now + timedelta(seconds=following.sla_seconds)
    ApprovalRequest.objects.filter(pk__in=[r.pk for r in requests]).update(level=following.level, deadline=deadline)
    events = []
    for request in requests:
        request.level, request.deadline = following.level, deadline
        events.append(
            ApprovalEvent(
                request=request,
                kind=ApprovalEvent.Kind.ESCALATED,
                old=f"L{old}",
                new=f"L{following.level}",
                actor_label=ESCALATOR.label,
                reason=f"no decision within the SLA of L{old}",
            )
        )
    ApprovalEvent.objects.bulk_create(events)
    _notify_many((r, following.level, channel) for r in requests for channel in following.channels)
    for request in requests:
        _toast(request, following, f"Escalated to you: {request.agent.name} wants to run {request.action}")
        publish(request, escalated_from=old)
        if request.run is not None:
            from fleet import services as fleet_services

            fleet_services.run_approval_escalated(
                actor=ESCALATOR, run=request.run, step_seq=request.step_seq, from_level=old, to_level=following.level
            )


def _expire_many(requests: list[ApprovalRequest], now: datetime) -> list[dict[str, Any]]:
    """Silence is never approval: past the last level's deadline the action is rejected (or the
    run cancelled, if the escalation policy says so). Returns the audit records to write."""

    events, audits = [], []
    by_reason: dict[str, list[int]] = {}
    for request in requests:
        reason = f"no decision within the SLA of every level (L1–L{request.level}); expired as rejected"
        event = request.transition_to(ApprovalStatus.EXPIRED, actor_label=ESCALATOR.label, reason=reason)
        events.append(event)
        request.decided_at, request.decided_by_label, request.decision_reason = now, ESCALATOR.label, reason
        by_reason.setdefault(reason, []).append(request.pk)
    for reason, pks in by_reason.items():
        ApprovalRequest.objects.filter(pk__in=pks).update(
            status=ApprovalStatus.EXPIRED, decided_at=now, decided_by_label=ESCALATOR.label, decision_reason=reason
        )
    ApprovalEvent.objects.bulk_create(events)
    for request in requests:
        policy = request.escalation_policy
        on_expiry = policy.on_expiry if policy else OnExpiry.REJECT
        audits.append(
            {
                "actor": ESCALATOR,
                "action": "approval.expire",
                "obj": request,
                "team": request.team,
                "after": {"status": ApprovalStatus.EXPIRED, "on_expiry": on_expiry},
                "reason": request.decision_reason,
            }
        )
        if request.run is not None and request.step_seq and request.kind == ApprovalKind.APPROVAL:
            _expire_run_step(request, on_expiry)
        publish(request)
    _notify_many((r, r.level, Channel.CALLBACK) for r in requests if r.callback_url)
    return audits


def _expire_run_step(request: ApprovalRequest, on_expiry: str) -> None:
    """Tell the run its request expired. In a savepoint of its own: a run in a state nobody
    foresaw is logged and left, and never takes the rest of the sweep's batch back with it. A
    run that no longer waits for the request (it ended, or moved on) lets it expire alone."""
    from fleet import services as fleet_services

    assert request.run is not None and request.step_seq is not None  # the caller checked both
    try:
        with transaction.atomic():
            if on_expiry == OnExpiry.CANCEL_RUN:
                fleet_services.run_cancel(actor=ESCALATOR, run=request.run, reason=request.decision_reason)
            else:
                with contextlib.suppress(AlreadyDecided):
                    fleet_services.approval_step_decide(
                        actor=ESCALATOR,
                        run=request.run,
                        step_seq=request.step_seq,
                        approved=False,
                        reason=request.decision_reason,
                    )
    except Exception:  # noqa: BLE001 - one run's trouble is not its batch's
        logger.exception("approval request %s expired; its run %s could not be told", request.pk, request.run_id)


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
