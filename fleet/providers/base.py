"""The provider interface the runtime calls. Adapters translate to and from a wire format;
retries, circuit breakers and fallbacks are the runtime's job, not the adapters'.

An adapter raises ``TransientProviderError`` for what may succeed if tried again (timeouts,
connection failures, 429, 5xx) and ``PermanentProviderError`` for what will not (bad request,
authentication, unknown model). Adapters must not retry on their own (SDK retries off).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class Usage:
    """Token counts as the provider reported them. ``input_tokens`` includes the cached (read
    and written) and audio input tokens; ``output_tokens`` includes the reasoning and audio
    output tokens. Each kind is priced at the model's own rate for it (``finops.prices``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class ChatRequest:
    model: str  # the provider's own model name (without the "provider/" prefix)
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    json_output: bool = False  # ask for a JSON object (where the wire format supports it)
    timeout: float = 60.0
    # Seed material for the simulated provider: the same (run, step, attempt) gives the same
    # answer, which keeps replays and tests deterministic. Real providers ignore it.
    seed: str = ""
    # The simulated provider calls this to produce the content of its answer (demo agents
    # describe plausible answers this way); real providers ignore it.
    simulate: Callable[..., str] | None = None


@dataclass(frozen=True)
class ChatResponse:
    content: str
    model: str  # the model that answered (gen_ai.response.model)
    usage: Usage
    finish_reason: str | None = None
    response_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientProviderError(ProviderError):
    """Worth retrying: timeout, connection error, 429, 5xx."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Not worth retrying: 400, 401, 403, 404, 422, or an answer that cannot be used."""


class Provider(Protocol):
    name: str  # the provider record's name, e.g. "openai", "local-vllm", "sim"
    system: str  # the GenAI semconv provider name: "openai", "anthropic", "simulated", …
    simulated: bool
    # Optional ``instant: bool`` (default False): answers without waiting, so the runtime keeps
    # its database connection across the call instead of releasing it.
    # Optional ``input_tokens(messages) -> int``: the input tokens a request will be charged, at
    # most (default ``input_tokens_bound``); and ``max_output_tokens(model) -> int``: the longest
    # answer the model gives when the request sets no ``max_tokens`` (default
    # ``DEFAULT_MAX_OUTPUT_TOKENS``). The runtime reserves a call's worst case from them.

    def chat(self, request: ChatRequest) -> ChatResponse: ...


# The longest answer assumed of a model whose adapter does not say, when a call sets no
# max_tokens (the largest output limit of current models): such calls reserve a lot of budget.
DEFAULT_MAX_OUTPUT_TOKENS = 128_000


def input_tokens_bound(messages: list[Message]) -> int:
    """An upper bound of the input tokens of ``messages``: byte-level tokenizers never make a
    token of less than one UTF-8 byte, plus a few tokens of framing per message."""
    size = sum(len(json.dumps(message.get("content", ""), ensure_ascii=False).encode()) for message in messages)
    return size + 8 * len(messages) + 8


def worst_case_usage(provider: Provider, request: ChatRequest) -> Usage:
    """The most a request may be charged for: its input bound, and ``max_tokens`` or the model's
    longest answer."""
    count = getattr(provider, "input_tokens", None)
    input_tokens = count(request.messages) if count is not None else input_tokens_bound(request.messages)
    if request.max_tokens is not None:
        output_tokens = max(request.max_tokens, 1)
    else:
        longest = getattr(provider, "max_output_tokens", None)
        output_tokens = longest(request.model) if longest is not None else DEFAULT_MAX_OUTPUT_TOKENS
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens)
