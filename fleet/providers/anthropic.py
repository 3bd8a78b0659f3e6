"""Adapter for Anthropic's Messages API, through the official ``anthropic`` SDK.

``base_url`` is the host, e.g. ``https://api.anthropic.com`` (the SDK adds ``/v1/messages``).
The SDK's own retries are off (the runtime retries), and so are its OpenTelemetry spans (on
by default in this SDK): the runtime records the model call itself, and the SDK's span would be a
second one per call, taking any span id forced with ``cockpit.telemetry.span_id``.

What the wire format cannot carry is left out: this SDK version has no sampling parameters, so
``temperature`` is not sent, and structured output needs a JSON schema, so ``json_output``
relies on the prompt asking for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

import anthropic
from anthropic.types import Message, MessageParam
from anthropic.types import Usage as AnthropicUsage

from fleet.providers.base import (
    ChatRequest,
    ChatResponse,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Usage,
)

# The API requires max_tokens; this is the answer's length limit when the request sets none.
DEFAULT_MAX_TOKENS = 1024

# What the SDK itself would retry: request timeout, lock timeout, rate limit, server errors
# (among them 529 overloaded).
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
_REASONS = {429: "rate limited", 529: "overloaded"}


class AnthropicProvider:
    system = "anthropic"
    simulated = False

    def __init__(self, name: str, base_url: str, api_key: str, timeout: float) -> None:
        self.name = name
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            open_telemetry=False,
        )

    def max_output_tokens(self, model: str) -> int:
        return DEFAULT_MAX_TOKENS  # what chat() asks for when the request sets no limit

    def chat(self, request: ChatRequest) -> ChatResponse:
        system_prompt = "\n\n".join(message["content"] for message in request.messages if message["role"] == "system")
        turns = [message for message in request.messages if message["role"] != "system"]
        try:
            answer = self._client.messages.create(
                model=request.model,
                system=system_prompt or anthropic.omit,
                messages=cast(list[MessageParam], turns),
                max_tokens=(DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens),
                timeout=request.timeout,
            )
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except anthropic.APITimeoutError as exc:
            raise TransientProviderError(f"{self._label}: no answer within {request.timeout:g}s") from exc
        except anthropic.APIConnectionError as exc:
            raise TransientProviderError(f"{self._label}: connection failed ({exc.__cause__ or exc})") from exc

        if not isinstance(answer, Message):  # the SDK returns a body it cannot parse
            raise PermanentProviderError(f"{self._label}: the answer is not a message: {str(answer)[:200]!r}")
        if answer.stop_reason == "refusal":
            raise PermanentProviderError(f"{self._label}: the model refused to answer")
        return ChatResponse(
            content="".join(block.text for block in answer.content if block.type == "text"),
            model=answer.model,
            usage=_usage(answer.usage),
            finish_reason=answer.stop_reason,
            response_id=answer.id,
        )

    @property
    def _label(self) -> str:
        return f"{self.system} provider {self.name!r}"

    def _status_error(self, exc: anthropic.APIStatusError) -> ProviderError:
        status = exc.status_code
        message = f"{self._label}: {status} {_reason(status)}"
        if exc.api_message:
            message += f": {exc.api_message}"
        if status >= 500 or status in _TRANSIENT_STATUSES:
            retry_after = _retry_after(exc.response.headers)
            return TransientProviderError(message, status=status, retry_after=retry_after)
        return PermanentProviderError(message, status=status)


def _usage(usage: AnthropicUsage) -> Usage:
    """Anthropic counts cached input apart from ``input_tokens``; ours includes it."""
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    details = usage.output_tokens_details
    return Usage(
        input_tokens=usage.input_tokens + cache_read + cache_write,
        output_tokens=usage.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=details.thinking_tokens if details else 0,
    )


def _reason(status: int) -> str:
    if status in _REASONS:
        return _REASONS[status]
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``Retry-After`` (Anthropic sends seconds); None when absent."""
    try:
        seconds = float(headers.get("retry-after", "nan"))
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None
