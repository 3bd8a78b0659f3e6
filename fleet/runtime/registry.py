"""Managed agents and tools are Python functions registered by name.

    @agent("refund-desk", title="Refund desk")
    def refund_desk(run, *, ticket_id: str) -> dict: ...

    @tool("payments.refund", side_effect=True, risk="high", compensation="payments.refund_reverse",
          schema={"type": "object", "required": ["amount"], ...})
    def refund(call: ToolInvocation, *, amount: str, ticket_id: str) -> dict: ...

Modules that define them are listed in ``settings.COCKPIT_AGENT_MODULES`` and imported when the
fleet app is ready. ``tools_sync`` mirrors the tool registry into the ``Tool`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_agents: dict[str, AgentSpec] = {}
_tools: dict[str, ToolSpec] = {}


@dataclass(frozen=True)
class AgentSpec:
    name: str
    fn: Callable[..., Any]
    title: str
    description: str


@dataclass(frozen=True)
class ToolInvocation:
    """What a tool function receives besides its arguments."""

    run_id: int
    step_seq: int
    attempt: int  # 1 for the first call of this step, 2 for its first retry, …
    # Derived from (run, step): the same on every retry of this step, different for any other.
    # Side-effecting tools must make the effect happen at most once per key.
    idempotency_key: str
    timeout: float


@dataclass(frozen=True)
class ToolSpec:
    name: str
    fn: Callable[..., Any]
    description: str = ""
    side_effect: bool = False
    risk: str = "low"
    idempotent: bool = True
    timeout: float = 30.0
    schema: dict[str, Any] = field(default_factory=dict)
    compensation: str = ""


def agent(name: str, *, title: str = "", description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _agents and _agents[name].fn is not fn:
            raise ValueError(f"agent {name!r} is registered twice")
        _agents[name] = AgentSpec(
            name=name,
            fn=fn,
            title=title or name,
            description=description or (fn.__doc__ or "").strip(),
        )
        return fn

    return register


def tool(
    name: str,
    *,
    description: str = "",
    side_effect: bool = False,
    risk: str = "low",
    idempotent: bool = True,
    timeout: float = 30.0,
    schema: dict[str, Any] | None = None,
    compensation: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if risk not in {"low", "medium", "high", "critical"}:
        raise ValueError(f"tool {name!r}: risk must be low, medium, high or critical")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _tools and _tools[name].fn is not fn:
            raise ValueError(f"tool {name!r} is registered twice")
        _tools[name] = ToolSpec(
            name=name,
            fn=fn,
            description=description or (fn.__doc__ or "").strip(),
            side_effect=side_effect,
            risk=risk,
            idempotent=idempotent,
            timeout=timeout,
            schema=schema or {},
            compensation=compensation,
        )
        return fn

    return register


def get_agent(name: str) -> AgentSpec:
    try:
        return _agents[name]
    except KeyError:
        raise LookupError(f"no agent function is registered as {name!r}") from None


def get_tool(name: str) -> ToolSpec:
    try:
        return _tools[name]
    except KeyError:
        raise LookupError(f"no tool is registered as {name!r}") from None


def agents() -> dict[str, AgentSpec]:
    return dict(_agents)


def tools() -> dict[str, ToolSpec]:
    return dict(_tools)
