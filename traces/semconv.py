"""What a span means, read from the attribute names agents' frameworks actually emit.

Each typed column of a stored span is filled from the first attribute present in its list
below: the OpenTelemetry GenAI semantic conventions (current names first, then the deprecated
names SDKs still emit), then OpenInference (Arize Phoenix, LlamaIndex, many LangChain and CrewAI
instrumentations), then Traceloop / OpenLLMetry. ``docs/traces.md`` prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SpanType:
    AGENT = "agent"
    LLM = "llm"
    TOOL = "tool"
    RETRIEVAL = "retrieval"
    EMBEDDING = "embedding"
    CHAIN = "chain"
    GUARDRAIL = "guardrail"
    APPROVAL = "approval"
    OPERATOR = "operator"
    OTHER = "other"

    ALL = ("agent", "llm", "tool", "retrieval", "embedding", "chain", "guardrail", "approval", "operator", "other")


# column -> attribute names, first present wins
FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("gen_ai.response.model", "gen_ai.request.model", "llm.model_name", "embedding.model_name"),
    "provider": ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"),
    "input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
        "llm.usage.prompt_tokens",
    ),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
        "llm.usage.completion_tokens",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
    "tool_name": ("gen_ai.tool.name", "tool.name", "traceloop.entity.name@tool"),
    "agent_key": ("gen_ai.agent.id", "agent.id"),
    "agent_name": ("gen_ai.agent.name", "agent.name", "traceloop.entity.name@agent"),
    "agent_version": ("gen_ai.agent.version", "agent.version"),
    "conversation_id": ("gen_ai.conversation.id", "session.id", "traceloop.association.properties.session_id"),
    "error_type": ("error.type", "exception.type"),
}

# gen_ai.operation.name -> span type
OPERATIONS = {
    "chat": SpanType.LLM,
    "text_completion": SpanType.LLM,
    "generate_content": SpanType.LLM,
    "embeddings": SpanType.EMBEDDING,
    "retrieval": SpanType.RETRIEVAL,
    "execute_tool": SpanType.TOOL,
    "invoke_agent": SpanType.AGENT,
    "create_agent": SpanType.AGENT,
    "invoke_workflow": SpanType.CHAIN,
}

# openinference.span.kind -> span type
OPENINFERENCE_KINDS = {
    "LLM": SpanType.LLM,
    "TOOL": SpanType.TOOL,
    "AGENT": SpanType.AGENT,
    "CHAIN": SpanType.CHAIN,
    "RETRIEVER": SpanType.RETRIEVAL,
    "RERANKER": SpanType.RETRIEVAL,
    "EMBEDDING": SpanType.EMBEDDING,
    "GUARDRAIL": SpanType.GUARDRAIL,
    "EVALUATOR": SpanType.OTHER,
    "PROMPT": SpanType.CHAIN,
}

# traceloop.span.kind -> span type
TRACELOOP_KINDS = {
    "workflow": SpanType.CHAIN,
    "task": SpanType.CHAIN,
    "agent": SpanType.AGENT,
    "tool": SpanType.TOOL,
}

# Cockpit's own runtime (fleet.telemetry): cockpit.step.kind and operator events
COCKPIT_STEP_KINDS = {
    "llm": SpanType.LLM,
    "tool": SpanType.TOOL,
    "approval": SpanType.APPROVAL,
    "decision": SpanType.CHAIN,
    "checkpoint": SpanType.CHAIN,
}

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")


@dataclass(slots=True)
class Meaning:
    span_type: str = SpanType.OTHER
    model: str = ""
    provider: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_name: str = ""
    agent_key: str = ""
    agent_name: str = ""
    agent_version: str = ""
    conversation_id: str = ""
    error_type: str = ""


# FIELDS as (attribute, kind) pairs, read once: "attribute@kind" applies only when
# traceloop.span.kind is that kind (every span is read against all of them).
_COMPILED: dict[tuple[str, ...], tuple[tuple[str, str | None], ...]] = {}


def _compiled(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    found = _COMPILED.get(names)
    if found is None:
        found = _COMPILED[names] = tuple((name.partition("@")[0], name.partition("@")[2] or None) for name in names)
    return found


def _first(attributes: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name, kind in _compiled(names):
        if name not in attributes:
            continue
        if kind is not None and attributes.get("traceloop.span.kind") != kind:
            continue
        value = attributes[name]
        if value is not None and value != "":
            return value
    return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**62 else None


def span_type(attributes: dict[str, Any], name: str) -> str:
    if "cockpit.operator.action" in attributes:
        return SpanType.OPERATOR
    step_kind = attributes.get("cockpit.step.kind")
    if isinstance(step_kind, str) and step_kind in COCKPIT_STEP_KINDS:
        return COCKPIT_STEP_KINDS[step_kind]
    operation = attributes.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation in OPERATIONS:
        return OPERATIONS[operation]
    kind = attributes.get("openinference.span.kind")
    if isinstance(kind, str) and kind.upper() in OPENINFERENCE_KINDS:
        return OPENINFERENCE_KINDS[kind.upper()]
    kind = attributes.get("traceloop.span.kind")
    if isinstance(kind, str) and kind in TRACELOOP_KINDS:
        return TRACELOOP_KINDS[kind]
    if attributes.get("gen_ai.tool.name") or attributes.get("tool.name"):
        return SpanType.TOOL
    if _first(attributes, FIELDS["model"]) or _first(attributes, FIELDS["input_tokens"]):
        return SpanType.LLM
    if "guardrail" in name.lower():
        return SpanType.GUARDRAIL
    return SpanType.OTHER


def _text(value: Any, limit: int) -> str:
    return "" if value is None else str(value)[:limit]


def read(attributes: dict[str, Any], name: str, exception_type: str = "") -> Meaning:
    """The typed reading of one span's attributes (resource attributes already merged below)."""
    meaning = Meaning(span_type=span_type(attributes, name))
    meaning.model = _text(_first(attributes, FIELDS["model"]), 200)
    meaning.provider = _text(_first(attributes, FIELDS["provider"]), 100).lower()
    for field in TOKEN_FIELDS:
        setattr(meaning, field, _int(_first(attributes, FIELDS[field])))
    meaning.tool_name = _text(_first(attributes, FIELDS["tool_name"]), 200)
    meaning.agent_key = _text(_first(attributes, FIELDS["agent_key"]), 200)
    meaning.agent_name = _text(_first(attributes, FIELDS["agent_name"]), 200)
    meaning.agent_version = _text(_first(attributes, FIELDS["agent_version"]), 100)
    meaning.conversation_id = _text(_first(attributes, FIELDS["conversation_id"]), 200)
    meaning.error_type = _text(_first(attributes, FIELDS["error_type"]) or exception_type, 200)
    if meaning.span_type == SpanType.TOOL and not meaning.tool_name and name.startswith("execute_tool "):
        meaning.tool_name = name.removeprefix("execute_tool ")[:200]
    return meaning
