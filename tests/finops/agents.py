"""An agent the FinOps tests run: ``n`` LLM steps, one after the other."""

from __future__ import annotations

from typing import Any

from fleet.runtime import agent
from fleet.runtime.context import RunContext


@agent("finops-spender")
def spender(run: RunContext, *, n: int = 3) -> dict[str, Any]:
    models = []
    for i in range(n):
        answer = run.llm(f"step {i}", messages=[{"role": "user", "content": f"please consider item number {i}"}])
        models.append(answer.model)
    return {"models": models}
