"""The hard cap under real concurrency: 20 runs in parallel threads (each with its own
PostgreSQL connection), each fanning out four model calls at a time, race a cap of a few cents.
Every call reserves its worst case before it is made, so the spend never passes the cap — not
by one call — and the runs stop only once the next call might not fit."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from finops.models import BudgetPeriod, BudgetReservation, BudgetScope, BudgetSpend
from finops.services import budget_create
from fleet.models import ModelProvider, ProviderKind, Run, RunKind, RunStatus, Step
from fleet.providers import registry as providers
from fleet.providers.base import Usage
from fleet.providers.simulated import simulated_price
from fleet.runtime import executor
from tests.finops.conftest import SYSTEM

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 20
ROUNDS = 6  # fan-outs of WIDTH calls per run: 480 calls wanted, the cap allows about 120
WIDTH = 4
MAX_TOKENS = 64
LIMIT = Decimal("0.03")


@pytest.fixture
def slow_provider() -> None:
    """Simulated models answering in 20 ± 15 ms, so that calls of different runs overlap."""
    ModelProvider.objects.create(
        name="simslow", kind=ProviderKind.SIMULATED, options={"latency_ms": 20, "jitter_ms": 15}
    )
    providers.forget()


def race(agent, runs: list[Run]) -> None:  # noqa: ANN001
    barrier = threading.Barrier(len(runs))
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
        thread.join(300)
    assert not errors


@pytest.mark.parametrize("scope", [BudgetScope.AGENT, BudgetScope.TEAM])
def test_concurrent_fan_outs_never_pass_the_cap(make_agent, team, slow_provider, on_postgres, scope) -> None:  # noqa: ANN001
    if not on_postgres:
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises every transaction)")
    agent = make_agent(primary_model="simslow/sim-large", entrypoint="finops-fanout")
    cap = budget_create(
        actor=SYSTEM,
        name="racing",
        scope=scope,
        team=team,
        agent=agent if scope == BudgetScope.AGENT else None,
        period=BudgetPeriod.DAY,
        limit_usd=LIMIT,
    )
    runs = [
        Run.objects.create(
            team=team,
            agent=agent,
            version=agent.current_version,
            kind=RunKind.MANAGED,
            input={"rounds": ROUNDS, "width": WIDTH, "max_tokens": MAX_TOKENS},
        )
        for _ in range(RUNS)
    ]
    race(agent, runs)
    steps = Step.objects.filter(run__agent=agent, kind="llm", status="succeeded")
    spent = steps.aggregate(spent=Sum("cost"))["spent"]
    assert spent <= LIMIT, (spent, LIMIT, steps.count())  # zero overshoot
    assert BudgetSpend.objects.get(budget=cap).spent == spent  # every call charged, once
    # The runs stopped only when a call's worst case might not fit any more.
    worst = simulated_price("sim-large", Usage(input_tokens=10, output_tokens=MAX_TOKENS))
    assert spent > LIMIT - worst
    statuses = list(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", "status_reason"))
    assert all(status == RunStatus.PAUSED and reason.startswith("budget_exceeded") for status, reason in statuses)
    assert not BudgetReservation.objects.exists()
