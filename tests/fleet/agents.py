"""Agents and tools used by the fleet tests (registered in every test process and in the worker
processes the tests start: see COCKPIT_AGENT_MODULES in the test environment)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from cockpit.audit import Actor
from fleet.runtime import ToolInvocation, TransientToolError, agent, tool
from fleet.runtime.context import LlmCall, RunContext, ToolCall
from fleet.sandbox.models import Refund

OPERATOR = Actor.system("test operator")


def _effect(invocation: ToolInvocation, label: str) -> dict[str, Any]:
    try:
        with transaction.atomic():
            row = Refund.objects.create(
                idempotency_key=invocation.idempotency_key,
                ticket_ref=label[:20],
                amount=Decimal("1.00"),
                currency="EUR",
            )
    except IntegrityError:
        row = Refund.objects.get(idempotency_key=invocation.idempotency_key)
    return {"effect": row.pk, "label": label}


@tool(
    "test.effect",
    side_effect=True,
    risk="low",
    compensation="test.undo",
    schema={"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}},
)
def test_effect(invocation: ToolInvocation, *, label: str) -> dict[str, Any]:
    return _effect(invocation, label)


@tool("test.undo", side_effect=True, risk="low")
def test_undo(invocation: ToolInvocation, *, args: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    Refund.objects.filter(pk=result["effect"], reversed_at__isnull=True).update(
        reversed_at=timezone.now(), reversal_key=invocation.idempotency_key
    )
    return {"undone": result["label"]}


@tool("test.slow_effect", side_effect=True, risk="low")
def test_slow_effect(invocation: ToolInvocation, *, label: str, seconds: float = 0.2) -> dict[str, Any]:
    time.sleep(seconds)  # a kill here leaves the step started, the effect not yet made
    result = _effect(invocation, label)
    time.sleep(seconds)  # a kill here leaves the effect made, the step not yet journaled
    return result


@tool("test.read", risk="low")
def test_read(invocation: ToolInvocation, **args: Any) -> dict[str, Any]:
    return {"echo": args, "key": invocation.idempotency_key}


@tool("test.flaky", risk="low")
def test_flaky(invocation: ToolInvocation, *, fail_times: int) -> dict[str, Any]:
    if invocation.attempt <= fail_times:
        raise TransientToolError(f"attempt {invocation.attempt} failed (503)")
    return {"attempts": invocation.attempt}


@tool("test.boom", risk="low")
def test_boom(invocation: ToolInvocation) -> None:
    raise ValueError("the CRM said no")


@tool("test.operator", risk="low")
def test_operator(invocation: ToolInvocation, *, action: str) -> dict[str, Any]:
    """Acts as an operator would while the run is mid-step."""
    from fleet import services
    from fleet.models import Run

    run = Run.objects.get(pk=invocation.run_id)
    if action == "pause":
        services.run_pause(actor=OPERATOR, run=run, reason="looks odd")
    elif action == "cancel":
        services.run_cancel(actor=OPERATOR, run=run, reason="wrong customer")
    return {"did": action}


@agent("test-linear")
def linear(run: RunContext, *, n: int = 3) -> dict[str, Any]:
    for i in range(n):
        run.checkpoint(f"stage {i}")
    return {"stages": n}


@agent("test-effects")
def effects(run: RunContext, *, action: str = "", labels: list[str] | None = None) -> dict[str, Any]:
    labels = labels or ["a", "b"]
    results = [run.tool("test.effect", label=label) for label in labels]
    if action:
        run.tool("test.operator", action=action)
    run.checkpoint("after the effects")
    results.append(run.tool("test.effect", label="last"))
    return {"effects": [r["effect"] for r in results]}


@agent("test-llm")
def llm_agent(run: RunContext, *, rounds: int = 1, model: str | None = None) -> dict[str, Any]:
    answers = []
    for i in range(rounds):
        answer = run.llm(f"ask {i}", messages=[{"role": "user", "content": f"question {i}"}], model=model)
        answers.append({"content": answer.content, "model": answer.model})
        if i == 0 and rounds > 1:
            run.tool("test.operator", action="pause")
    return {"answers": answers}


@agent("test-parallel")
def parallel_agent(run: RunContext) -> dict[str, Any]:
    results = run.parallel(
        [
            LlmCall("left", messages=[{"role": "user", "content": "left"}]),
            LlmCall("right", messages=[{"role": "user", "content": "right"}]),
            ToolCall("test.read", {"x": 1}),
            ToolCall("test.read", {"x": 2}),
        ]
    )
    return {
        "left": results[0].content,
        "right": results[1].content,
        "reads": [r["echo"]["x"] for r in results[2:]],
    }


@agent("test-approval")
def approval_agent(run: RunContext, *, label: str = "refund") -> dict[str, Any]:
    run.decision("refund", choice="refund", reasoning="the parcel arrived broken", confidence=0.7)
    try:
        effect = run.tool("test.effect", label=label)
    except Exception as exc:  # the agent's on-reject path
        from fleet.runtime import ActionRejected

        if not isinstance(exc, ActionRejected):
            raise
        run.checkpoint("told the customer no refund")
        return {"refunded": False, "why": exc.message}
    return {"refunded": True, "effect": effect["effect"]}


@agent("test-flaky")
def flaky_agent(run: RunContext, *, fail_times: int) -> dict[str, Any]:
    return run.tool("test.flaky", fail_times=fail_times)


@agent("test-boom")
def boom_agent(run: RunContext) -> None:
    run.tool("test.boom")


CHANGING: dict[str, int] = {"executions": 0}


@agent("test-nondeterministic")
def nondeterministic(run: RunContext) -> None:
    CHANGING["executions"] += 1
    run.checkpoint(f"stage {CHANGING['executions']}")
    run.tool("test.operator", action="pause")
    run.checkpoint("end")


@agent("test-chaos")
def chaos(run: RunContext, *, steps: int = 6) -> dict[str, Any]:
    made = [run.tool("test.slow_effect", label=f"c{run.id}-{i}", seconds=0.15)["effect"] for i in range(steps)]
    return {"effects": made}


@agent("test-bench")
def bench(run: RunContext, *, steps: int = 10) -> dict[str, Any]:
    """LLM steps one after the other (the benchmarks' workload)."""
    for i in range(steps):
        run.llm(f"step {i}", messages=[{"role": "user", "content": f"benchmark step {i}"}])
    return {"steps": steps}


@tool("test.db_down", risk="low")
def test_db_down(invocation: ToolInvocation) -> None:
    from django.db import OperationalError

    raise OperationalError("connection to server failed: the database is restarting")


@agent("test-db-down")
def db_down(run: RunContext) -> None:
    run.checkpoint("before")
    run.tool("test.db_down")


@tool(
    "test.refund",
    side_effect=True,
    risk="medium",
    schema={
        "type": "object",
        "required": ["ticket_id", "amount", "currency"],
        "properties": {
            "ticket_id": {"type": "string"},
            "amount": {"type": "string", "pattern": r"^\d+(\.\d{1,2})?$"},
            "currency": {"type": "string"},
        },
    },
)
def test_refund(invocation: ToolInvocation, *, ticket_id: str, amount: str, currency: str) -> dict[str, Any]:
    try:
        with transaction.atomic():
            row = Refund.objects.create(
                idempotency_key=invocation.idempotency_key,
                ticket_ref=ticket_id,
                amount=Decimal(amount),
                currency=currency,
            )
    except IntegrityError:
        row = Refund.objects.get(idempotency_key=invocation.idempotency_key)
    return {"refund": row.pk, "amount": str(row.amount)}


# What test-refund asks for after it was approved: the tests change it to play an agent that
# does not do on re-execution what it proposed (it must not get away with it).
REFUND_DRIFT: dict[str, str] = {}


@agent("test-refund")
def refund_agent(run: RunContext, *, ticket_id: str = "T-1", amount: str = "400.00") -> dict[str, Any]:
    run.decision("refund", choice="refund", reasoning="damaged in transit", confidence=0.9)
    amount = REFUND_DRIFT.get("amount", amount)
    try:
        done = run.tool("test.refund", ticket_id=ticket_id, amount=amount, currency="EUR")
    except Exception as exc:
        from fleet.runtime import ActionRejected

        if not isinstance(exc, ActionRejected):
            raise
        return {"refunded": False, "why": exc.message}
    return {"refunded": True, **done}
