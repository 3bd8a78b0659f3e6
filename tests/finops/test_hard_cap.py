"""The hard cap under real concurrency: runs of one agent in parallel threads (each with its own
PostgreSQL connection) race the cap; the spend ends at most one step's cost over it."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Max, Sum

from finops.models import BudgetHold, BudgetPeriod, BudgetScope, BudgetSpend
from finops.services import budget_create
from fleet.models import ModelProvider, ProviderKind, Run, RunKind, RunStatus, Step
from fleet.providers import registry as providers
from fleet.runtime import executor
from tests.finops.conftest import SYSTEM

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 6
STEPS = 25


@pytest.fixture
def slow_provider() -> None:
    """Simulated models answering in 20 ± 15 ms, so that steps of different runs overlap."""
    ModelProvider.objects.create(
        name="simslow", kind=ProviderKind.SIMULATED, options={"latency_ms": 20, "jitter_ms": 15}
    )
    providers.forget()


@pytest.mark.parametrize("scope", [BudgetScope.AGENT, BudgetScope.TEAM])
def test_concurrent_runs_overshoot_the_cap_by_at_most_one_step(
    make_agent, team, slow_provider, on_postgres, scope
) -> None:  # noqa: ANN001
    if not on_postgres:
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises every transaction)")
    agent = make_agent(primary_model="simslow/sim-large")
    limit = Decimal("0.004")  # about 16 of the 150 steps the runs would take
    cap = budget_create(
        actor=SYSTEM,
        name="racing",
        scope=scope,
        team=team,
        agent=agent if scope == BudgetScope.AGENT else None,
        period=BudgetPeriod.DAY,
        limit_usd=limit,
    )
    runs = [
        Run.objects.create(
            team=team, agent=agent, version=agent.current_version, kind=RunKind.MANAGED, input={"n": STEPS}
        )
        for _ in range(THREADS)
    ]
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(run_id: int) -> None:
        try:
            barrier.wait()
            executor.execute(run_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(run.pk,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    steps = Step.objects.filter(run__agent=agent, kind="llm")
    totals = steps.aggregate(spent=Sum("cost"), biggest=Max("cost"))
    spent, biggest = totals["spent"], totals["biggest"]
    assert limit <= spent <= limit + biggest, (spent, limit, biggest, steps.count())
    assert BudgetSpend.objects.get(budget=cap).spent == spent
    statuses = list(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", "status_reason"))
    assert all(status == RunStatus.PAUSED and reason.startswith("budget_exceeded") for status, reason in statuses)
    assert steps.count() < THREADS * STEPS
    assert not BudgetHold.objects.exists()
