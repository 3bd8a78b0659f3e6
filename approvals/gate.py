"""The approval gate the runtime asks before every side-effecting step (fleet's seam), backed
by Cedar policy and approval requests."""

from __future__ import annotations

from typing import Any

from approvals import cedar
from approvals.models import ApprovalKind, ApprovalRequest, ApprovalStatus
from approvals.services import SYSTEM, approval_request_create, approval_withdraw, judge, sample_number
from fleet.models import Run, Step
from fleet.runtime.registry import ToolSpec
from fleet.seams import ActionContext, ApprovalOutcome, GateDecision


class CedarApprovalGate:
    # A waiting run is approved in the approvals queue, not by an operator's resume.
    resume_approves = False

    def evaluate(self, *, run: Run, tool: ToolSpec, args: dict[str, Any], context: ActionContext) -> GateDecision:
        sample = sample_number(run.trace_id, tool.name, sorted(args.items()))
        ctx = cedar.context_for(args=args, confidence=context.confidence, extra=context.data, sample=sample)
        verdict, policies = judge(
            team=run.team, agent=run.agent, tool=tool.name, risk=tool.risk, side_effect=tool.side_effect, context=ctx
        )
        data = {
            "policies": [p.ref for p in policies],
            "policy_ids": [p.pk for p in policies],
            "context": ctx,
            # What an edit of the arguments is judged with, besides the arguments themselves.
            "extra": context.data,
            "side_effect": tool.side_effect,
            "level": verdict.level,
            "explain": verdict.explain(),
            "errors": verdict.errors,
        }
        if not verdict.allowed:
            return GateDecision(
                "forbid", reason=verdict.explain(), policy=", ".join(verdict.forbidden_by) or "(no permit)", data=data
            )
        if not verdict.unattended:
            rules = ", ".join(verdict.needs_human_by) or f"tier {run.agent.tier}"
            return GateDecision("approve", reason=verdict.explain(), policy=rules, data=data)
        review = run.agent.tier == 2 and sample < cedar.REVIEW_SAMPLE_PCT
        return GateDecision(
            "allow", reason=verdict.explain(), policy=", ".join(verdict.permitted_by), data={**data, "review": review}
        )

    def request(
        self,
        *,
        run: Run,
        step: Step,
        tool: ToolSpec | None,
        args: dict[str, Any],
        context: ActionContext,
        decision: GateDecision,
    ) -> ApprovalOutcome | None:
        # Asked again about a step already asked about (its worker died in between, under an
        # older release): the one request stands, pending or decided.
        earlier = ApprovalRequest.objects.filter(run=run, step_seq=step.seq, kind=ApprovalKind.APPROVAL).first()
        if earlier is not None:
            return None if earlier.is_pending else _outcome_of(earlier)
        approval_request_create(
            actor=SYSTEM,
            agent=run.agent,
            run=run,
            step_seq=step.seq,
            action=tool.name if tool else step.name,
            arguments=args,
            reasoning=context.reasoning,
            confidence=context.confidence,
            reasoning_step=context.decision_step,
            risk=tool.risk if tool else "medium",
            policy_decision={"reason": decision.reason, "rules": decision.policy, **decision.data},
            policy=_policy_of(decision),
            level=int(decision.data.get("level") or 1),
            manual=bool(step.input.get("manual")),
        )
        return None  # the run waits; approval_decide lets it go on

    def withdraw(self, *, run: Run, step: Step, reason: str) -> None:
        request = ApprovalRequest.objects.filter(run=run, step_seq=step.seq, status=ApprovalStatus.PENDING).first()
        if request is not None:
            approval_withdraw(actor=SYSTEM, request=request, reason=reason)

    def review(
        self,
        *,
        run: Run,
        step: Step,
        tool: ToolSpec,
        args: dict[str, Any],
        context: ActionContext,
        decision: GateDecision,
    ) -> None:
        approval_request_create(
            actor=SYSTEM,
            agent=run.agent,
            run=run,
            step_seq=step.seq,
            action=tool.name,
            arguments=args,
            reasoning=context.reasoning,
            confidence=context.confidence,
            reasoning_step=context.decision_step,
            risk=tool.risk,
            kind=ApprovalKind.REVIEW,
            policy_decision={"reason": "sampled for review after the fact", "rules": decision.policy, **decision.data},
            policy=_policy_of(decision),
        )

    def approved(self, *, team_id: int, action_hash: str) -> bool:
        return ApprovalRequest.objects.filter(
            team_id=team_id,
            action_hash=action_hash,
            status__in=[ApprovalStatus.APPROVED, ApprovalStatus.APPROVED_WITH_EDITS],
        ).exists()


def _outcome_of(request: ApprovalRequest) -> ApprovalOutcome:
    approved = request.status in (ApprovalStatus.APPROVED, ApprovalStatus.APPROVED_WITH_EDITS)
    return ApprovalOutcome(
        approved=approved,
        decided_by=request.decided_by_label or "the system",
        reason=request.decision_reason,
        edited_args=request.edited_arguments if approved else None,
    )


def _policy_of(decision: GateDecision) -> Any:
    from approvals.models import Policy

    ids = decision.data.get("policy_ids") or []
    return Policy.objects.filter(pk=ids[-1]).first() if ids else None
