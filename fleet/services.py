"""Every write of the fleet: agents, versions, runs, operator directives, and the runtime's
journal. Operator actions are audited; every run change writes a ``RunEvent`` and publishes
``run.changed`` on commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from cockpit import live
from cockpit.audit import Actor, audit_record, snapshot
from cockpit.lib.actionhash import action_hash as compute_action_hash
from cockpit.lib.validation import IdempotencyConflict
from cockpit.models import ActorType, Team
from fleet.models import (
    Agent,
    AgentEvent,
    AgentKind,
    AgentStatus,
    AgentVersion,
    AlreadyDecided,
    DegradedMode,
    IllegalTransition,
    ModelProvider,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    Tier,
    Tool,
    split_model_ref,
)
from fleet.runtime.errors import CancelRun, LeaseLost
from fleet.runtime.faults import kill_point

if TYPE_CHECKING:
    from fleet.runtime.registry import ToolSpec
    from fleet.seams import ActionContext, GateDecision


def lease_seconds() -> int:
    return int(settings.COCKPIT["RUN_LEASE_SECONDS"])


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def publish_run(run: Run, kind: str = "run.changed", **extra: Any) -> None:
    """``run.changed`` (status, directives) goes to the team and to the run's own topic;
    ``run.step`` only to the run's topic (the run page), and a busy run's step events coalesce
    while queued: the page re-fetches the run either way."""
    step = kind == "run.step"
    live.publish(
        {"type": kind, "run": run.pk, "agent": run.agent_id, "status": run.status, **extra},
        team_id=run.team_id,
        topics=[f"run.{run.pk}"],
        coalesce=f"run.step:{run.pk}" if step else None,
        team_wide=not step,
    )


def publish_agent(agent: Agent) -> None:
    live.publish(
        {"type": "agent.changed", "agent": agent.pk},
        team_id=agent.team_id,
        topics=[f"agent.{agent.pk}"],
    )


def _event(run: Run, kind: str, actor: Actor, reason: str = "", *, to_status: str = "", **data: Any) -> RunEvent:
    return RunEvent.objects.create(
        run=run,
        kind=kind,
        actor_label=actor.label,
        actor_user=actor.user_or_none,
        reason=reason,
        to_status=to_status,
        data=json_safe(data),
    )


def _save_transition(run: Run, new: str, actor: Actor, reason: str = "", **data: Any) -> RunEvent:
    event = run.transition_to(new, actor_label=actor.label, actor_user=actor.user_or_none, reason=reason, data=data)
    run.save()
    event.save()
    return event


def _directive_author(run: Run, directive: str) -> Actor:
    """Who asked for the pause or cancellation the run is now carrying out: the author of its
    latest such directive. Whatever makes the run stop (an approver's decision, a worker at a
    step boundary) only carries the request out; the history names the one who asked."""
    event = (
        run.events.filter(kind=RunEvent.Kind.DIRECTIVE, data__directive=directive)
        .select_related("actor_user")
        .order_by("-id")
        .first()
    )
    if event is None:
        return RUNTIME
    return Actor.as_recorded(label=event.actor_label, user=event.actor_user)


def _carry_out(run: Run, directive: str, new: str, reason: str) -> RunEvent:
    """Honour a requested pause or cancellation: the transition is the requester's."""
    return _save_transition(run, new, _directive_author(run, directive), reason, carries_out=directive)


# --- Agents -----------------------------------------------------------------------------------


@transaction.atomic
def agent_create(
    *,
    actor: Actor,
    team: Team,
    slug: str,
    name: str,
    description: str = "",
    kind: str = AgentKind.MANAGED,
    entrypoint: str = "",
    tier: int = Tier.SUPERVISED,
    degraded_mode: str = DegradedMode.FALLBACK,
) -> Agent:
    agent = Agent(
        team=team,
        slug=slug,
        name=name,
        description=description,
        kind=kind,
        entrypoint=entrypoint,
        tier=tier,
        degraded_mode=degraded_mode,
    )
    agent.full_clean(exclude=["current_version"])
    agent.save()
    audit_record(
        actor=actor,
        action="agent.create",
        obj=agent,
        after=snapshot(agent, ["slug", "name", "kind", "tier"]),
    )
    publish_agent(agent)
    return agent


@transaction.atomic
def agent_version_create(
    *,
    actor: Actor,
    agent: Agent,
    version: str,
    primary_model: str,
    fallback_models: list[str] | None = None,
    temperature: float | None = None,
    max_steps: int = 50,
    run_budget: Decimal | None = None,
    prompts: dict[str, str] | None = None,
    tools: list[str] | None = None,
    notes: str = "",
) -> AgentVersion:
    """Publish a new immutable version; it becomes the agent's current one."""
    agent = Agent.objects.select_for_update().get(pk=agent.pk)
    new = AgentVersion(
        agent=agent,
        version=version,
        primary_model=primary_model,
        fallback_models=fallback_models or [],
        temperature=temperature,
        max_steps=max_steps,
        run_budget=run_budget,
        prompts=prompts or {},
        tools=tools or [],
        notes=notes,
        created_by=actor.user_or_none,
        created_by_label=actor.label,
    )
    new.full_clean()
    unknown = sorted(set(new.tools) - set(Tool.objects.filter(name__in=new.tools).values_list("name", flat=True)))
    if unknown:
        raise ValidationError({"tools": f"Unknown tool(s): {', '.join(unknown)}."})
    new.save()
    old = agent.current_version
    agent.current_version = new
    agent.save(update_fields=["current_version"])
    AgentEvent.objects.create(
        agent=agent,
        kind=AgentEvent.Kind.VERSION,
        old=old.version if old else "",
        new=version,
        actor_label=actor.label,
        reason=notes,
    )
    audit_record(
        actor=actor,
        action="agent.version_create",
        obj=agent,
        after={"version": version, **new.as_config()},
    )
    publish_agent(agent)
    return new


