"""Span rows for the trace explorer's tests and benchmarks, written straight to the store
(``traces.store.write``: the same path as OTLP ingest after decoding), so a trace of thousands of
spans is built in a moment.

``agent_trace`` builds what a busy support agent leaves behind: turns of LLM calls (with their
messages and cost), long runs of the same tool call, failures, an approval decided by a person
and an operator's pause.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from cockpit.models import Team
from traces import store
from traces.models import Trace

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def row(
    trace_id: str,
    name: str,
    *,
    span_id: str | None = None,
    parent: str = "",
    span_type: str = "other",
    start_ms: float = 0,
    duration_ms: float = 1,
    error: str = "",
    attributes: dict[str, Any] | None = None,
    model: str = "",
    provider: str = "",
    tokens: tuple[int | None, int | None] = (None, None),
    tool: str = "",
    agent: str = "",
    events: list[dict[str, Any]] | None = None,
    t0: datetime = T0,
    service: str = "support-bot",
) -> dict[str, Any]:
    """One normalised span row, as ``traces.normalise`` produces it."""
    start = t0 + timedelta(milliseconds=start_ms)
    return {
        "trace_id": trace_id,
        "span_id": span_id or new_span_id(),
        "parent_span_id": parent,
        "name": name,
        "kind": 1,
        "span_type": span_type,
        "start_time": start,
        "end_time": start + timedelta(milliseconds=duration_ms),
        "duration_us": int(duration_ms * 1000),
        "status_code": 2 if error else 0,
        "status_message": error,
        "error_type": "RuntimeError" if error else "",
        "service_name": service,
        "scope_name": "tests.explorer",
        "agent_key": agent,
        "agent_name": agent,
        "agent_version": "",
        "conversation_id": "",
        "model": model,
        "provider": provider,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cache_read_tokens": None,
        "reasoning_tokens": None,
        "cache_write_tokens": None,
        "input_audio_tokens": None,
        "output_audio_tokens": None,
        "tool_name": tool,
        "attributes": attributes or {},
        "events": events or [],
        "links": [],
        "resource": {"service.name": service},
        "truncated": False,
        "received_at": t0,
    }


def chat(trace_id: str, parent: str, start_ms: float, n: int, *, cost: float = 0.0021, **kw: Any) -> dict[str, Any]:
    question = f"Customer question {n}: where is order #{1000 + n}?"
    answer = f"Order #{1000 + n} left the warehouse yesterday; I will look up the carrier."
    return row(
        trace_id,
        "chat gpt-4o",
        parent=parent,
        span_type="llm",
        start_ms=start_ms,
        duration_ms=kw.pop("duration_ms", 900),
        model="gpt-4o",
        provider="openai",
        tokens=(812, 96),
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.input.messages": json.dumps(
                [
                    {"role": "system", "parts": [{"type": "text", "content": "You are the support desk."}]},
                    {"role": "user", "parts": [{"type": "text", "content": question}]},
                ]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}]
            ),
            "cockpit.cost_usd": cost,
        },
        **kw,
    )


def tool(trace_id: str, parent: str, start_ms: float, name: str, *, error: str = "", **kw: Any) -> dict[str, Any]:
    return row(
        trace_id,
        f"execute_tool {name}",
        parent=parent,
        span_type="tool",
        start_ms=start_ms,
        duration_ms=kw.pop("duration_ms", 40),
        tool=name,
        error=error,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.arguments": json.dumps({"order": 1042}),
            **({} if error else {"gen_ai.tool.call.result": json.dumps({"carrier": "DHL", "status": "in transit"})}),
        },
        **kw,
    )


def approval(
    trace_id: str, parent: str, start_ms: float, *, by: str = "Dana", minutes: float = 4, t0: datetime = T0
) -> dict[str, Any]:
    return row(
        trace_id,
        "approval payments.refund",
        parent=parent,
        span_type="approval",
        start_ms=start_ms,
        duration_ms=minutes * 60_000,
        t0=t0,
        attributes={
            "cockpit.step.kind": "approval",
            "cockpit.approval.input": json.dumps(
                {
                    "action": {"tool": "payments.refund", "args": {"amount": 80, "currency": "EUR"}},
                    "risk": "high",
                    "reasoning": "The parcel arrived broken; policy allows a refund.",
                    "confidence": 0.62,
                    "policy_reason": "refunds above €50 need a person",
                }
            ),
            "cockpit.approval.output": json.dumps(
                {"approved": True, "decided_by": by, "reason": "photo confirms the damage", "edited_args": None}
            ),
        },
    )


def operator(
    trace_id: str, parent: str, start_ms: float, *, action: str = "pause", by: str = "Oscar", t0: datetime = T0
) -> dict[str, Any]:
    return row(
        trace_id,
        f"operator {action}",
        parent=parent,
        span_type="operator",
        start_ms=start_ms,
        duration_ms=0,
        t0=t0,
        attributes={
            "cockpit.operator.action": action,
            "cockpit.operator.actor": by,
            "cockpit.reason": "customer called, hold on",
        },
    )


def agent_trace(
    team: Team, *, spans: int = 2000, lookups: int = 37, trace_id: str | None = None, t0: datetime = T0
) -> Trace:
    """A trace of about ``spans`` spans (at least ~50): turns of chat → ``lookups`` × lookup →
    update, with a failing tool call now and then, an approval and an operator's pause."""
    trace_id = trace_id or new_trace_id()
    root_id = new_span_id()
    rows: list[dict[str, Any]] = []
    at = 5.0
    turn = 0
    while len(rows) < spans - 1:
        turn_id = new_span_id()
        turn_start = at
        rows.append(chat(trace_id, turn_id, at + 1, turn, t0=t0))
        at += 905
        for k in range(lookups):
            rows.append(
                tool(trace_id, turn_id, at, "lookup", t0=t0, error="timeout" if k == 5 and turn % 3 == 0 else "")
            )
            at += 42
        rows.append(tool(trace_id, turn_id, at, "crm.update", t0=t0))
        at += 45
        if turn == 1:
            rows.append(approval(trace_id, turn_id, at, minutes=4, t0=t0))
            at += 4 * 60_000
            rows.append(operator(trace_id, turn_id, at + 5, t0=t0))
            at += 10
        rows.append(
            row(
                trace_id,
                f"turn {turn}",
                span_id=turn_id,
                parent=root_id,
                span_type="chain",
                start_ms=turn_start,
                duration_ms=at - turn_start,
                t0=t0,
            )
        )
        turn += 1
        at += 20
    rows.append(
        row(
            trace_id,
            "invoke_agent support-desk",
            span_id=root_id,
            span_type="agent",
            start_ms=0,
            duration_ms=at + 5,
            agent="support-desk",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support-desk"},
            t0=t0,
        )
    )
    store.write(team, rows, now=t0)
    return Trace.objects.get(team=team, trace_id=trace_id)
