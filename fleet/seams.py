"""Where the apps above fleet plug into the runtime (docs/architecture.md § Dependency direction).

The runtime asks three questions it cannot answer itself, and hands over what it emits:

* **approval gate** — may this action happen, and without a human? (approvals fills it);
* **budget guard** — is there budget left for the next step, and for this LLM call's worst case?
  (finops fills it);
* **pricer** — what did this model call cost? (finops fills it);
* **span sink** — where do the runtime's spans go? (traces fills it).

Each has a default that works on its own: side-effecting tools of tier 3–4 agents wait for a
human (an operator's resume counts as the approval; at tier 4 it cannot, as nobody records the
result of carrying the action out); a run stops at its own budget; simulated
models carry their made-up prices, real models are unpriced; spans are discarded. A higher
app replaces one with ``register(...)`` in its ``AppConfig.ready()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fleet.providers.base import Usage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from fleet.models import Run, Step
    from fleet.runtime.registry import ToolSpec


# --- Approval ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionContext:
    """Why the agent wants to act: taken from the decision (or LLM) step that preceded it."""

    reasoning: str = ""
    confidence: float | None = None
    decision_step: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the decision's data (amount, segment, …)


@dataclass(frozen=True)
class GateDecision:
    verdict: Literal["allow", "approve", "forbid"]
    reason: str = ""
    policy: str = ""  # which policy (and version) decided, for the record
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApprovalOutcome:
    approved: bool
    decided_by: str
    reason: str = ""
    edited_args: dict[str, Any] | None = None


class ApprovalGate(Protocol):
    def evaluate(self, *, run: Run, tool: ToolSpec, args: dict[str, Any], context: ActionContext) -> GateDecision: ...

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
        """Ask for a decision about the action journaled as ``step`` (an approval step). Return
        an outcome if it is decided at once, else ``None``: the run then waits, and whoever
        decides calls ``fleet.services.approval_step_decide``."""
        ...

    def withdraw(self, *, run: Run, step: Step, reason: str) -> None:
        """The run no longer waits for this decision (it was cancelled)."""
        ...

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
        """An action allowed unattended was chosen (``decision.data["review"]``) for a human to
        review afterwards; ``step`` is the tool step that made it."""
        ...

    def approved(self, *, team_id: int, action_hash: str) -> bool:
        """Whether a decision of the team approved the action with this hash (an external
        agent's execution report names it)."""
        ...


class InterimApprovalGate:
    """Side-effecting tools of tier 3–4 agents need a human; an operator's resume approves."""

    resume_approves = True

    def evaluate(self, *, run: Run, tool: ToolSpec, args: dict[str, Any], context: ActionContext) -> GateDecision:
        if tool.side_effect and run.agent.tier >= 3:
            return GateDecision(
                "approve",
                reason=f"{tool.name} changes something and the agent is tier {run.agent.tier}",
            )
        return GateDecision("allow")

    def request(self, **kwargs: Any) -> ApprovalOutcome | None:
        return None

    def withdraw(self, **kwargs: Any) -> None:
        return None

    def review(self, **kwargs: Any) -> None:
        return None

    def approved(self, *, team_id: int, action_hash: str) -> bool:
        return False  # no approvals app: no decision to vouch for it


# --- Budget -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetVerdict:
    verdict: Literal["ok", "pause", "degrade"]
    reason: str = ""
    model: str = ""  # for "degrade": the cheaper "provider/model" to use from now on


class Reservation(Protocol):
    """An LLM call's worst-case cost held against the budgets covering its run, or the verdict
    that refused it. Settled once (``settle`` with the real cost, or ``release`` when no call
    was made); a second settle or release does nothing."""

    verdict: BudgetVerdict

    def settle(self, cost: Decimal | None) -> None: ...

    def release(self) -> None: ...


class BudgetGuard(Protocol):
    def check(self, *, run: Run, step_kind: str) -> BudgetVerdict:
        """Before every step: may the run go on at all?"""
        ...

    def reserve(self, *, run: Run, owner: str, seq: int, amount: Decimal, degraded: bool = False) -> Reservation:
        """Before an LLM call: hold ``amount`` (the call's worst case) against every budget that
        covers the run, atomically; ``owner`` holds the run's lease (the reservation counts only
        while it does). ``degraded``: the run already uses the cheaper model a budget asked for."""
        ...


@dataclass
class NoReservation:
    verdict: BudgetVerdict = field(default_factory=lambda: BudgetVerdict("ok"))

    def settle(self, cost: Decimal | None) -> None:
        return None

    def release(self) -> None:
        return None


class RunBudgetGuard:
    """A run stops when its cost reaches its own budget (the version's, or an override). The
    runtime itself reserves each LLM call's worst case against that budget (one worker runs a
    run, so it keeps that count in memory); this guard has nothing else to reserve against."""

    def reserve(self, *, run: Run, owner: str, seq: int, amount: Decimal, degraded: bool = False) -> Reservation:
        return NoReservation()

    def check(self, *, run: Run, step_kind: str) -> BudgetVerdict:
        budget = run.effective_budget
        if budget is not None and run.cost >= budget:
            return BudgetVerdict(
                "pause",
                reason=f"budget_exceeded: this run has cost ${run.cost:.4f} of its ${budget:.4f}",
            )
        return BudgetVerdict("ok")


# --- Prices -----------------------------------------------------------------------------------


class Pricer(Protocol):
    def price(self, *, provider_system: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
        """The cost in USD of a call made at ``at`` (default: now), or ``None`` when the model
        has no known price (shown as unpriced)."""
        ...


class SimulatedPricer:
    def price(self, *, provider_system: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
        if provider_system != "simulated":
            return None
        from fleet.providers.simulated import simulated_price

        return simulated_price(model, usage)


# --- Spans ------------------------------------------------------------------------------------


class SpanSink(Protocol):
    def write(self, spans: Sequence[ReadableSpan]) -> None: ...

    def stored_span_ids(self, run: Run) -> set[str] | None:
        """Ids (hex) of the run's spans the sink holds; ``None`` if it cannot tell."""
        ...


class DiscardSpans:
    """Without a trace store installed, runtime spans are not kept (the run's journal is)."""

    def write(self, spans: Sequence[ReadableSpan]) -> None:
        return None

    def stored_span_ids(self, run: Run) -> set[str] | None:
        return None


# --- Registration -----------------------------------------------------------------------------


@dataclass
class _Seams:
    approval_gate: ApprovalGate
    budget_guard: BudgetGuard
    pricer: Pricer
    span_sink: SpanSink


current = _Seams(
    approval_gate=InterimApprovalGate(),
    budget_guard=RunBudgetGuard(),
    pricer=SimulatedPricer(),
    span_sink=DiscardSpans(),
)


def register(
    *,
    approval_gate: ApprovalGate | None = None,
    budget_guard: BudgetGuard | None = None,
    pricer: Pricer | None = None,
    span_sink: SpanSink | None = None,
) -> None:
    """Replace one or more seams (call from ``AppConfig.ready()``)."""
    if approval_gate is not None:
        current.approval_gate = approval_gate
    if budget_guard is not None:
        current.budget_guard = budget_guard
    if pricer is not None:
        current.pricer = pricer
    if span_sink is not None:
        current.span_sink = span_sink