@transaction.atomic
def agent_set_status(*, actor: Actor, agent: Agent, status: str, reason: str = "") -> Agent:
    """Activate, pause or quarantine an agent. Pausing or quarantining also asks every active run
    of the agent to pause at its next step, and the agent takes no new runs until reactivated.
    Reactivating does not resume paused runs: operators resume them one by one."""
    agent = Agent.objects.select_for_update().get(pk=agent.pk)
    if status != AgentStatus.ACTIVE and not reason.strip():
        raise ValidationError({"reason": "Say why: operators of its runs will see this reason."})
    before = snapshot(agent, ["status", "status_reason"])
    try:
        event = agent.transition_to(status, actor_label=actor.label, reason=reason)
    except IllegalTransition as exc:
        raise ValidationError({"status": exc.messages}) from None
    agent.save(update_fields=["status", "status_reason", "status_changed_at"])
    event.save()
    paused_runs = 0
    if status != AgentStatus.ACTIVE:
        directive = f"agent {status}: {reason}"
        for run in Run.objects.select_for_update().filter(
            agent=agent,
            status__in=[RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.WAITING_APPROVAL],
        ):
            _request_pause(run, actor, directive)
            paused_runs += 1
    audit_record(
        actor=actor,
        action=f"agent.{ {'active': 'activate', 'paused': 'pause', 'quarantined': 'quarantine'}[status] }",
        obj=agent,
        before=before,
        after={**snapshot(agent, ["status", "status_reason"]), "runs_paused": paused_runs},
        reason=reason,
    )
    publish_agent(agent)
    return agent


@transaction.atomic
def agent_set_tier(*, actor: Actor, agent: Agent, tier: int, reason: str = "") -> Agent:
    agent = Agent.objects.select_for_update().get(pk=agent.pk)
    if tier not in Tier.values:
        raise ValidationError({"tier": "The tier is 1 (Full Auto), 2 (Supervised), 3 (Assisted) or 4 (Manual)."})
    if tier == agent.tier:
        return agent
    old = agent.tier
    agent.tier = tier
    agent.save(update_fields=["tier"])
    AgentEvent.objects.create(
        agent=agent,
        kind=AgentEvent.Kind.TIER,
        old=str(old),
        new=str(tier),
        actor_label=actor.label,
        reason=reason,
    )
    audit_record(
        actor=actor,
        action="agent.set_tier",
        obj=agent,
        before={"tier": old},
        after={"tier": tier},
        reason=reason,
    )
    publish_agent(agent)
    return agent


@transaction.atomic
def agent_slo_update(
    *,
    actor: Actor,
    agent: Agent,
    success_rate: Decimal,
    p95_llm_seconds: float,
    p95_tool_seconds: float,
    cost_per_success: Decimal | None,
) -> Agent:
    agent = Agent.objects.select_for_update().get(pk=agent.pk)
    fields = [
        "slo_success_rate",
        "slo_p95_llm_seconds",
        "slo_p95_tool_seconds",
        "slo_cost_per_success",
    ]
    before = snapshot(agent, fields)
    if not Decimal(0) <= success_rate <= Decimal(100):
        raise ValidationError({"success_rate": "A success rate is between 0 and 100 %."})
    if p95_llm_seconds <= 0 or p95_tool_seconds <= 0:
        raise ValidationError({"p95_llm_seconds": "Latency targets must be positive."})
    if cost_per_success is not None and cost_per_success < 0:
        raise ValidationError({"cost_per_success": "A cost target cannot be negative."})
    agent.slo_success_rate, agent.slo_p95_llm_seconds = success_rate, p95_llm_seconds
    agent.slo_p95_tool_seconds, agent.slo_cost_per_success = p95_tool_seconds, cost_per_success
    agent.save(update_fields=fields)
    AgentEvent.objects.create(agent=agent, kind=AgentEvent.Kind.SLO, actor_label=actor.label)
    audit_record(
        actor=actor,
        action="agent.slo_update",
        obj=agent,
        before=before,
        after=snapshot(agent, fields),
    )
    publish_agent(agent)
    return agent


def tools_sync() -> int:
    """Mirror the code's tool registry into the ``Tool`` table (new tools and changed
    definitions). Returns how many rows changed. Not audited: it copies code, not a decision."""
    from fleet.runtime import registry

    changed = 0
    for spec in registry.tools().values():
        values = {
            "description": spec.description,
            "side_effect": spec.side_effect,
            "risk": spec.risk,
            "idempotent": spec.idempotent,
            "timeout_seconds": spec.timeout,
            "args_schema": spec.schema,
            "compensation": spec.compensation,
        }
        tool = Tool.objects.filter(name=spec.name).first()
        if tool is None:
            Tool.objects.create(name=spec.name, **values)
            changed += 1
        elif any(getattr(tool, k) != v for k, v in values.items()):
            Tool.objects.filter(pk=tool.pk).update(**values, updated_at=timezone.now())
            changed += 1
    return changed


# --- Runs: creation and operator directives ---------------------------------------------------


