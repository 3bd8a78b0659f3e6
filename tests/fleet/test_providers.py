"""The provider adapters against real local servers speaking each wire format, and the
simulated provider."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import pytest

from fleet.providers.anthropic import AnthropicProvider
from fleet.providers.base import (
    ChatRequest,
    PermanentProviderError,
    TransientProviderError,
    Usage,
)
from fleet.providers.openai_compat import OpenAICompatibleProvider
from fleet.providers.simulated import SimulatedProvider, simulated_price
from tests.support.provider_servers import (
    AnthropicServer,
    OpenAIServer,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)

# Fixtures, imported for pytest to find them by name (listing them here marks them as used).

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ask(**fields: Any) -> ChatRequest:
    return ChatRequest(**{"model": "test-model", "messages": QUESTION, "timeout": 2.0, **fields})


# --- OpenAI-compatible -------------------------------------------------------------------------


@pytest.fixture
def openai_provider(openai_server: OpenAIServer) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(name="local-vllm", base_url=openai_server.base_url, api_key="sk-test", timeout=2.0)


def test_openai_answer_and_usage(openai_server, openai_provider):
    openai_server.script(
        openai_completion(
            "Paris.",
            model="test-model-2025",
            prompt_tokens=120,
            completion_tokens=30,
            cached_tokens=100,
            reasoning_tokens=12,
            finish_reason="length",
            completion_id="chatcmpl-42",
        )
    )

    response = openai_provider.chat(ask(temperature=0.2, max_tokens=50))

    assert response.content == "Paris."
    assert response.model == "test-model-2025"
    assert response.finish_reason == "length"
    assert response.response_id == "chatcmpl-42"
    assert response.usage == Usage(input_tokens=120, output_tokens=30, cache_read_tokens=100, reasoning_tokens=12)
    [sent] = openai_server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "test-model"
    assert sent.body["messages"] == QUESTION
    assert sent.body["temperature"] == 0.2
    assert sent.body["max_tokens"] == 50
    assert "response_format" not in sent.body


def test_openai_leaves_out_what_the_request_does_not_set(openai_server, openai_provider):
    openai_server.script(openai_completion("Paris.", prompt_tokens=7, completion_tokens=2))

    response = openai_provider.chat(ask())

    assert response.usage == Usage(input_tokens=7, output_tokens=2)
    [sent] = openai_server.requests
    assert "temperature" not in sent.body
    assert "max_tokens" not in sent.body
    assert "response_format" not in sent.body


def test_openai_json_mode(openai_server, openai_provider):
    openai_server.script(openai_completion('{"city": "Paris"}'))

    response = openai_provider.chat(ask(json_output=True))

    assert json.loads(response.content) == {"city": "Paris"}
    assert openai_server.requests[0].body["response_format"] == {"type": "json_object"}


def test_openai_rate_limit_is_transient_with_retry_after(openai_server, openai_provider):
    openai_server.script(openai_error(429, "Slow down.", headers={"Retry-After": "2"}), openai_completion("late"))

    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.status == 429
    assert caught.value.retry_after == 2.0
    assert str(caught.value) == "openai provider 'local-vllm': 429 rate limited: Slow down."
    assert len(openai_server.requests) == 1  # the SDK did not retry


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_openai_retry_after_forms(openai_server, openai_provider, headers, expected):
    openai_server.script(openai_error(429, "Slow down.", headers=headers))

    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.retry_after == expected


def test_openai_retry_after_as_http_date(openai_server, openai_provider):
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    openai_server.script(openai_error(429, "Slow down.", headers={"Retry-After": in_a_minute}))

    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 60


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_openai_server_errors_are_transient(openai_server, openai_provider, status):
    openai_server.script(openai_error(status, "Upstream trouble."), openai_completion("late"))

    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.status == status
    assert caught.value.retry_after is None
    assert "Upstream trouble." in str(caught.value)
    assert len(openai_server.requests) == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "bad request"), (401, "unauthorized"), (403, "forbidden"), (404, "not found")],
)
def test_openai_client_errors_are_permanent(openai_server, openai_provider, status, reason):
    openai_server.script(openai_error(status, "You did something wrong."), openai_completion("x"))

    with pytest.raises(PermanentProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.status == status
    assert str(caught.value) == (f"openai provider 'local-vllm': {status} {reason}: You did something wrong.")
    assert len(openai_server.requests) == 1


def test_openai_timeout_is_transient(openai_server, openai_provider):
    openai_server.script(openai_completion("too late", delay=30))

    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask(timeout=0.3))

    assert time.monotonic() - started < 30, "gave up before the answer came, not after"
    assert caught.value.status is None
    assert str(caught.value) == "openai provider 'local-vllm': no answer within 0.3s"
    assert len(openai_server.requests) == 1


def test_openai_connection_refused_is_transient(openai_server, openai_provider):
    openai_server.stop()

    with pytest.raises(TransientProviderError) as caught:
        openai_provider.chat(ask())

    assert caught.value.status is None
    assert "openai provider 'local-vllm': connection failed" in str(caught.value)


def test_openai_answer_without_choices_is_permanent(openai_server, openai_provider):
    openai_server.script(openai_completion(None))

    with pytest.raises(PermanentProviderError, match="the answer has no choices"):
        openai_provider.chat(ask())


def test_openai_refusal_is_permanent(openai_server, openai_provider):
    openai_server.script(openai_completion(None, refusal="I can't help with that."))

    with pytest.raises(PermanentProviderError, match="the model refused: I can't help with that."):
        openai_provider.chat(ask())


def test_openai_answer_that_is_not_json_is_permanent(openai_server, openai_provider):
    openai_server.script(Reply(200, "<html>Sign in to the proxy</html>"))

    with pytest.raises(PermanentProviderError, match="the answer is not a chat completion: "):
        openai_provider.chat(ask())


def test_openai_needs_an_api_key():
    with pytest.raises(ValueError, match="api_key is empty"):
        OpenAICompatibleProvider(name="local", base_url="http://127.0.0.1:9/v1", api_key="", timeout=1.0)


# --- Anthropic ---------------------------------------------------------------------------------


@pytest.fixture
def anthropic_provider(anthropic_server: AnthropicServer) -> AnthropicProvider:
    return AnthropicProvider(name="claude", base_url=anthropic_server.base_url, api_key="sk-ant-test", timeout=2.0)


def test_anthropic_answer_usage_and_system_prompt(anthropic_server, anthropic_provider):
    anthropic_server.script(
        anthropic_message(
            "Paris ",
            "is the capital.",
            model="claude-test-2025",
            input_tokens=50,
            output_tokens=40,
            cache_read_input_tokens=200,
            cache_creation_input_tokens=30,
            thinking_tokens=7,
            stop_reason="max_tokens",
            message_id="msg_42",
        )
    )
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Which country again?"},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "France."},
    ]

    response = anthropic_provider.chat(ask(model="claude-test", messages=messages, temperature=0.3))

    assert response.content == "Paris is the capital."
    assert response.model == "claude-test-2025"
    assert response.finish_reason == "max_tokens"
    assert response.response_id == "msg_42"
    assert response.usage == Usage(
        input_tokens=280,  # 50 uncached + 200 read from the cache + 30 written to it
        output_tokens=40,
        cache_read_tokens=200,
        cache_write_tokens=30,
        reasoning_tokens=7,
    )
    [sent] = anthropic_server.requests
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == "Bearer sk-ant-test"  # this SDK sends no x-api-key
    assert "anthropic-version" in sent.headers
    assert sent.body["model"] == "claude-test"
    assert sent.body["system"] == "You are terse.\n\nAnswer in English."
    assert sent.body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Which country again?"},
        {"role": "user", "content": "France."},
    ]
    assert sent.body["max_tokens"] == 1024
    assert "temperature" not in sent.body  # this API version has no sampling parameters


def test_anthropic_without_system_prompt_or_cache(anthropic_server, anthropic_provider):
    anthropic_server.script(anthropic_message("Paris.", input_tokens=12, output_tokens=3))

    response = anthropic_provider.chat(ask(max_tokens=64))

    assert response.usage == Usage(input_tokens=12, output_tokens=3)
    [sent] = anthropic_server.requests
    assert "system" not in sent.body
    assert sent.body["messages"] == QUESTION
    assert sent.body["max_tokens"] == 64


def test_anthropic_rate_limit_is_transient_with_retry_after(anthropic_server, anthropic_provider):
    anthropic_server.script(
        anthropic_error(429, "rate_limit_error", "Slow down.", headers={"retry-after": "2"}),
        anthropic_message("late"),
    )

    with pytest.raises(TransientProviderError) as caught:
        anthropic_provider.chat(ask())

    assert caught.value.status == 429
    assert caught.value.retry_after == 2.0
    assert str(caught.value) == "anthropic provider 'claude': 429 rate limited: Slow down."
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "reason"),
    [
        (408, "timeout_error", "request timeout"),
        (500, "api_error", "internal server error"),
        (503, "api_error", "service unavailable"),
        (529, "overloaded_error", "overloaded"),
    ],
)
def test_anthropic_server_errors_are_transient(anthropic_server, anthropic_provider, status, error_type, reason):
    anthropic_server.script(anthropic_error(status, error_type, "Try later."), anthropic_message("late"))

    with pytest.raises(TransientProviderError) as caught:
        anthropic_provider.chat(ask())

    assert caught.value.status == status
    assert str(caught.value) == f"anthropic provider 'claude': {status} {reason}: Try later."
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
    ],
)
def test_anthropic_client_errors_are_permanent(anthropic_server, anthropic_provider, status, error_type):
    anthropic_server.script(anthropic_error(status, error_type, "You did something wrong."), anthropic_message("x"))

    with pytest.raises(PermanentProviderError) as caught:
        anthropic_provider.chat(ask())

    assert caught.value.status == status
    assert "You did something wrong." in str(caught.value)
    assert len(anthropic_server.requests) == 1


def test_anthropic_timeout_is_transient(anthropic_server, anthropic_provider):
    anthropic_server.script(anthropic_message("too late", delay=30))

    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        anthropic_provider.chat(ask(timeout=0.3))

    assert time.monotonic() - started < 30, "gave up before the answer came, not after"
    assert caught.value.status is None
    assert str(caught.value) == "anthropic provider 'claude': no answer within 0.3s"
    assert len(anthropic_server.requests) == 1


def test_anthropic_connection_refused_is_transient(anthropic_server, anthropic_provider):
    anthropic_server.stop()

    with pytest.raises(TransientProviderError) as caught:
        anthropic_provider.chat(ask())

    assert caught.value.status is None
    assert "anthropic provider 'claude': connection failed" in str(caught.value)


def test_anthropic_refusal_is_permanent(anthropic_server, anthropic_provider):
    anthropic_server.script(anthropic_message("I can't", stop_reason="refusal"))

    with pytest.raises(PermanentProviderError, match="the model refused to answer"):
        anthropic_provider.chat(ask())


def test_anthropic_answer_that_is_not_json_is_permanent(anthropic_server, anthropic_provider):
    anthropic_server.script(Reply(200, "<html>Sign in to the proxy</html>"))

    with pytest.raises(PermanentProviderError, match="the answer is not a message: "):
        anthropic_provider.chat(ask())


# --- Simulated ---------------------------------------------------------------------------------


def sim(**options: Any) -> SimulatedProvider:
    return SimulatedProvider(name="sim", options=options)


def test_simulated_is_deterministic_per_seed_and_model():
    provider = sim()

    first = provider.chat(ask(model="sim-small", seed="run-1:step-1:attempt-1"))
    again = provider.chat(ask(model="sim-small", seed="run-1:step-1:attempt-1"))
    other_models = provider.chat(ask(model="sim-large", seed="run-1:step-1:attempt-1"))
    contents = {provider.chat(ask(model="sim-small", seed=f"seed-{n}")).content for n in range(10)}

    assert again == first
    assert first.model == "sim-small"
    assert first.finish_reason == "stop"
    assert other_models.model == "sim-large"
    assert other_models.response_id != first.response_id
    assert len(contents) > 3


def test_simulated_answer_and_usage():
    # 30 characters at the default 0.25 tokens per character: 8 (7.5 rounded) input tokens.
    request = ask(model="sim-small", messages=[{"role": "user", "content": "x" * 30}], seed="a")

    response = sim().chat(request)

    assert response.content.endswith(".")
    assert response.usage.input_tokens == 8
    assert response.usage.output_tokens == max(round(len(response.content) * 0.25), 1)
    assert response.usage.output_tokens > 1


def test_simulated_usage_counts_at_least_one_token():
    request = ask(model="sim-small", messages=[{"role": "user", "content": ""}])

    response = sim(tokens_per_char=0.001).chat(request)

    assert response.usage == Usage(input_tokens=1, output_tokens=1)


def test_simulated_json_output_is_a_json_object():
    response = sim().chat(ask(model="sim-small", json_output=True, seed="j"))

    answer = json.loads(response.content)
    assert set(answer) == {"answer", "confidence"}
    assert 0.6 <= answer["confidence"] <= 0.99


def test_simulated_uses_the_simulate_callable():
    seen: list[Any] = []

    def simulate(rng: random.Random, messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        return f"refund approved, ref {rng.randint(1000, 9999)}"

    first = sim(tokens_per_char=1.0).chat(ask(model="sim-small", seed="s", simulate=simulate))
    again = sim(tokens_per_char=1.0).chat(ask(model="sim-small", seed="s", simulate=simulate))

    assert first.content.startswith("refund approved, ref ")
    assert again.content == first.content
    assert first.usage.output_tokens == len(first.content)
    assert seen == [QUESTION, QUESTION]


def test_simulated_failure_rate():
    requests = [ask(model="sim-small", seed=f"attempt-{n}") for n in range(40)]

    for request in requests:
        with pytest.raises(TransientProviderError) as caught:
            sim(failure_rate=1.0).chat(request)
        assert caught.value.status == 503
        assert str(caught.value) == "simulated provider 'sim': 503 simulated outage"

    never = sim(failure_rate=0)
    assert all(never.chat(request).content for request in requests)

    sometimes = sim(failure_rate=0.5)
    failures = 0
    for request in requests:
        try:
            sometimes.chat(request)
        except TransientProviderError:
            failures += 1
    assert 5 < failures < 35


def test_simulated_latency():
    started = time.monotonic()
    sim(latency_ms=150, jitter_ms=20).chat(ask(model="sim-small"))
    assert time.monotonic() - started >= 0.13


def test_simulated_latency_beyond_the_timeout_is_a_timeout():
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as caught:
        sim(latency_ms=5000).chat(ask(model="sim-small", timeout=0.2))

    assert 0.2 <= time.monotonic() - started < 5, "waits out the timeout, not the latency"
    assert caught.value.status is None
    assert str(caught.value) == "simulated provider 'sim': no answer within 0.2s"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latency": 100}, r"unknown option\(s\) latency"),
        ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1"),
        ({"latency_ms": -1}, "latency_ms must be 0 or more"),
        ({"jitter_ms": "lots"}, "jitter_ms must be a number"),
    ],
)
def test_simulated_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        sim(**options)


def test_simulated_prices():
    assert simulated_price("sim-small", Usage(input_tokens=1000, output_tokens=500)) == Decimal("0.00045")
    assert simulated_price("sim-large", Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == Decimal("12.5")
    assert simulated_price("sim-reasoner", Usage(input_tokens=2000, output_tokens=0)) == Decimal("0.01")
    assert simulated_price("gpt-4o", Usage(input_tokens=1000, output_tokens=500)) is None
