"""Realistic traces for the narrative, incident and export tests.

``managed_refund`` journals a refund run the way the runtime does (steps with their inputs and
outputs, an approval decided by a person, operator actions through fleet's services) and emits
its spans through ``fleet.telemetry`` into the span store: the spans are exactly those a
managed run produces. The clock is frozen at each step, so durations are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import time_machine
from django.db import transaction
from django.test import TestCase

from cockpit.audit import Actor
from cockpit.models import Team
from fleet import services as fleet_services
from fleet import telemetry
from fleet.models import Agent, AgentKind, Run, RunEvent, RunStatus, Step, StepKind, StepStatus
from traces.models import Span, Trace

T0 = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
SYSTEM = Actor.system("tests")


@dataclass
class Story:
    run: Run
    trace: Trace

    @property
    def spans(self) -> list[Span]:
        return list(Span.objects.filter(team_id=self.trace.team_id, trace_id=self.trace.trace_id))


class _Journal:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.seq = 0

    def step(
        self,
        kind: str,
        name: str,
        start: float,
        end: float,
        *,
        input: dict[str, Any] | None = None,
        output: Any = None,
        status: str = StepStatus.SUCCEEDED,
        error: str = "",
        attempts: int = 1,
        **fields: Any,
    ) -> Step:
        self.seq += 1
        step = Step.objects.create(
            run=self.run,
            seq=self.seq,
            kind=kind,
            name=name,
            status=status,
            input=input or {},
            output=output,
            error=error,
            attempts=attempts,
            idempotency_key=f"{self.run.trace_id}:{self.seq}",
            started_at=T0 + timedelta(seconds=start),
            ended_at=T0 + timedelta(seconds=end),
            **fields,
        )
        telemetry.emit_step(self.run, step)
        return step


def refund_agent(team: Team, name: str = "Refund desk") -> Agent:
    existing = Agent.objects.filter(team=team, slug="refund-desk").first()
    if existing is not None:
        return existing
    return fleet_services.agent_create(actor=SYSTEM, team=team, slug="refund-desk", name=name, kind=AgentKind.EXTERNAL)


def managed_refund(
    team: Team,
    *,
    approved: bool = True,
    decided_by: str = "dana",
    wait_seconds: float = 240,
    operator: Actor | None = None,
    refund_error: str = "",
    refund_attempts: int = 1,
) -> Story:
    """Refund desk on ticket T-1042: read the ticket, ask the model, decide to refund €80
    (confidence 0.62), approval required by policy refunds-over-50, decided after
    ``wait_seconds``, then refund and email (or end rejected). With ``operator``, the run is
    paused before the approval and resumed after it. With ``refund_error``, the refund fails
    after ``refund_attempts`` attempts and the run fails."""
    agent = refund_agent(team)
    with time_machine.travel(T0, tick=False):
        run, _ = fleet_services.run_create(actor=SYSTEM, agent=agent, input={"ticket_id": "T-1042"}, managed=False)
        Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, started_at=T0)
        run.refresh_from_db()
    with transaction.atomic():
        journal = _Journal(run)
        journal.step(
            StepKind.TOOL,
            "crm.get_ticket",
            0.1,
            0.4,
            input={"ticket_id": "T-1042"},
            output={"ticket_id": "T-1042", "subject": "Parcel arrived broken", "order_total": "80.00"},
        )
        journal.step(
            StepKind.LLM,
            "decide",
            0.5,
            2.5,
            input={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "Ticket T-1042 …"}]},
            output={"content": '{"action": "refund", "amount": "80.00"}', "response_model": "gpt-4o"},
            provider="openai",
            model="openai/gpt-4o",
            tokens_in=1100,
            tokens_out=134,
            cost=Decimal("0.0041"),
        )
        journal.step(
            StepKind.DECISION,
            "refund or reply",
            2.6,
            2.6,
            input={"choice": "refund"},
            output={
                "choice": "refund",
                "reasoning": "The parcel arrived broken; the policy refunds the full order total.",
                "confidence": 0.62,
                "data": {"amount": "80.00", "currency": "EUR"},
            },
        )
    if operator is not None:
        with (
            time_machine.travel(T0 + timedelta(seconds=2.7), tick=False),
            TestCase.captureOnCommitCallbacks(execute=True),
        ):
            fleet_services.run_pause(actor=operator, run=run, reason="checking the refund amount")
    approval_start, approval_end = 2.8, 2.8 + wait_seconds
    args = {"ticket_id": "T-1042", "amount": "80.00", "currency": "EUR"}
    with transaction.atomic():
        journal.step(
            StepKind.APPROVAL,
            "approve payments.refund",
            approval_start,
            approval_end,
            input={
                "action": {"tool": "payments.refund", "args": args},
                "risk": "high",
                "side_effect": True,
                "reasoning": "The parcel arrived broken.",
                "confidence": 0.62,
                "reasoning_step": 3,
                "policy": "refunds-over-50",
                "policy_reason": "a human must decide (refunds-over-50)",
                "policy_data": {"policies": ["support v2"]},
            },
            output={
                "approved": approved,
                "decided_by": decided_by,
                "reason": "" if approved else "The photos show no damage.",
                "edited_args": None,
            },
            status=StepStatus.SUCCEEDED if approved else StepStatus.FAILED,
            error="" if approved else f"rejected by {decided_by}: The photos show no damage.",
        )
        RunEvent.objects.create(
            run=run,
            at=T0 + timedelta(seconds=approval_end),
            kind=RunEvent.Kind.APPROVAL,
            actor_label=decided_by,
            reason="" if approved else "The photos show no damage.",
            data={"step": journal.seq, "approved": approved, "waited_seconds": wait_seconds},
        )
    if operator is not None:
        with (
            time_machine.travel(T0 + timedelta(seconds=approval_end + 0.05), tick=False),
            TestCase.captureOnCommitCallbacks(execute=True),
        ):
            fleet_services.run_resume(actor=operator, run=run, reason="")
    t = approval_end + 0.1
    status, error = RunStatus.SUCCEEDED, ""
    with transaction.atomic():
        if not approved:
            status, error = RunStatus.FAILED, "ActionRejected: rejected by dana: The photos show no damage."
        elif refund_error:
            journal.step(
                StepKind.TOOL,
                "payments.refund",
                t,
                t + 3,
                input=args,
                output={"error_type": "TimeoutError"},
                status=StepStatus.FAILED,
                error=refund_error,
                attempts=refund_attempts,
            )
            status, error = RunStatus.FAILED, f"payments.refund: {refund_error}"
            t += 3
        else:
            journal.step(
                StepKind.TOOL,
                "payments.refund",
                t,
                t + 0.6,
                input=args,
                output={"refund_id": 9, "amount": "80.00", "currency": "EUR"},
                attempts=refund_attempts,
            )
            journal.step(
                StepKind.LLM,
                "write reply",
                t + 0.7,
                t + 2.0,
                input={"model": "openai/gpt-4o", "messages": []},
                output={"content": "We have refunded your order.", "response_model": "gpt-4o"},
                provider="openai",
                model="openai/gpt-4o",
                tokens_in=310,
                tokens_out=88,
                cost=Decimal("0.0012"),
            )
            journal.step(
                StepKind.TOOL,
                "email.send",
                t + 2.1,
                t + 2.3,
                input={"to": "jane@example.com", "subject": "Re: Parcel arrived broken", "body": "…"},
                output={"message_id": 4},
            )
            t += 2.4
        Run.objects.filter(pk=run.pk).update(
            status=status,
            error=error,
            ended_at=T0 + timedelta(seconds=t),
            tokens_in=1410,
            tokens_out=222,
            cost=Decimal("0.0053"),
        )
        run.refresh_from_db()
        telemetry.emit_run(run)
    telemetry.flush()
    return Story(run=run, trace=Trace.objects.get(team=team, trace_id=run.trace_id))