@transaction.atomic
def run_create(
    *,
    actor: Actor,
    agent: Agent,
    input: dict[str, Any] | None = None,
    input_summary: str = "",
    idempotency_key: str = "",
    external_ref: str = "",
    managed: bool | None = None,
) -> tuple[Run, bool]:
    """Start a run (managed: queued for a worker) or register one running elsewhere (external).
    Returns ``(run, created)``; the same idempotency key returns the run created the first time
    (``IdempotencyConflict`` if it came with another request), concurrent duplicates included."""
    idempotency_key = idempotency_key.strip()[:200]
    asked: dict[str, Any] = {
        "agent_id": agent.pk,
        "input": json_safe(input or {}),
        "input_summary": input_summary[:2000],
        "external_ref": external_ref[:200],
    }
    if managed is not None:
        asked["kind"] = RunKind.MANAGED if managed else RunKind.EXTERNAL
    if idempotency_key:
        existing = Run.objects.filter(team=agent.team, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replayed_run(existing, asked), False
    agent = Agent.objects.select_for_update(of=("self",)).select_related("current_version", "team").get(pk=agent.pk)
    if not agent.accepts_runs:
        raise ValidationError(
            f"{agent.name} is {agent.get_status_display().lower()}"
            f"{': ' + agent.status_reason if agent.status_reason else ''}; it takes no new runs."
        )
    managed = agent.kind == AgentKind.MANAGED if managed is None else managed
    if managed and agent.kind != AgentKind.MANAGED:
        raise ValidationError(f"{agent.name} runs elsewhere (external); it cannot be started here.")
    if managed and agent.current_version is None:
        raise ValidationError(f"{agent.name} has no published version to run.")
    if input is not None and not isinstance(input, dict):
        raise ValidationError({"input": "The input is a JSON object."})
    try:
        with transaction.atomic():  # a concurrent duplicate fails here, not the whole request
            run = Run.objects.create(
                team=agent.team,
                agent=agent,
                version=agent.current_version,
                kind=RunKind.MANAGED if managed else RunKind.EXTERNAL,
                status=RunStatus.QUEUED,
                input=json_safe(input or {}),
                input_summary=input_summary[:2000],
                idempotency_key=idempotency_key,
                external_ref=external_ref[:200],
                created_by=actor.user_or_none,
                created_by_label=actor.label,
            )
    except IntegrityError:
        existing = Run.objects.filter(team=agent.team, idempotency_key=idempotency_key).first()
        if not idempotency_key or existing is None:
            raise
        return _replayed_run(existing, asked), False
    _event(run, RunEvent.Kind.STATUS, actor, "created", to_status=run.status)
    if not managed:
        # An external agent is already running when it registers.
        _save_transition(run, RunStatus.RUNNING, actor, "registered by the external agent")
    if actor.type != ActorType.SYSTEM:
        audit_record(actor=actor, action="run.create", obj=run, after={"agent": agent.slug, "kind": run.kind})
    publish_run(run, "run.created")
    if managed:
        _enqueue(run)
    return run, True


def _replayed_run(existing: Run, asked: dict[str, Any]) -> Run:
    """The run an idempotency key created, when this is the same request again."""
    if {name: getattr(existing, name) for name in asked} != asked:
        raise IdempotencyConflict(
            f"This Idempotency-Key was used for a different request (run {existing.pk}); send a new key for a new run."
        )
    return existing


def _enqueue(run: Run) -> None:
    """Hand the run to a worker once the transaction commits. If the broker is unreachable the
    run stays queued (or running, unleased) in the database and the sweeper enqueues it later."""
    from fleet.tasks import run_execute

    run_id = run.pk
    transaction.on_commit(lambda: run_execute.delay(run_id), robust=True)


def _locked(run: Run) -> Run:
    return Run.objects.select_for_update(of=("self",)).select_related("agent", "team", "version").get(pk=run.pk)


def _request_pause(run: Run, actor: Actor, reason: str) -> None:
    """Pause at the next step boundary; at once if nothing of Cockpit's is executing it (a
    queued run, or an external run, which reads the directive between its own steps)."""
    if run.status == RunStatus.QUEUED or (run.kind == RunKind.EXTERNAL and run.status == RunStatus.RUNNING):
        _save_transition(run, RunStatus.PAUSED, actor, reason)
    else:
        run.pause_requested = True
        run.directive_reason = reason
        run.updated_at = timezone.now()
        run.save(update_fields=["pause_requested", "directive_reason", "updated_at"])
        _event(run, RunEvent.Kind.DIRECTIVE, actor, reason, directive="pause")
    publish_run(run)


@transaction.atomic
def run_pause(*, actor: Actor, run: Run, reason: str = "") -> Run:
    run = _locked(run)
    if run.status not in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.WAITING_APPROVAL):
        raise ValidationError(f"This run is {run.get_status_display().lower()}; only an active run can be paused.")
    if run.pause_requested:
        raise ValidationError("A pause is already requested; it takes effect at the next step.")
    reason = reason.strip() or f"paused by {actor.label}"
    _request_pause(run, actor, reason)
    audit_record(actor=actor, action="run.pause", obj=run, reason=reason)
    _emit_operator_span(run, "pause", actor, reason)
    return run


@transaction.atomic
def run_resume(*, actor: Actor, run: Run, reason: str = "") -> Run:
    """Resume a paused run; withdraw a pause not yet honoured; and, while the interim approval
    gate is in place, approve the action a waiting run asks for."""
    from fleet import seams

    run = _locked(run)
    reason = reason.strip()
    if run.status == RunStatus.PAUSED:
        if not run.agent.accepts_runs:
            raise ValidationError(
                f"{run.agent.name} is {run.agent.status}: reactivate the agent before resuming its runs."
            )
        run.lease_owner, run.lease_expires_at = "", None
        _save_transition(run, RunStatus.RUNNING, actor, reason or f"resumed by {actor.label}")
        if run.kind == RunKind.MANAGED:
            _enqueue(run)
    elif run.pause_requested and run.status in (
        RunStatus.RUNNING,
        RunStatus.QUEUED,
        RunStatus.WAITING_APPROVAL,
    ):
        run.pause_requested = False
        run.directive_reason = ""
        run.save(update_fields=["pause_requested", "directive_reason"])
        _event(run, RunEvent.Kind.DIRECTIVE, actor, reason or "pause withdrawn", directive="continue")
    elif run.status == RunStatus.WAITING_APPROVAL and getattr(seams.current.approval_gate, "resume_approves", True):
        step = run.steps.filter(kind=StepKind.APPROVAL, status=StepStatus.WAITING).order_by("-seq").first()
        if step is None:
            raise ValidationError("This run waits for an approval that cannot be found.")
        _decide_approval_step(run, step, actor, approved=True, reason=reason or "approved by resuming the run")
        audit_record(
            actor=actor,
            action="approval.grant_by_resume",
            obj=run,
            reason=reason,
            after={"step": step.seq, "action": step.input.get("action")},
        )
    elif run.status == RunStatus.WAITING_APPROVAL:
        raise ValidationError("This run waits for an approval decision: decide it in the approvals queue.")
    else:
        raise ValidationError(f"This run is {run.get_status_display().lower()}; there is nothing to resume.")
    audit_record(actor=actor, action="run.resume", obj=run, reason=reason)
    publish_run(run)
    _emit_operator_span(run, "resume", actor, reason)
    return run


