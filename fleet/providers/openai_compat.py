"""Adapter for OpenAI and OpenAI-compatible chat completion servers (vLLM, Ollama, LiteLLM, …),
through the official ``openai`` SDK.

``base_url`` is the API root including its version, e.g. ``https://api.openai.com/v1`` or
``http://localhost:8000/v1``. The SDK's own retries are off: the runtime retries.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.completion_usage import CompletionUsage

from fleet.providers.base import (
    ChatRequest,
    ChatResponse,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    Usage,
)

# What the SDK itself would retry: request timeout, lock timeout, rate limit, server errors.
_TRANSIENT_STATUSES = frozenset({408, 409, 429})


class OpenAICompatibleProvider:
    system = "openai"
    simulated = False

    def __init__(self, name: str, base_url: str, api_key: str, timeout: float) -> None:
        if not api_key:
            # The SDK refuses to send a request without credentials.
            raise ValueError(
                f"openai provider {name!r}: api_key is empty (for a server that checks no key, "
                "give any placeholder, e.g. 'unused')"
            )
        self.name = name
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)

    def chat(self, request: ChatRequest) -> ChatResponse:
        try:
            completion = self._client.chat.completions.create(
                model=request.model,
                messages=cast(list[ChatCompletionMessageParam], request.messages),
                temperature=openai.omit if request.temperature is None else request.temperature,
                max_tokens=openai.omit if request.max_tokens is None else request.max_tokens,
                response_format={"type": "json_object"} if request.json_output else openai.omit,
                timeout=request.timeout,
            )
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except openai.APITimeoutError as exc:
            raise TransientProviderError(f"{self._label}: no answer within {request.timeout:g}s") from exc
        except openai.APIConnectionError as exc:
            raise TransientProviderError(f"{self._label}: connection failed ({exc.__cause__ or exc})") from exc

        if not isinstance(completion, ChatCompletion):  # the SDK returns a body it cannot parse
            raise PermanentProviderError(
                f"{self._label}: the answer is not a chat completion: {str(completion)[:200]!r}"
            )
        if not completion.choices:
            raise PermanentProviderError(f"{self._label}: the answer has no choices")
        choice = completion.choices[0]
        if choice.message.refusal:
            raise PermanentProviderError(f"{self._label}: the model refused: {choice.message.refusal}")
        return ChatResponse(
            content=choice.message.content or "",
            model=completion.model,
            usage=_usage(completion.usage),
            finish_reason=choice.finish_reason,
            response_id=completion.id,
        )

    @property
    def _label(self) -> str:
        return f"{self.system} provider {self.name!r}"

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        status = exc.status_code
        message = f"{self._label}: {status} {_reason(status)}"
        if detail := _api_message(exc.body):
            message += f": {detail}"
        if status >= 500 or status in _TRANSIENT_STATUSES:
            retry_after = _retry_after(exc.response.headers)
            return TransientProviderError(message, status=status, retry_after=retry_after)
        return PermanentProviderError(message, status=status)


def _usage(usage: CompletionUsage | None) -> Usage:
    if usage is None:  # some compatible servers leave usage out
        return Usage()
    prompt = usage.prompt_tokens_details
    completion = usage.completion_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cache_read_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        cache_write_tokens=(prompt.cache_write_tokens or 0) if prompt else 0,
        reasoning_tokens=(completion.reasoning_tokens or 0) if completion else 0,
        input_audio_tokens=(prompt.audio_tokens or 0) if prompt else 0,
        output_audio_tokens=(completion.audio_tokens or 0) if completion else 0,
    )


def _reason(status: int) -> str:
    if status == 429:
        return "rate limited"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _api_message(body: object) -> str | None:
    """The server's own explanation: ``error.message`` (the SDK unwraps ``error``)."""
    if isinstance(body, Mapping):
        message = body.get("message")
        return message if isinstance(message, str) and message else None
    return body[:200] if isinstance(body, str) and body else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (sent by Azure) or ``Retry-After`` (seconds or an
    HTTP date); None when absent or unreadable."""
    milliseconds = _non_negative(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _non_negative(value: str | None) -> float | None:
    """The header's value as a finite number (negatives become 0), or None."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return max(number, 0.0) if math.isfinite(number) else None
