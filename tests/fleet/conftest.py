from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

import tests.fleet.agents  # noqa: F401  (registers the test agents and tools)
from cockpit.audit import Actor
from fleet import seams
from fleet.models import Agent, AgentKind, ModelProvider, ProviderKind, Run, Tier
from fleet.providers import registry as providers
from fleet.runtime import executor
from fleet.services import agent_create, agent_version_create, run_create, tools_sync

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fleet_basics(db: None, settings: Any) -> None:
    """The simulated provider answering at once, and the tools mirrored into the database."""
    settings.COCKPIT = {
        **settings.COCKPIT,
        "RETRY_BASE_SECONDS": 0.01,
        "RETRY_MAX_WAIT_SECONDS": 0.05,
    }
    ModelProvider.objects.get_or_create(name="sim", defaults={"kind": ProviderKind.SIMULATED, "options": {}})
    providers.forget()
    tools_sync()


@pytest.fixture(autouse=True)
def _interim_gate() -> Iterator[None]:
    """Fleet's tests test the runtime against its own seam: the interim gate (tier 3–4
    side-effecting tools wait; an operator's resume approves). The approvals app's Cedar gate,
    which production registers, has tests of its own."""
    saved = seams.current.approval_gate
    seams.current.approval_gate = seams.InterimApprovalGate()
    yield
    seams.current.approval_gate = saved


@pytest.fixture
def make_agent(team):  # noqa: ANN001, ANN201
    """``make_agent("test-linear", tier=3, run_budget="0.01", fallback_models=[...])``"""

    def make(
        entrypoint: str,
        *,
        slug: str | None = None,
        tier: int = Tier.SUPERVISED,
        owner=None,  # noqa: ANN001
        kind: str = AgentKind.MANAGED,
        degraded_mode: str = "fallback",
        **version: Any,
    ) -> Agent:
        agent = agent_create(
            actor=SYSTEM,
            team=owner or team,
            slug=slug or entrypoint,
            name=entrypoint.title(),
            kind=kind,
            entrypoint=entrypoint,
            tier=tier,
            degraded_mode=degraded_mode,
        )
        if kind == AgentKind.MANAGED:
            budget = version.pop("run_budget", None)
            agent_version_create(
                actor=SYSTEM,
                agent=agent,
                version=version.pop("version", "1.0.0"),
                primary_model=version.pop("primary_model", "sim/sim-small"),
                run_budget=Decimal(budget) if budget else None,
                **version,
            )
            agent.refresh_from_db()
        return agent

    return make


@pytest.fixture
def start(django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    """``start(agent, **input)`` → the run, created but not yet executed."""

    def start_run(agent: Agent, **input: Any) -> Run:
        with django_capture_on_commit_callbacks(execute=False):
            run, _ = run_create(actor=SYSTEM, agent=agent, input=input)
        return run

    return start_run


def execute(run: Run) -> Run:
    """One worker execution of the run, in this process; returns the run as it is after."""
    executor.execute(run.pk)
    return Run.objects.get(pk=run.pk)
