"""FinOps: the dashboard's server time over 10,000,000 spans' worth of hourly rollups.

90 days × 24 hours × 12 teams × 5 agents × 2 models each (plus a tag per team) make about
260,000 ``CostRollup`` rows whose span counts add up to exactly 10,000,000, written with COPY
(PostgreSQL; ``bulk_create`` elsewhere), and 150,000 runs over the same 90 days (the cost per
successful run, the waste table and the costliest runs read them). The data is made once per
database and reused (delete the ``bench-finops-*`` teams to rebuild it).

Then the dashboard is requested through the Django test client by a finance user holding the
role in every team (as views see real users: team-scoped, so every query carries the team
filter), ~30 times per page: p50 / p95 of the server time (target < 300 ms), and the number of
SQL queries per page.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.bench.util import percentile, summary_ms

TITLE = "FinOps: dashboard server time over 10,000,000 spans' worth of rollups"
TEAMS = 12
AGENTS_PER_TEAM = 5
MODELS = [
    ("gpt-4o", "openai", Decimal("0.012")),
    ("gpt-4o-mini", "openai", Decimal("0.0009")),
    ("claude-sonnet-4", "anthropic", Decimal("0.015")),
    ("claude-haiku-3.5", "anthropic", Decimal("0.002")),
    ("o3", "openai", Decimal("0.03")),
    ("llama-3.1-70b", "vllm", None),  # unpriced
]
DAYS = 90
TOTAL_SPANS = 10_000_000
RUNS = 150_000
SAMPLES = 30
PREFIX = "bench-finops"


def _teams_and_agents():  # noqa: ANN202
    from cockpit.models import Team
    from fleet.models import Agent, AgentKind

    teams, agents = [], []
    for t in range(TEAMS):
        team, _ = Team.objects.get_or_create(slug=f"{PREFIX}-{t}", defaults={"name": f"Bench team {t:02d}"})
        teams.append(team)
        for a in range(AGENTS_PER_TEAM):
            agent, _ = Agent.objects.get_or_create(
                team=team,
                slug=f"agent-{a}",
                defaults={"name": f"Agent {t:02d}-{a}", "kind": AgentKind.EXTERNAL},
            )
            agents.append(agent)
    return teams, agents


def _rollup_rows(agents, now: datetime) -> Iterator[tuple]:  # noqa: ANN001
    """Rows of (hour, team, agent, model, …) whose ``spans`` add up to TOTAL_SPANS exactly."""
    rng = random.Random(10)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=DAYS)
    hours = DAYS * 24
    combos = [(agent, MODELS[(i + k) % len(MODELS)]) for i, agent in enumerate(agents) for k in range(2)]
    per_row = TOTAL_SPANS // (hours * len(combos))
    left = TOTAL_SPANS - per_row * hours * len(combos)
    for h in range(hours):
        hour = start + timedelta(hours=h)
        for agent, (model, provider, price) in combos:
            spans = per_row + (1 if left > 0 else 0)
            left -= 1 if left > 0 else 0
            llm = spans // 2
            unpriced = llm if price is None else 0
            cost = (
                Decimal(0)
                if price is None
                else (price * llm * Decimal(rng.uniform(0.7, 1.3))).quantize(Decimal("0.000001"))
            )
            errors = rng.randint(0, 2)
            retries = rng.randint(0, 2)
            yield (
                hour,
                agent.team_id,
                agent.pk,
                "",
                "1.0.0",
                agent.slug,
                model,
                provider,
                f"cockpit.cost_center=cc-{agent.team_id % 4}",
                cost,
                llm * 1500,
                llm * 300,
                llm * 200,
                0,
                spans,
                llm,
                errors,
                llm - unpriced,
                unpriced,
                (cost * errors / max(llm, 1)).quantize(Decimal("0.000001")),
                retries,
                (cost * retries / max(llm, 1)).quantize(Decimal("0.000001")),
            )


def _fill(now: datetime) -> list[str]:
    from django.db import connection

    from finops.models import ROLLUP_KEY, ROLLUP_SUMS, CostRollup
    from fleet.models import Run

    teams, agents = _teams_and_agents()
    rollups = CostRollup.objects.filter(team__in=teams)
    have = rollups.count()
    if have and Run.objects.filter(team__in=teams).count() == RUNS:
        from finops.models import CostRollupDay
        from finops.rollups import days_from_hours

        if not CostRollupDay.objects.filter(team__in=teams).exists():
            days_from_hours(team_ids=[t.pk for t in teams])
        return [f"reusing {have:,} rollup rows and {RUNS:,} runs of {TEAMS} teams"]
    rollups.delete()
    Run.objects.filter(team__in=teams).delete()
    columns = [*ROLLUP_KEY, *ROLLUP_SUMS]
    started = time.perf_counter()
    rows = _rollup_rows(agents, now)
    count = 0
    if connection.vendor == "postgresql":
        copy_sql = f"COPY {CostRollup._meta.db_table} ({', '.join(columns)}) FROM STDIN"
        with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    else:
        batch = []
        for row in rows:
            batch.append(CostRollup(**dict(zip(columns, row, strict=True))))
            count += 1
            if len(batch) == 5000:
                CostRollup.objects.bulk_create(batch)
                batch = []
        CostRollup.objects.bulk_create(batch)
    from finops.rollups import days_from_hours

    days_from_hours(team_ids=[t.pk for t in teams])  # the daily rows ingest keeps beside the hourly ones
    filled = time.perf_counter() - started
    _fill_runs(agents, now)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {CostRollup._meta.db_table}")
            cursor.execute("ANALYZE finops_costrollupday")
            cursor.execute(f"ANALYZE {Run._meta.db_table}")
    return [f"wrote {count:,} rollup rows in {filled:.1f} s and {RUNS:,} runs ({time.perf_counter() - started:.1f} s)"]


def _fill_runs(agents, now: datetime) -> None:  # noqa: ANN001
    from fleet.models import Run, RunKind, RunStatus

    rng = random.Random(11)
    batch = []
    for n in range(RUNS):
        agent = agents[n % len(agents)]
        created = now - timedelta(seconds=rng.uniform(0, DAYS * 86400))
        status = RunStatus.SUCCEEDED if rng.random() < 0.9 else RunStatus.FAILED
        batch.append(
            Run(
                team_id=agent.team_id,
                agent=agent,
                kind=RunKind.EXTERNAL,
                status=status,
                cost=Decimal(rng.uniform(0.01, 2)).quantize(Decimal("0.000001")),
                created_at=created,
                started_at=created,
                ended_at=created + timedelta(seconds=30),
                tokens_in=rng.randint(1000, 50000),
                tokens_out=rng.randint(100, 5000),
            )
        )
        if len(batch) == 5000:
            Run.objects.bulk_create(batch)
            batch = []
    Run.objects.bulk_create(batch)


def _finance_user(teams):  # noqa: ANN001, ANN202
    from django.contrib.auth import get_user_model

    from cockpit.audit import Actor
    from cockpit.models import Membership
    from cockpit.roles import Role
    from cockpit.services import membership_grant

    user, _ = get_user_model().objects.get_or_create(username=f"{PREFIX}-finance")
    for team in teams:
        if not Membership.objects.filter(user=user, team=team, role=Role.FINANCE).exists():
            membership_grant(actor=Actor.system("bench"), user=user, team=team, role=Role.FINANCE)
    return user


def _get(client, path: str, headers: dict[str, str]) -> int:  # noqa: ANN001
    response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return len(body)


PAGES = {
    "dashboard, last 30 days (default)": ("/finops/?team=", {}),
    "dashboard, last 90 days": ("/finops/?range=90d&team=", {}),
    "dashboard, today": ("/finops/?range=today&team=", {}),
    "dashboard, 30 days, one agent": ("/finops/?team=&agent={agent}", {}),
    "dashboard, 30 days, grouped by model": ("/finops/?team=&group=model", {}),
    "live burn figure (htmx fragment)": (
        "/finops/?team=",
        {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "finops-burn"},
    ),
    "chargeback CSV, team × month, 90 days": ("/finops/chargeback.csv?range=90d&team=&by=team", {}),
    "chargeback CSV, team × agent × model × day, 30 days": (
        "/finops/chargeback.csv?team=&by=team&by=agent&by=model&bucket=day",
        {},
    ),
}


def run() -> Iterator[str]:
    from django.conf import settings
    from django.test import Client
    from django.test.utils import setup_test_environment

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    setup_test_environment()
    now = datetime.now(UTC)
    yield from _fill(now)
    teams, agents = _teams_and_agents()
    user = _finance_user(teams)
    client = Client()
    client.force_login(user)
    p50s = []
    yield f"finance user with the role in {len(teams)} teams; {SAMPLES} requests per page after one warm-up:"
    for label, (path, headers) in PAGES.items():
        url = path.format(agent=agents[0].pk)
        size = _get(client, url, headers)  # warm-up
        times = []
        for _ in range(SAMPLES):
            started = time.perf_counter()
            _get(client, url, headers)
            times.append(time.perf_counter() - started)
        p50s.append(percentile(times, 50))
        yield f"  {label}: {summary_ms(times)} · {size / 1024:.0f} KiB"
    worst = max(p50s) * 1000
    yield f"target < 300 ms: {'met' if worst < 300 else 'NOT met'} at p50 (worst page p50 {worst:.0f} ms)"
    yield f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