@transaction.atomic
def run_cancel(*, actor: Actor, run: Run, reason: str) -> Run:
    """Cancel a run. A running run stops at its next step; side effects with a compensating
    tool are then undone in reverse order (by a worker), and the run ends as cancelled."""
    from fleet import seams

    run = _locked(run)
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the run is cancelled."})
    if run.is_final:
        raise ValidationError(f"This run has already {run.get_status_display().lower()}.")
    if run.cancel_requested:
        raise ValidationError("Cancellation is already under way.")
    run.cancel_requested = True
    run.directive_reason = reason
    run.save(update_fields=["cancel_requested", "directive_reason"])
    _event(run, RunEvent.Kind.DIRECTIVE, actor, reason, directive="cancel")
    if run.status != RunStatus.RUNNING or run.kind == RunKind.EXTERNAL:
        # Nothing of Cockpit's is executing it: finish here (an external agent reads "cancel"
        # as its directive), unless side effects must be undone by a worker first.
        waiting = run.steps.filter(kind=StepKind.APPROVAL, status=StepStatus.WAITING).first()
        if waiting is not None:
            seams.current.approval_gate.withdraw(run=run, step=waiting, reason=reason)
        if run.kind == RunKind.MANAGED and pending_compensations(run):
            _enqueue(run)
        else:
            _save_transition(run, RunStatus.CANCELLED, actor, reason)
    audit_record(actor=actor, action="run.cancel", obj=run, reason=reason)
    publish_run(run)
    _emit_operator_span(run, "cancel", actor, reason)
    return run


OVERRIDABLE = ("model", "temperature", "max_steps", "budget", "input")


@transaction.atomic
def run_override(*, actor: Actor, run: Run, changes: dict[str, Any], reason: str = "") -> Run:
    """Change the model, temperature, max steps, budget or input of a paused or waiting run;
    the change applies from its next step. ``None`` removes an override."""
    run = _locked(run)
    if run.status not in (RunStatus.PAUSED, RunStatus.WAITING_APPROVAL):
        raise ValidationError("Overrides apply to a paused or waiting run: pause it first.")
    unknown = set(changes) - set(OVERRIDABLE)
    if unknown:
        raise ValidationError(f"Cannot override {', '.join(sorted(unknown))}.")
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None or value == "":
            clean[key] = None
            continue
        if key == "model":
            provider_name, model = split_model_ref(str(value))
            if not model or not ModelProvider.objects.filter(name=provider_name, enabled=True).exists():
                errors[key] = f'"{value}" is not "provider/model" with a known, enabled provider.'
            clean[key] = str(value)
        elif key == "temperature":
            try:
                clean[key] = float(value)
            except (TypeError, ValueError):
                errors[key] = "The temperature is a number."
                continue
            if not 0 <= clean[key] <= 2:
                errors[key] = "The temperature is between 0 and 2."
        elif key == "max_steps":
            try:
                clean[key] = int(value)
            except (TypeError, ValueError):
                errors[key] = "Max steps is a whole number."
                continue
            if clean[key] <= run.step_count:
                errors[key] = f"The run has already taken {run.step_count} steps; allow more than that."
        elif key == "budget":
            try:
                clean[key] = str(Decimal(str(value)))
            except InvalidOperation:
                errors[key] = "The budget is an amount in USD."
                continue
            if Decimal(clean[key]) <= 0:
                errors[key] = "The budget must be more than zero."
        elif key == "input":
            if not isinstance(value, dict):
                errors[key] = "The input is a JSON object."
            clean[key] = value
    if errors:
        raise ValidationError(errors)
    before = {k: run.overrides.get(k) for k in clean}
    merged = {**run.overrides, **clean}
    run.overrides = json_safe({k: v for k, v in merged.items() if v is not None})
    run.save(update_fields=["overrides"])
    _event(run, RunEvent.Kind.OVERRIDE, actor, reason, before=before, after=clean)
    audit_record(actor=actor, action="run.override", obj=run, before=before, after=clean, reason=reason)
    publish_run(run)
    _emit_operator_span(run, "override", actor, reason, changes=clean)
    return run


def _emit_operator_span(run: Run, action: str, actor: Actor, reason: str, **data: Any) -> None:
    from fleet import telemetry

    event = run.events.order_by("-id").first()
    if event is None:
        return
    attributes = {
        "cockpit.operator.action": action,
        "cockpit.operator.actor": actor.label,
        "cockpit.reason": reason,
    }
    if data:
        attributes["cockpit.operator.data"] = json.dumps(json_safe(data))
    transaction.on_commit(lambda: telemetry.emit_event(run, event, f"operator {action}", attributes))


# --- Approvals journaled as steps -------------------------------------------------------------


def approved_action_hash(approval_input: dict[str, Any], edited_args: dict[str, Any] | None) -> str:
    """The hash of the action an approval step asked about, with the approver's edits if any
    (for a decision that did not bring its own, e.g. an operator's resume)."""
    action = (approval_input or {}).get("action") or {}
    tool, args = (action.get("tool", ""), action.get("args")) if "tool" in action else ("", action)
    return compute_action_hash(tool, edited_args if edited_args is not None else args)


