"""What a span means, read from the attribute names agents' frameworks actually emit.

Each typed column of a stored span is filled from the first attribute present in its list
below: the OpenTelemetry GenAI semantic conventions (current names first, then the deprecated
names SDKs still emit), then OpenInference (Arize Phoenix, LlamaIndex, many LangChain and CrewAI
instrumentations), then Traceloop / OpenLLMetry. ``docs/traces.md`` prints this table.
"""

from __future__ import annotations

from collections.abc import Callable
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
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
    "input_audio_tokens": ("llm.token_count.prompt_details.audio",),
    "output_audio_tokens": ("llm.token_count.completion_details.audio",),
    "tool_name": ("gen_ai.tool.name", "tool.name", "traceloop.entity.name@tool"),
    "agent_key": ("gen_ai.agent.id", "agent.id"),
    "agent_name": ("gen_ai.agent.name", "agent.name", "traceloop.entity.name@agent"),
    "agent_version": ("gen_ai.agent.version", "agent.version"),
    "conversation_id": ("gen_ai.conversation.id", "session.id", "traceloop.association.properties.session_id"),
    "error_type": ("error.type", "exception.type"),
}

# The token columns, each a kind genai-prices prices (the parts of input and output included).
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
)

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


@dataclass(slots=True)
class Meaning:
    span_type: str = SpanType.OTHER
    model: str = ""
    provider: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    tool_name: str = ""
    agent_key: str = ""
    agent_name: str = ""
    agent_version: str = ""
    conversation_id: str = ""
    error_type: str = ""


Source = tuple[str, int, str | None]


def _sources() -> dict[str, list[Source]]:
    """Attribute name -> the columns it can fill: (column, rank in that column's list, the
    traceloop.span.kind it needs: "attribute@kind" applies only to spans of that kind)."""
    sources: dict[str, list[Source]] = {}
    for column, names in FIELDS.items():
        for rank, name in enumerate(names):
            attribute, _, kind = name.partition("@")
            sources.setdefault(attribute, []).append((column, rank, kind or None))
    return sources


_SOURCES = _sources()


def _columns(attributes: dict[str, Any]) -> dict[str, Any]:
    """Column -> value, each from the first attribute of its ``FIELDS`` list that the span has
    (not null, not empty): one pass over the span's attributes."""
    best: dict[str, tuple[int, Any]] = {}
    for name, value in attributes.items():
        sources = _SOURCES.get(name)
        if sources is None or value is None or value == "":
            continue
        for column, rank, kind in sources:
            if kind is not None and attributes.get("traceloop.span.kind") != kind:
                continue
            current = best.get(column)
            if current is None or rank < current[0]:
                best[column] = (rank, value)
    return {column: value for column, (_, value) in best.items()}


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**62 else None


def span_type(attributes: dict[str, Any], name: str, columns: dict[str, Any] | None = None) -> str:
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
    if columns is None:
        columns = _columns(attributes)
    if columns.get("model") or columns.get("input_tokens"):
        return SpanType.LLM
    if "guardrail" in name.lower():
        return SpanType.GUARDRAIL
    return SpanType.OTHER


def _text(value: Any, limit: int) -> str:
    if value is None:
        return ""
    text = str(value)[:limit]
    return text.replace("\x00", "\ufffd") if "\x00" in text else text  # PostgreSQL text cannot hold NUL


# column -> how its attribute value becomes the column's value
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "model": lambda value: _text(value, 200),
    "provider": lambda value: _text(value, 100).lower(),
    "input_tokens": _int,
    "output_tokens": _int,
    "cache_read_tokens": _int,
    "cache_write_tokens": _int,
    "reasoning_tokens": _int,
    "input_audio_tokens": _int,
    "output_audio_tokens": _int,
    "tool_name": lambda value: _text(value, 200),
    "agent_key": lambda value: _text(value, 200),
    "agent_name": lambda value: _text(value, 200),
    "agent_version": lambda value: _text(value, 100),
    "conversation_id": lambda value: _text(value, 200),
    "error_type": lambda value: _text(value, 200),
}


def read(attributes: dict[str, Any], name: str, exception_type: str = "") -> Meaning:
    """The typed reading of one span's attributes (resource attributes already merged below)."""
    columns = _columns(attributes)
    meaning = Meaning(span_type=span_type(attributes, name, columns))
    for column, value in columns.items():
        setattr(meaning, column, _CONVERTERS[column](value))
    if not meaning.error_type and exception_type:
        meaning.error_type = _text(exception_type, 200)
    if meaning.span_type == SpanType.TOOL and not meaning.tool_name and name.startswith("execute_tool "):
        meaning.tool_name = name.removeprefix("execute_tool ")[:200]
    return meaning
