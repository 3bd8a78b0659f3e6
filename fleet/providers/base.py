"""The provider interface the runtime calls. Adapters translate to and from a wire format;
retries, circuit breakers and fallbacks are the runtime's job, not the adapters'.

An adapter raises ``TransientProviderError`` for what may succeed if tried again (timeouts,
connection failures, 429, 5xx) and ``PermanentProviderError`` for what will not (bad request,
authentication, unknown model). Adapters must not retry on their own (SDK retries off).
"""

from __future__ import annotations

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

    def chat(self, request: ChatRequest) -> ChatResponse: ...