def _decide_approval_step(
    run: Run,
    step: Step,
    actor: Actor,
    *,
    approved: bool,
    reason: str,
    edited_args: dict[str, Any] | None = None,
    action_hash: str = "",
    executed: dict[str, Any] | None = None,
) -> None:
    now = timezone.now()
    step.status = StepStatus.SUCCEEDED if approved else StepStatus.FAILED
    output: dict[str, Any] = {
        "approved": approved,
        "decided_by": actor.label,
        "reason": reason,
        "edited_args": edited_args,
    }
    if approved:
        # What the approval binds; the runtime compares it with what it is about to run.
        output["action_hash"] = action_hash or approved_action_hash(step.input, edited_args)
    if executed is not None:
        output["executed"] = executed  # tier 4: the approver carried it out; this is its result
    step.output = json_safe(output)
    step.error = "" if approved else f"rejected by {actor.label}: {reason}"
    step.ended_at = now
    step.save(update_fields=["status", "output", "error", "ended_at"])
    _event(
        run,
        RunEvent.Kind.APPROVAL,
        actor,
        reason,
        step=step.seq,
        approved=approved,
        waited_seconds=round((now - step.started_at).total_seconds(), 1),
    )
    # The run continues (to execute the action, or to take its rejection path) unless a pause
    # was asked for while it waited.
    if run.pause_requested:
        _carry_out(run, "pause", RunStatus.PAUSED, run.directive_reason or "paused while waiting for approval")
    else:
        run.lease_owner, run.lease_expires_at = "", None
        _save_transition(run, RunStatus.RUNNING, actor, "approved" if approved else "rejected")
        _enqueue(run)
    from fleet import telemetry

    transaction.on_commit(lambda: telemetry.emit_step(run, step))


@transaction.atomic
def run_approval_escalated(*, actor: Actor, run: Run, step_seq: int | None, from_level: int, to_level: int) -> None:
    """The approval the run waits for moved up a level: on the run's timeline and in its trace.
    Called by the approvals app's escalation sweeper."""
    from fleet import telemetry

    reason = f"no decision within the SLA of L{from_level}; escalated to L{to_level}"
    event = _event(run, RunEvent.Kind.NOTE, actor, reason, step=step_seq, escalated_to=to_level)
    attributes = {
        "cockpit.escalation.level": to_level,
        "cockpit.escalation.from": from_level,
        "cockpit.reason": reason,
    }
    if step_seq is not None:
        attributes["cockpit.step.seq"] = step_seq
    transaction.on_commit(lambda: telemetry.emit_event(run, event, f"escalation L{to_level}", attributes))
    publish_run(run)


@transaction.atomic
def approval_step_decide(
    *,
    actor: Actor,
    run: Run,
    step_seq: int,
    approved: bool,
    reason: str = "",
    edited_args: dict[str, Any] | None = None,
    action_hash: str = "",
    executed: dict[str, Any] | None = None,
) -> Run:
    """Record the decision on the approval a run waits for, and let the run continue. Called by
    the approvals app (and by tests); not audited here: the caller audits the decision.
    ``action_hash`` is what the approval binds (computed from the step when not given);
    ``executed`` the result of a tier-4 action its approver carried out. ``AlreadyDecided`` if it
    was decided before, or if the run does not wait for it (any more)."""
    run = _locked(run)
    step = Step.objects.select_for_update().filter(run=run, seq=step_seq, kind=StepKind.APPROVAL).first()
    if step is not None and step.status in (StepStatus.SUCCEEDED, StepStatus.FAILED):
        raise AlreadyDecided("This approval has already been decided.")
    if step is None or step.status != StepStatus.WAITING or run.status != RunStatus.WAITING_APPROVAL:
        raise AlreadyDecided(
            f"Run #{run.pk} does not wait for this approval: it is {run.get_status_display().lower()}."
        )
    _decide_approval_step(
        run,
        step,
        actor,
        approved=approved,
        reason=reason,
        edited_args=edited_args,
        action_hash=action_hash,
        executed=executed,
    )
    publish_run(run)
    return run


# --- The runtime's journal (system writes: run events, no audit rows) ------------------------

RUNTIME = Actor.system("runtime")


@transaction.atomic
def run_claim(*, run_id: int, owner: str) -> Run | None:
    """Take the run for execution (or for finishing a cancellation) if it is free to take:
    queued, or running with no live lease. Returns ``None`` when it is not."""
    run = (
        Run.objects.select_for_update(of=("self",))
        .select_related("agent", "team", "version")
        .filter(pk=run_id)
        .first()
    )
    if run is None or run.kind != RunKind.MANAGED or run.is_final:
        return None
    now = timezone.now()
    lease_free = (
        not run.lease_owner
        or run.lease_owner.startswith(REQUEUED)
        or (run.lease_expires_at is not None and run.lease_expires_at < now)
    )
    if run.status == RunStatus.QUEUED:
        if run.pause_requested:
            _carry_out(run, "pause", RunStatus.PAUSED, run.directive_reason or "paused before it started")
            publish_run(run)
            return None
        _save_transition(run, RunStatus.RUNNING, RUNTIME, "picked up by a worker")
    elif run.status == RunStatus.RUNNING:
        if not lease_free:
            return None
        lost = _lost_worker(run.lease_owner)
        if lost:
            _event(
                run,
                RunEvent.Kind.NOTE,
                RUNTIME,
                f"resumed after worker loss: the worker executing this run ({lost}) stopped answering; "
                "another worker carries on from the journal",
                lost_worker=lost,
                worker=owner,
            )
    elif run.cancel_requested and lease_free:
        pass  # paused or waiting: a worker only finishes the cancellation
    else:
        return None
    run.lease_owner = owner
    run.lease_expires_at = now + timedelta(seconds=lease_seconds())
    run.executions += 1
    run.save(update_fields=["lease_owner", "lease_expires_at", "executions"])
    publish_run(run)
    return run


REQUEUED = "requeued:"


def _lost_worker(lease_owner: str) -> str:
    """The worker that held an expired lease: named by the lease itself, or by the sweeper's
    reservation that replaced it (``requeued:<time> lost:<worker>``)."""
    if not lease_owner.startswith(REQUEUED):
        return lease_owner
    return lease_owner.partition(" lost:")[2]


def _check_lease(run_id: int, owner: str) -> None:
    """This worker still holds the run (the heartbeat and each step's outcome renew the lease;
    here a read is enough)."""
    if not Run.objects.filter(pk=run_id, lease_owner=owner).exists():
        raise LeaseLost


