"""The durable agent runtime. Agent modules use::

from fleet.runtime import ToolInvocation, agent, tool
from fleet.runtime.context import LlmCall, RunContext, ToolCall
"""

from __future__ import annotations

from fleet.runtime.errors import ActionForbidden, ActionRejected, StepFailed, TransientToolError
from fleet.runtime.registry import ToolInvocation, agent, tool

__all__ = [
    "ActionForbidden",
    "ActionRejected",
    "StepFailed",
    "ToolInvocation",
    "TransientToolError",
    "agent",
    "tool",
]
