"""Agents the FinOps tests run: ``n`` LLM steps one after the other, or ``rounds`` fan-outs of
``width`` LLM calls made in parallel."""

from __future__ import annotations

from typing import Any

from fleet.runtime import agent
from fleet.runtime.context import LlmCall, RunContext


@agent("finops-spender")
def spender(run: RunContext, *, n: int = 3, max_tokens: int | None = 32) -> dict[str, Any]:
    models = []
    for i in range(n):
        answer = run.llm(
            f"step {i}",
            messages=[{"role": "user", "content": f"please consider item number {i}"}],
            max_tokens=max_tokens,
        )
        models.append(answer.model)
    return {"models": models}


@agent("finops-fanout")
def fanout(run: RunContext, *, rounds: int = 3, width: int = 4, max_tokens: int | None = 64) -> dict[str, Any]:
    for r in range(rounds):
        run.parallel(
            [
                LlmCall(
                    f"round {r} branch {b}",
                    messages=[{"role": "user", "content": f"please consider item {r}.{b}"}],
                    max_tokens=max_tokens,
                )
                for b in range(width)
            ]
        )
    return {"rounds": rounds}
