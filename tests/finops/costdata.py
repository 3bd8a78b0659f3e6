"""Cost data for the dashboard, export and budgets page tests: hourly rollup rows written as the
ingest path writes them (the pages read nothing else), and runs with their cost."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from cockpit.audit import Actor
from cockpit.models import Team
from finops import rollups
from finops.models import CostRollup
from finops.rollups import hour_of
from fleet.models import Agent, AgentKind, Run, RunKind, RunStatus

SYSTEM = Actor.system("tests")


def agent(team: Team, slug: str, name: str | None = None) -> Agent:
    found, _ = Agent.objects.get_or_create(
        team=team, slug=slug, defaults={"name": name or slug.replace("-", " ").title(), "kind": AgentKind.EXTERNAL}
    )
    return found


def rollup(
    team: Team,
    *,
    at: datetime | None = None,
    agent: Agent | None = None,
    agent_key: str = "",
    model: str = "gpt-4o",
    provider: str = "openai",
    workflow: str = "",
    tag: str = "",
    cost: str | Decimal = "1.00",
    spans: int = 10,
    input_tokens: int = 1000,
    output_tokens: int = 200,
    cache_read_tokens: int = 0,
    unpriced: int = 0,
    errors: int = 0,
    error_cost: str | Decimal = "0",
    retries: int = 0,
    retry_cost: str | Decimal = "0",
    **extra: Any,
) -> CostRollup:
    row = CostRollup.objects.create(
        hour=hour_of(at or timezone.now()),
        team=team,
        agent_id=agent.pk if agent else 0,
        agent_key="" if agent else agent_key,
        workflow=workflow,
        model=model,
        provider=provider,
        tag=tag,
        cost=Decimal(cost),
        spans=spans,
        llm_spans=spans - unpriced if model else 0,
        priced=spans - unpriced,
        unpriced=unpriced,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        errors=errors,
        error_cost=Decimal(error_cost),
        retries=retries,
        retry_cost=Decimal(retry_cost),
        **extra,
    )
    rollups.rebuild_day(rollups.day_of(row.hour), team_ids=[team.pk])  # the daily rows, as ingest keeps them
    return row


def run(
    of: Agent,
    *,
    cost: str = "0.50",
    status: str = RunStatus.SUCCEEDED,
    at: datetime | None = None,
    kind: str = RunKind.EXTERNAL,
    **extra: Any,
) -> Run:
    created = at or timezone.now() - timedelta(minutes=5)
    return Run.objects.create(
        team=of.team,
        agent=of,
        kind=kind,
        status=status,
        cost=Decimal(cost),
        created_at=created,
        started_at=created,
        ended_at=created + timedelta(seconds=30) if status in (RunStatus.SUCCEEDED, RunStatus.FAILED) else None,
        **extra,
    )