def step_begin(
    *,
    run: Run,
    owner: str,
    seq: int,
    kind: str,
    name: str,
    input: dict[str, Any],
    existing: Step | None = None,
) -> Step:
    """Journal that a step is starting, before it has any effect (one INSERT). A step found
    already started — its worker died mid-step — starts again under the same idempotency key.

    Before a tool, this worker first checks that it still holds the run, so that it does not
    start an effect for a run another worker has taken over. (Were it to, the effect would
    happen once anyway — same key — and its outcome could not be journaled: the outcome's write
    is fenced by the lease.)"""
    if kind == StepKind.TOOL:
        _check_lease(run.pk, owner)
    if existing is not None:
        return existing
    step = Step.objects.create(
        run=run,
        seq=seq,
        kind=kind,
        name=name[:160],
        status=StepStatus.STARTED,
        input=json_safe(input),
        idempotency_key=f"{run.trace_id}:{seq}",
    )
    publish_run(run, "run.step", seq=seq)
    return step


OUTCOME_FIELDS = [
    "status",
    "output",
    "error",
    "provider",
    "model",
    "simulated",
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "cost",
    "ended_at",
    "attempts",
]


@transaction.atomic
def step_complete(
    *,
    run: Run,
    owner: str,
    step: Step,
    status: str,
    output: Any = None,
    error: str = "",
    provider: str = "",
    model: str = "",
    simulated: bool = False,
    tokens_in: int = 0,
    tokens_out: int = 0,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_tokens: int = 0,
    input_audio_tokens: int = 0,
    output_audio_tokens: int = 0,
    cost: Decimal | None = None,
) -> Step:
    """Journal a step's outcome and add its usage to the run's totals."""
    step.status = status
    step.output = json_safe(output)
    step.error = error[:4000]
    step.provider, step.model, step.simulated = provider, model, simulated
    step.tokens_in, step.tokens_out = tokens_in, tokens_out
    step.cached_tokens, step.reasoning_tokens = cached_tokens, reasoning_tokens
    step.cache_write_tokens = cache_write_tokens
    step.input_audio_tokens, step.output_audio_tokens = input_audio_tokens, output_audio_tokens
    step.cost = cost
    step.ended_at = timezone.now()
    _add_to_run(run, owner, step)
    step.save(update_fields=OUTCOME_FIELDS)  # not the input again (an LLM step's may be large)
    _after_step(run, step)
    return step


@transaction.atomic
def step_record(*, run: Run, owner: str, seq: int, kind: str, name: str, input: dict[str, Any], output: Any) -> Step:
    """Journal an instant step (a decision, a checkpoint) in one go: it has no effect to guard."""
    now = timezone.now()
    step = Step(
        run=run,
        seq=seq,
        kind=kind,
        name=name[:160],
        status=StepStatus.SUCCEEDED,
        input=json_safe(input),
        output=json_safe(output),
        idempotency_key=f"{run.trace_id}:{seq}",
        attempts=1,
        started_at=now,
        ended_at=now,
    )
    _add_to_run(run, owner, step)
    step.save(force_insert=True)
    _after_step(run, step)
    return step


