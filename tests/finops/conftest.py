from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

import tests.finops.agents  # noqa: F401  (registers the test agent)
from cockpit.audit import Actor
from cockpit.models import Team
from finops import budgets, prices
from fleet.models import Agent, AgentKind, ModelProvider, ProviderKind, Run
from fleet.providers import registry as providers
from fleet.runtime import executor
from fleet.services import agent_create, agent_version_create, run_create, tools_sync
from fleet.telemetry import flush
from traces import store
from traces.semconv import SpanType

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _finops_basics(db: None, settings: Any) -> Iterator[None]:
    settings.COCKPIT = {**settings.COCKPIT, "RETRY_BASE_SECONDS": 0.01, "RETRY_MAX_WAIT_SECONDS": 0.05}
    ModelProvider.objects.get_or_create(name="sim", defaults={"kind": ProviderKind.SIMULATED, "options": {}})
    providers.forget()
    tools_sync()
    prices.overrides.invalidate()
    budgets.forget_budgets()
    yield
    prices.overrides.invalidate()
    budgets.forget_budgets()


@pytest.fixture
def make_agent(team: Team):  # noqa: ANN201
    def make(
        slug: str = "spender",
        *,
        owner: Team | None = None,
        kind: str = AgentKind.MANAGED,
        primary_model: str = "sim/sim-large",
        fallback_models: list[str] | None = None,
        entrypoint: str = "finops-spender",
    ) -> Agent:
        agent = agent_create(
            actor=SYSTEM,
            team=owner or team,
            slug=slug,
            name=slug.replace("-", " ").title(),
            kind=kind,
            entrypoint=entrypoint if kind == AgentKind.MANAGED else "",
        )
        if kind == AgentKind.MANAGED:
            agent_version_create(
                actor=SYSTEM,
                agent=agent,
                version="1.0.0",
                primary_model=primary_model,
                fallback_models=fallback_models or [],
            )
            agent.refresh_from_db()
        return agent

    return make


@pytest.fixture
def start(django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    def start_run(agent: Agent, **input: Any) -> Run:
        with django_capture_on_commit_callbacks(execute=False):
            run, _ = run_create(actor=SYSTEM, agent=agent, input=input)
        return run

    return start_run


@pytest.fixture
def execute(django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    """``execute(run)``: one worker execution in this process, its on-commit work (spans,
    tasks, live events) done, the runtime's spans stored; returns the run as it is after."""

    def run_it(run: Run) -> Run:
        with django_capture_on_commit_callbacks(execute=True):
            executor.execute(run.pk)
        flush()
        return Run.objects.get(pk=run.pk)

    return run_it


_ids = {"n": 0}


def span_row(
    *,
    start: datetime | None = None,
    model: str = "gpt-4o",
    provider: str = "openai",
    input_tokens: int | None = 1000,
    output_tokens: int | None = 500,
    cache_read_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    input_audio_tokens: int | None = None,
    output_audio_tokens: int | None = None,
    span_type: str = SpanType.LLM,
    status_code: int = 1,
    agent_key: str = "",
    attributes: dict[str, Any] | None = None,
    resource: dict[str, Any] | None = None,
    trace_id: str | None = None,
    cost: Decimal | None = None,
) -> dict[str, Any]:
    """A span row as ``traces.normalise`` makes them (what ``traces.store.write`` takes)."""
    _ids["n"] += 1
    n = _ids["n"]
    start = start or timezone.now()
    attrs = dict(attributes or {})
    if cost is not None:
        attrs["cockpit.cost_usd"] = float(cost)
    return {
        "trace_id": trace_id or f"{n:032x}",
        "span_id": f"{n:016x}",
        "parent_span_id": "",
        "name": f"chat {model}",
        "kind": 3,
        "span_type": span_type,
        "start_time": start,
        "end_time": start,
        "duration_us": 0,
        "status_code": status_code,
        "status_message": "",
        "error_type": "",
        "service_name": "svc",
        "scope_name": "tests",
        "agent_key": agent_key,
        "agent_name": "",
        "agent_version": "",
        "conversation_id": "",
        "model": model,
        "provider": provider,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "input_audio_tokens": input_audio_tokens,
        "output_audio_tokens": output_audio_tokens,
        "tool_name": "",
        "attributes": attrs,
        "events": [],
        "links": [],
        "resource": resource or {},
        "truncated": False,
        "received_at": timezone.now(),
    }


def write(team: Team, rows: list[dict[str, Any]]) -> store.Stored:
    return store.write(team, rows, now=timezone.now())


T = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
