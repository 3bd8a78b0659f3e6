"""Real model providers behind the runtime: retries with backoff on 429/5xx, permanent errors,
circuit breakers shared through Redis, and the agent's degraded mode (fallback or pause).
The providers are local HTTP servers speaking each wire format."""

from __future__ import annotations

import secrets
import time

import pytest

from fleet.models import ModelProvider, ProviderKind, RunStatus, Step, StepKind
from fleet.providers import registry as providers
from fleet.runtime import resilience
from tests.fleet.conftest import execute
from tests.support.provider_servers import (
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)

pytestmark = pytest.mark.django_db


def provider(kind: str, base_url: str) -> str:
    """A provider row of its own per test, so breaker state never leaks between tests."""
    name = f"{kind[:6]}-{secrets.token_hex(4)}"
    ModelProvider.objects.create(name=name, kind=kind, base_url=base_url, api_key_env="", timeout_seconds=2)
    providers.forget()
    return name


@pytest.fixture
def fast_breakers(settings) -> None:  # noqa: ANN001
    settings.COCKPIT = {
        **settings.COCKPIT,
        "BREAKER_FAIL_MAX": 3,
        "BREAKER_RESET_SECONDS": 1,
        "RETRY_MAX_ATTEMPTS": 2,
    }


def test_429_and_5xx_are_retried_until_the_model_answers(openai_server, make_agent, start) -> None:
    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.script(
        openai_error(429, "slow down", headers={"Retry-After": "0"}),
        openai_error(500, "oops"),
        openai_completion("fine now", model="gpt-local", prompt_tokens=40, completion_tokens=8, cached_tokens=16),
    )
    run = execute(start(make_agent("test-llm", primary_model=f"{name}/gpt-local")))
    assert run.status == RunStatus.SUCCEEDED, run.error
    step = Step.objects.get(run=run, kind=StepKind.LLM)
    assert (step.attempts, step.tokens_in, step.tokens_out, step.cached_tokens) == (3, 40, 8, 16)
    assert (step.provider, step.model, step.simulated) == ("openai", f"{name}/gpt-local", False)
    assert step.cost is None and run.unpriced_steps == 1  # real models are unpriced until prices are known
    assert len(openai_server.requests) == 3
    assert openai_server.requests[-1].body["model"] == "gpt-local"


def test_anthropic_overloaded_is_retried(anthropic_server, make_agent, start) -> None:
    name = provider(ProviderKind.ANTHROPIC, anthropic_server.url)
    anthropic_server.script(
        anthropic_error(529, "overloaded_error", "Overloaded"),
        anthropic_message("done", input_tokens=12, output_tokens=3),
    )
    run = execute(start(make_agent("test-llm", primary_model=f"{name}/claude-test")))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert Step.objects.get(run=run, kind=StepKind.LLM).attempts == 2
    assert run.result["answers"][0]["content"] == "done"


def test_a_permanent_provider_error_fails_the_run_without_retrying(openai_server, make_agent, start) -> None:
    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.script(openai_error(400, "max_tokens is too large"))
    run = execute(start(make_agent("test-llm", primary_model=f"{name}/gpt-local")))
    assert run.status == RunStatus.FAILED
    assert "400" in run.error and "max_tokens is too large" in run.error
    assert len(openai_server.requests) == 1


def test_an_unknown_provider_fails_clearly(make_agent, start) -> None:
    run = execute(start(make_agent("test-llm", primary_model="nowhere/model")))
    assert run.status == RunStatus.FAILED
    assert 'no enabled model provider named "nowhere"' in run.error


def test_the_breaker_opens_fails_fast_is_shared_and_closes_again(
    openai_server,
    make_agent,
    start,
    fast_breakers,
) -> None:
    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.default = openai_error(503, "down for maintenance")
    agent = make_agent("test-llm", primary_model=f"{name}/gpt-local", degraded_mode="pause")

    first = execute(start(agent))  # 2 attempts, both fail: the breaker counts 2
    assert first.status == RunStatus.PAUSED and "model unavailable" in first.status_reason
    second = execute(start(agent))  # the 3rd failure opens the circuit
    assert second.status == RunStatus.PAUSED and "circuit open" in second.status_reason
    requests_so_far = len(openai_server.requests)
    assert requests_so_far == 3

    third = execute(start(agent))  # open: fails fast, no request leaves
    assert third.status == RunStatus.PAUSED and "circuit open" in third.status_reason
    assert len(openai_server.requests) == requests_so_far

    # Another worker process sees the same state: it lives in Redis, not in this process.
    resilience._local.breakers = {}
    assert resilience.breaker_state(f"provider:{name}") == "open"

    # After the reset timeout one call is let through; success closes the circuit.
    time.sleep(1.2)
    openai_server.default = openai_completion("back")
    fourth = execute(start(agent))
    assert fourth.status == RunStatus.SUCCEEDED
    assert resilience.breaker_state(f"provider:{name}") == "closed"


def test_degraded_mode_falls_back_to_the_next_model(openai_server, make_agent, start, fast_breakers) -> None:
    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.default = openai_error(503, "down")
    agent = make_agent("test-llm", primary_model=f"{name}/gpt-local", fallback_models=["sim/sim-small"])
    run = execute(start(agent))
    assert run.status == RunStatus.SUCCEEDED
    step = Step.objects.get(run=run, kind=StepKind.LLM)
    assert step.model == "sim/sim-small" and step.simulated
    assert step.output["fallback_from"][0].startswith(f"{name}/gpt-local: ")


def test_degraded_mode_pause_does_not_fall_back(openai_server, make_agent, start, fast_breakers) -> None:
    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.default = openai_error(502, "bad gateway")
    agent = make_agent(
        "test-llm",
        primary_model=f"{name}/gpt-local",
        fallback_models=["sim/sim-small"],
        degraded_mode="pause",
    )
    run = execute(start(agent))
    assert run.status == RunStatus.PAUSED
    assert run.status_reason.startswith("model unavailable")
    assert not Step.objects.filter(run=run, model="sim/sim-small").exists()


def test_resuming_after_an_outage_retries_the_same_step(openai_server, make_agent, start, fast_breakers) -> None:
    from cockpit.audit import Actor
    from fleet import services

    name = provider(ProviderKind.OPENAI, openai_server.base_url)
    openai_server.script(openai_error(503, "down"), openai_error(503, "down"))
    agent = make_agent("test-llm", primary_model=f"{name}/gpt-local", degraded_mode="pause")
    run = execute(start(agent))
    assert run.status == RunStatus.PAUSED
    services.run_resume(actor=Actor.system("operator"), run=run)
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    steps = list(Step.objects.filter(run=run).order_by("seq"))
    assert len(steps) == 1 and steps[0].attempts == 3