def _add_to_run(run: Run, owner: str, step: Step) -> None:
    """One statement renews the lease (proving the run is still this worker's), adds the step to
    the run's totals and reads back the run's directives, which the runtime checks before its
    next step (sparing it a query). Nothing is written if another worker has taken the run over."""
    assert step.ended_at is not None
    run_table, agent_table = Run._meta.db_table, Agent._meta.db_table
    expires = step.ended_at + timedelta(seconds=lease_seconds())
    unpriced = 1 if step.cost is None and step.kind == StepKind.LLM else 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {run_table}
               SET lease_expires_at = %s, updated_at = %s, tokens_in = tokens_in + %s,
                   tokens_out = tokens_out + %s, cost = cost + %s, unpriced_steps = unpriced_steps + %s,
                   step_count = step_count + 1
               WHERE id = %s AND lease_owner = %s
               RETURNING pause_requested, cancel_requested, directive_reason, overrides, cost,
                   (SELECT status FROM {agent_table} a WHERE a.id = {run_table}.agent_id),
                   (SELECT status_reason FROM {agent_table} a WHERE a.id = {run_table}.agent_id)""",
            [
                expires,
                step.ended_at,
                step.tokens_in,
                step.tokens_out,
                step.cost or Decimal(0),
                unpriced,
                run.pk,
                owner,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        raise LeaseLost
    overrides = row[3] if isinstance(row[3], dict) else json.loads(row[3] or "{}")
    run.directives = {  # type: ignore[attr-defined]
        "lease_owner": owner,
        "pause_requested": bool(row[0]),
        "cancel_requested": bool(row[1]),
        "directive_reason": row[2],
        "overrides": overrides,
        "cost": Decimal(str(row[4])).quantize(Decimal("0.000001")),
        "agent__status": row[5],
        "agent__status_reason": row[6],
    }


def _after_step(run: Run, step: Step) -> None:
    from fleet import telemetry

    transaction.on_commit(lambda: telemetry.emit_step(run, step))  # queued for the span store
    publish_run(run, "run.step", seq=step.seq)


@transaction.atomic
def approval_step_request(
    *,
    run: Run,
    owner: str,
    seq: int,
    name: str,
    input: dict[str, Any],
    tool: ToolSpec | None,
    args: dict[str, Any],
    context: ActionContext,
    decision: GateDecision,
    existing: Step | None = None,
) -> Step:
    """Journal an approval step, ask the approval gate about the action and, unless it decides
    at once, park the run in ``waiting_approval``. One transaction: a worker dying anywhere on
    the way leaves all of it (the run waits for its one request) or none of it (the run is still
    running, and whoever takes it over asks again) — never a step, a request and a run that
    disagree. ``existing`` is a step journaled but never asked about (by an older release).
    Returns the step: waiting, or decided at once."""
    from fleet import seams

    locked = _locked(run)  # the run first, as every writer of a run locks it
    if locked.lease_owner != owner:
        raise LeaseLost
    if locked.cancel_requested:  # not parked with a cancellation nobody would finish
        raise CancelRun(locked.directive_reason or "cancelled")
    step = step_begin(run=run, owner=owner, seq=seq, kind=StepKind.APPROVAL, name=name, input=input, existing=existing)
    kill_point("approval.before_request")
    outcome = seams.current.approval_gate.request(
        run=run, step=step, tool=tool, args=args, context=context, decision=decision
    )
    kill_point("approval.after_request")
    if outcome is not None:
        return step_complete(
            run=run,
            owner=owner,
            step=step,
            status=StepStatus.SUCCEEDED if outcome.approved else StepStatus.FAILED,
            output={
                "approved": outcome.approved,
                "decided_by": outcome.decided_by,
                "reason": outcome.reason,
                "edited_args": outcome.edited_args,
                **({} if outcome.approved else {"error_type": "ActionRejected"}),
            },
            error="" if outcome.approved else f"rejected by {outcome.decided_by}: {outcome.reason}",
        )
    step.status = StepStatus.WAITING
    step.save(update_fields=["status"])
    locked.lease_owner, locked.lease_expires_at = "", None
    _save_transition(locked, RunStatus.WAITING_APPROVAL, RUNTIME, f"waiting for approval: {decision.reason}")
    publish_run(locked)
    return step


@transaction.atomic
def step_note(*, step: Step, error: str) -> None:
    """Record why an unfinished step could not go on (it is retried when the run resumes)."""
    Step.objects.filter(pk=step.pk).update(error=error[:4000], attempts=step.attempts)
    step.error = error


@transaction.atomic
def step_refuse(*, run: Run, owner: str, step: Step, error: str, output: dict[str, Any]) -> Step:
    """The runtime refuses to carry a step out (its approval does not cover it): the step fails
    with ``error``, and the refusal is audited."""
    step = step_complete(run=run, owner=owner, step=step, status=StepStatus.FAILED, output=output, error=error)
    audit_record(
        actor=RUNTIME,
        action="step.refuse",
        obj=run,
        team=run.team,
        after={"step": step.seq, "tool": step.name, **output},
        reason=error,
    )
    return step


@transaction.atomic
def run_release(
    *,
    run: Run,
    owner: str,
    status: str | None = None,
    reason: str = "",
    requeue: bool = False,
    result: Any = None,
    error: str = "",
) -> Run:
    """The executor is done with the run for now: park it (paused / waiting for approval), end it
    (succeeded / failed / cancelled), or hand it on to a fresh task (``requeue``)."""
    locked = Run.objects.select_for_update(of=("self",)).select_related("agent", "team", "version").get(pk=run.pk)
    if locked.lease_owner != owner:
        raise LeaseLost
    locked.lease_owner, locked.lease_expires_at = "", None
    if result is not None:
        locked.result = json_safe(result)
    if error:
        locked.error = error[:4000]
    if status is not None and status != locked.status:
        if status == RunStatus.PAUSED and locked.pause_requested:
            _carry_out(locked, "pause", status, reason)
        elif status == RunStatus.CANCELLED and locked.cancel_requested:
            _carry_out(locked, "cancel", status, reason)
        else:
            _save_transition(locked, status, RUNTIME, reason)
    else:
        locked.save()
    if requeue:
        _enqueue(locked)
    publish_run(locked)
    if locked.is_final:
        from fleet import telemetry

        transaction.on_commit(lambda: telemetry.emit_run(locked))
    return locked


def pending_compensations(run: Run) -> list[Step]:
    """Succeeded side effects whose tool has a compensation that has not run yet, newest first."""
    from fleet.runtime import registry

    steps = list(run.steps.filter(kind=StepKind.TOOL).order_by("seq"))
    done = {s.compensates for s in steps if s.compensates is not None and s.status == StepStatus.SUCCEEDED}
    pending = []
    for step in steps:
        if step.status != StepStatus.SUCCEEDED or step.compensates is not None or step.seq in done:
            continue
        try:
            spec = registry.get_tool(step.name)
        except LookupError:
            continue
        if spec.side_effect and spec.compensation:
            pending.append(step)
    return list(reversed(pending))


# --- External runs ----------------------------------------------------------------------------

EXTERNAL_FINAL = {
    "succeeded": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
}


def _approval_mismatch(run: Run, name: str, report: dict[str, Any]) -> dict[str, Any] | None:
    """An external agent's step reported with ``approval_hash``: ``None`` when the tool and input
    it reports are exactly what a decision of the run's team approved, else why not."""
    from fleet import seams

    claimed = report.get("approval_hash")
    if not claimed:
        return None
    actual = compute_action_hash(name, report.get("input") or {})
    if actual != claimed:
        return {"why": "the reported tool and input are not what was approved", "action_hash": actual}
    if not seams.current.approval_gate.approved(team_id=run.team_id, action_hash=claimed):
        return {"why": "no approval of this team carries this hash", "action_hash": actual}
    return None


