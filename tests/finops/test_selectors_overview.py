"""``overview`` — the dashboard's figures in three reads — returns exactly what the single
selectors return for the same user and filters, on random spend across teams, agents (in the
fleet or not), models, workflows, tags and hours; and only the teams the user may see."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cockpit.roles import Role
from finops import selectors
from finops.selectors import CostFilter
from fleet.models import RunStatus
from tests.finops import costdata

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
RANGE = CostFilter(since=NOW - timedelta(days=20), until=NOW + timedelta(hours=1))


def random_spend(seed: int, teams) -> None:  # noqa: ANN001
    rng = random.Random(seed)
    agents = [costdata.agent(t, f"agent-{t.slug}-{n}") for t in teams for n in range(3)]
    for _ in range(120):
        agent = rng.choice(agents)
        in_fleet = rng.random() < 0.8
        errors = rng.choice([0, 0, 1, 2])
        costdata.rollup(
            agent.team,
            at=NOW - timedelta(hours=rng.randint(0, 24 * 25)),
            agent=agent if in_fleet else None,
            agent_key="" if in_fleet else rng.choice(["stray", "legacy"]),
            model=rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "house-llama", ""]),
            provider=rng.choice(["openai", "anthropic", "vllm"]),
            workflow=rng.choice(["", "triage", "refund"]),
            tag=rng.choice(["", "cockpit.cost_center=claims", "cockpit.cost_center=cx"]),
            cost=Decimal(rng.randint(0, 5_000_000)) / 1_000_000,
            spans=rng.randint(1, 50),
            unpriced=rng.choice([0, 0, 0, 3]),
            errors=errors,
            error_cost=Decimal(rng.randint(0, 9999)) / 1_000_000 if errors else Decimal(0),
            retries=rng.choice([0, 1]),
            retry_cost=Decimal(rng.randint(0, 9999)) / 1_000_000,
            cache_read_tokens=rng.randint(0, 500),
            input_tokens=rng.randint(500, 5000),
            output_tokens=rng.randint(10, 900),
        )
    for _ in range(40):
        agent = rng.choice(agents)
        status = rng.choice([RunStatus.SUCCEEDED, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED])
        costdata.run(
            agent, cost=str(rng.randint(1, 300) / 100), status=status, at=NOW - timedelta(hours=rng.randint(0, 480))
        )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("group_by", ["team", "agent", "model", "tag"])
def test_overview_equals_the_single_selectors(seed, group_by, superuser, make_user, team, other_team) -> None:  # noqa: ANN001
    random_spend(seed, [team, other_team])
    finance = make_user(Role.FINANCE, team)
    filters = [
        RANGE,
        CostFilter(since=RANGE.since, until=RANGE.until, models=frozenset({"gpt-4o"})),
        CostFilter(since=NOW - timedelta(days=3), until=RANGE.until, tags=frozenset({"cockpit.cost_center=cx"})),
    ]
    for user in (superuser, finance):
        for f in filters:
            got = selectors.overview(user, filters=f, group_by=group_by, bucket="day")
            assert got.total == selectors.total_cost(user, filters=f)
            assert got.points == selectors.cost_over_time(user, filters=f, group_by=group_by, bucket="day")
            assert got.spenders == selectors.top_spenders(user, filters=f, dimension=group_by)
            assert got.tokens == selectors.tokens_by_model(user, filters=f)
            assert got.waste == selectors.waste(user, filters=f, dimension="agent")
            assert got.unpriced == selectors.unpriced_models(user, filters=f)
            assert got.per_run == selectors.cost_per_successful_run(user, filters=f, bucket="day")
            few = selectors.overview(user, filters=f, group_by=group_by, trend_agents=2).per_run
            assert few == selectors.cost_per_successful_run(user, filters=f, trend_agents=2)
            # Trends for the two costliest only; every agent's totals all the same.
            assert [a.trend for a in few[:2]] == [a.trend for a in got.per_run[:2]]
            assert all(a.trend == [] and a.change is None for a in few[2:])
            assert [(a.agent_id, a.cost, a.runs, a.succeeded) for a in few] == [
                (a.agent_id, a.cost, a.runs, a.succeeded) for a in got.per_run
            ]
            for dimension in ("team", "agent", "workflow", "model", "provider", "tag"):
                assert got.values[dimension] == selectors.dimension_values(user, filters=f, dimension=dimension)
    # Finance of Alpha: Alpha's figures only, and they are not nothing.
    mine = selectors.overview(finance, filters=RANGE)
    assert {g.label for g in mine.values["team"]} == {"Alpha"}
    assert 0 < mine.total < selectors.overview(superuser, filters=RANGE).total