@transaction.atomic
def run_report(*, actor: Actor, run: Run, report: dict[str, Any]) -> Run:
    """An external agent reports a step it took, or how the run ended."""
    run = _locked(run)
    if run.kind != RunKind.EXTERNAL:
        raise ValidationError("Only external runs report their own progress.")
    if run.is_final:
        raise ValidationError(f"This run has already {run.get_status_display().lower()}.")
    kind = report.get("type")
    if kind == "step":
        step_kind = report.get("kind", StepKind.TOOL)
        if step_kind not in StepKind.values:
            raise ValidationError({"kind": f"A step kind is one of {', '.join(StepKind.values)}."})
        status = report.get("status", StepStatus.SUCCEEDED)
        if status not in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.STARTED):
            raise ValidationError({"status": "A step is started, succeeded or failed."})
        seq = (run.steps.order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
        cost = report.get("cost")
        now = timezone.now()
        name = str(report.get("name", step_kind))[:160]
        output, error = report.get("output"), str(report.get("error", ""))
        refusal = _approval_mismatch(run, name, report)
        if refusal is not None:
            status, error = StepStatus.FAILED, f"approval does not match the action: {refusal['why']}"
            output = {"error_type": "ApprovalMismatch", "reported_status": report.get("status"), **refusal}
        Step.objects.create(
            run=run,
            seq=seq,
            kind=step_kind,
            name=name,
            status=status,
            input=json_safe(report.get("input") or {}),
            output=json_safe(output),
            error=error[:4000],
            model=str(report.get("model", ""))[:160],
            tokens_in=int(report.get("tokens_in") or 0),
            tokens_out=int(report.get("tokens_out") or 0),
            cost=Decimal(str(cost)) if cost is not None else None,
            idempotency_key=f"{run.trace_id}:{seq}",
            started_at=now - timedelta(seconds=float(report.get("duration_seconds") or 0)),
            ended_at=now,
            attempts=1,
        )
        # The step keeps the usage the agent reports; the run's totals are its spans' (as
        # stored: ``runs_add_span_usage``), the figure FinOps and budgets count, never both.
        Run.objects.filter(pk=run.pk).update(step_count=F("step_count") + 1, updated_at=now)
        if refusal is not None:
            audit_record(actor=actor, action="step.refuse", obj=run, after={"step": seq, **refusal}, reason=error)
            run.refused = error  # type: ignore[attr-defined]
        publish_run(run, "run.step", seq=seq)
        return run
    if kind == "status":
        status = EXTERNAL_FINAL.get(report.get("status", ""))
        if status is None:
            raise ValidationError({"status": "Report the end as succeeded, failed or cancelled."})
        run.error = str(report.get("error", ""))[:4000]
        if "result" in report:
            run.result = json_safe(report["result"])
        _save_transition(run, status, actor, str(report.get("reason", "reported by the agent")))
        publish_run(run)
        from fleet import telemetry

        transaction.on_commit(lambda: telemetry.emit_run(run))
        return run
    raise ValidationError({"type": 'A report is {"type": "step", …} or {"type": "status", …}.'})


# --- Sweeper ----------------------------------------------------------------------------------


def runs_to_recover(*, now: Any = None, grace_seconds: int = 20, limit: int = 500) -> list[int]:
    """Claim, for re-enqueueing, runs no worker is executing: running with an expired (or no)
    lease, queued for too long, or cancelled while parked. Each is reserved (``requeued:``) so
    that the next sweep does not enqueue it again before that lease runs out."""
    from django.db.models import Q

    now = now or timezone.now()
    grace = now - timedelta(seconds=grace_seconds)
    stale_lease = Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True, updated_at__lt=grace)
    candidates = (
        Run.objects.filter(kind=RunKind.MANAGED)
        .filter(
            Q(status=RunStatus.RUNNING) & stale_lease
            | Q(status=RunStatus.QUEUED, created_at__lt=grace) & stale_lease
            | Q(status__in=[RunStatus.PAUSED, RunStatus.WAITING_APPROVAL], cancel_requested=True) & stale_lease
        )
        .values_list("pk", "lease_owner", "lease_expires_at")[:limit]
    )
    reserved = []
    for pk, owner, expires in candidates:
        # The reservation keeps the name of a dead worker, for the takeover's note.
        lost = _lost_worker(owner)
        updated = Run.objects.filter(pk=pk, lease_owner=owner, lease_expires_at=expires).update(
            lease_owner=f"{REQUEUED}{now.isoformat()}{f' lost:{lost}' if lost else ''}"[:200],
            lease_expires_at=now + timedelta(seconds=lease_seconds()),
        )
        if updated:
            reserved.append(pk)
    return reserved


def runs_spans_reconcile(*, now: Any = None, settle_seconds: int = 5, limit: int = 200) -> int:
    """Re-emit the missing spans of managed runs that ended at least ``settle_seconds`` ago (time
    for their last batch to be stored) and whose traces are not known to be complete; mark each
    run whose trace now is. Returns how many were marked. Safe to run in several workers."""
    from fleet import telemetry

    now = now or timezone.now()
    due = (
        Run.objects.filter(kind=RunKind.MANAGED, ended_at__lt=now - timedelta(seconds=settle_seconds))
        .filter(spans_complete_at__isnull=True, ended_at__isnull=False)
        .select_related("team", "agent", "version")
        .order_by("ended_at")[:limit]
    )
    complete = [run.pk for run in due if telemetry.reconcile(run)]
    if complete:
        Run.objects.filter(pk__in=complete).update(spans_complete_at=now)
    return len(complete)


@transaction.atomic
def compensation_begin(*, run: Run, owner: str, seq: int, tool: str, original: Step) -> Step:
    """Journal the undoing of ``original`` (a compensation step) before it happens."""
    _check_lease(run.pk, owner)
    step = Step.objects.create(
        run=run,
        seq=seq,
        kind=StepKind.TOOL,
        name=tool[:160],
        status=StepStatus.STARTED,
        input=json_safe({"undo": original.seq, "args": original.input, "result": original.output}),
        idempotency_key=f"{run.trace_id}:{seq}",
        compensates=original.seq,
    )
    publish_run(run, "run.step", seq=seq)
    return step


# --- External runs' spend -------------------------------------------------------------------------


def runs_add_span_usage(*, usage: Mapping[int, Any]) -> None:
    """Add what stored spans used to their external runs (run pk -> ``traces.store.SpanUsage``),
    in the span store's transaction: an external run costs what its spans cost, the figure
    FinOps, budgets and the trace show. (A managed run's totals are its steps'.)"""
    for run_id in sorted(usage):
        spent = usage[run_id]
        Run.objects.filter(pk=run_id, kind=RunKind.EXTERNAL).update(
            tokens_in=F("tokens_in") + spent.tokens_in,
            tokens_out=F("tokens_out") + spent.tokens_out,
            cost=F("cost") + spent.cost,
            unpriced_steps=F("unpriced_steps") + spent.unpriced,
        )
