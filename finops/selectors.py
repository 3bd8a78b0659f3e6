"""FinOps reads, permission-aware: what the dashboards, the CSV export and the API call.

Every selector takes the asking ``user`` (or API principal) first and only ever returns rows of
teams where it holds ``TeamPerm.VIEW_COSTS`` (finance of team A sees team A; admins and
organisation-wide finance see every team). Filters that name a team the user may not see
yield nothing for it (never an error that would reveal it exists).

Reads come from ``CostRollup`` (hourly, per dimension) — never from raw spans — except the
per-run figures (``Run.cost``/``status``) and the routing insight (the journal's steps).

Money is ``Decimal`` (USD, 6 places); hours are UTC, days/weeks/months in ``TIME_ZONE``.

Dimensions (``Dimension``): ``team``, ``agent``, ``agent_version``, ``workflow``, ``model``,
``provider``, ``tag``. A group's ``key`` is what to filter on (agent: its pk as a string, or
``"key:<sent name>"`` for an agent not in the fleet; others: the value itself, ``""`` for
none); its ``label`` is what to show.

Live events (``cockpit.live``, on the team's group; organisation budgets on ``org``):

* ``{"type": "finops.cost", "team": <id>}`` — spans with cost were stored for the team
  (coalesced per team): re-fetch the burn rate and the charts.
* ``{"type": "finops.budget", "budget": <id>, "team": <id|null>, "kind": "threshold" |
  "projected", "threshold": <percent>, "period": "2026-03", "action": "pause" | "degrade" |
  "alert", "alert": <BudgetAlert id>}`` — a budget crossed a threshold (or is projected to
  exceed its limit): show a banner; the text comes from re-fetching the budget through a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from finops.models import Budget, BudgetAlert, Forecast

Dimension = Literal["team", "agent", "agent_version", "workflow", "model", "provider", "tag"]
Bucket = Literal["hour", "day", "week", "month"]
DIMENSIONS: tuple[str, ...] = ("team", "agent", "agent_version", "workflow", "model", "provider", "tag")


@dataclass(frozen=True)
class CostFilter:
    """Time range ``[since, until)`` and optional dimension filters (each a set of keys)."""

    since: datetime
    until: datetime
    teams: frozenset[int] = frozenset()  # team pks
    agents: frozenset[str] = frozenset()  # group keys as above (pk or "key:<name>")
    agent_versions: frozenset[str] = frozenset()
    workflows: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Group:
    key: str
    label: str


@dataclass(frozen=True)
class Point:
    """One bar segment of a "cost over time" chart."""

    bucket: datetime
    group: Group
    cost: Decimal
    input_tokens: int
    output_tokens: int
    spans: int


@dataclass(frozen=True)
class Spender:
    group: Group
    cost: Decimal
    share: float  # of the total in the filter, 0..1
    spans: int
    unpriced: int


@dataclass(frozen=True)
class BurnRate:
    usd_per_hour: Decimal  # spend over the last 60 minutes
    as_of: datetime


@dataclass(frozen=True)
class TodayVsYesterday:
    today: Decimal  # since midnight
    yesterday_same_time: Decimal  # yesterday from midnight to the same time of day
    yesterday_total: Decimal
    change: float | None  # today / yesterday_same_time − 1 (None when yesterday was 0)


@dataclass(frozen=True)
class RunCostPoint:
    bucket: datetime
    cost: Decimal  # all runs started in the bucket (failed ones too: that is what success cost)
    runs: int
    succeeded: int
    cost_per_success: Decimal | None  # None when no run succeeded


@dataclass(frozen=True)
class AgentRunCost:
    agent_id: int
    agent: str
    team: str
    cost: Decimal
    runs: int
    succeeded: int
    cost_per_success: Decimal | None
    trend: list[RunCostPoint]
    change: float | None  # last bucket vs the one before


@dataclass(frozen=True)
class ModelTokens:
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    reasoning_tokens: int
    cost: Decimal
    spans: int


@dataclass(frozen=True)
class WasteRow:
    """Retry and failure waste of one group: what failed spans and failed runs cost, and the
    cost of spans that needed retries."""

    group: Group
    failed_span_cost: Decimal
    failed_spans: int
    retry_cost: Decimal
    retries: int
    failed_run_cost: Decimal
    failed_runs: int
    total_cost: Decimal


@dataclass(frozen=True)
class UnpricedModel:
    provider: str
    model: str
    spans: int
    input_tokens: int
    output_tokens: int
    teams: list[str]
    last_seen: datetime


@dataclass(frozen=True)
class ChargebackRow:
    """One CSV line: the period (``YYYY-MM`` for months), the group's values per dimension, and
    its totals. Sums over rows equal the dashboard's totals for the same filter to the cent."""

    period: str
    values: dict[str, str]  # dimension -> label
    keys: dict[str, str]  # dimension -> key
    cost: Decimal
    input_tokens: int
    output_tokens: int
    spans: int
    unpriced: int


@dataclass(frozen=True)
class RoutingRow:
    """Per agent, step name and model: cost and outcome, to see where a cheaper model does as
    well."""

    agent_id: int
    agent: str
    step: str
    model: str
    calls: int
    cost: Decimal
    cost_per_call: Decimal | None
    unpriced: int
    run_success_rate: float | None  # runs containing such a call that succeeded / ended
    approval_rate: float | None  # approvals in those runs approved / decided
    failed_calls: int


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period: str
    period_start: datetime | None
    period_end: datetime | None
    spent: Decimal
    percent: float
    forecast: Decimal | None  # projected spend at period end, when a forecast covers the scope
    alerts: list[BudgetAlert] = field(default_factory=list)


def _todo(*args: Any) -> Any:  # replaced as each selector is implemented
    raise NotImplementedError


def visible_team_ids(user: Any) -> set[int] | None:
    """Teams whose costs ``user`` may see; ``None`` means every team."""
    return _todo(user)


def burn_rate(user: Any, *, filters: CostFilter | None = None, now: datetime | None = None) -> BurnRate:
    """$/h over the last 60 minutes (the current hour's spend plus the elapsed share of the
    previous hour's). Live: the dashboard re-fetches on ``finops.cost`` events."""
    return _todo(user, filters, now)


def today_vs_yesterday(
    user: Any, *, filters: CostFilter | None = None, now: datetime | None = None
) -> TodayVsYesterday:
    return _todo(user, filters, now)


def cost_over_time(
    user: Any, *, filters: CostFilter, group_by: Dimension = "team", bucket: Bucket = "day", top: int = 8
) -> list[Point]:
    """Cost per bucket per group (stacked charts); groups beyond the ``top`` costliest are
    folded into one ``Group("other", "Other")``."""
    return _todo(user, filters, group_by, bucket, top)


def top_spenders(user: Any, *, filters: CostFilter, dimension: Dimension = "agent", limit: int = 10) -> list[Spender]:
    return _todo(user, filters, dimension, limit)


def total_cost(user: Any, *, filters: CostFilter) -> Decimal:
    """The total the dashboard headline shows for ``filters`` (what the CSV must add up to)."""
    return _todo(user, filters)


def cost_per_successful_run(user: Any, *, filters: CostFilter, bucket: Bucket = "day") -> list[AgentRunCost]:
    """Per agent: cost of its runs started in the range divided by those that succeeded, with
    the trend per bucket (from ``fleet.Run``)."""
    return _todo(user, filters, bucket)


def tokens_by_model(user: Any, *, filters: CostFilter) -> list[ModelTokens]:
    return _todo(user, filters)


def waste(user: Any, *, filters: CostFilter, dimension: Dimension = "agent") -> list[WasteRow]:
    return _todo(user, filters, dimension)


def unpriced_models(user: Any, *, filters: CostFilter | None = None) -> list[UnpricedModel]:
    """Models seen with usage but no price (no override, unknown to genai-prices): their spend
    is unknown, not zero — pages show this list prominently."""
    return _todo(user, filters)


def chargeback(
    user: Any,
    *,
    filters: CostFilter,
    dimensions: tuple[Dimension, ...] = ("team",),
    bucket: Bucket = "month",
) -> list[ChargebackRow]:
    """Rows by period × dimensions (team × month by default) for the chargeback CSV."""
    return _todo(user, filters, dimensions, bucket)


def dimension_values(user: Any, *, filters: CostFilter, dimension: Dimension) -> list[Group]:
    """The values a filter drop-down offers (groups with any spend in the range)."""
    return _todo(user, filters, dimension)


def costliest_runs(user: Any, *, filters: CostFilter, limit: int = 20) -> list[Any]:
    """Drill-down: the runs (``fleet.Run``, with agent and team) behind a number, costliest first."""
    return _todo(user, filters, limit)


def forecasts(user: Any, *, team_id: int | None = None, agent_id: int | None = None) -> list[Forecast]:
    """Stored forecasts (recomputed hourly) of team and agent spend to the end of the month."""
    return _todo(user, team_id, agent_id)


def routing_insight(
    user: Any, *, filters: CostFilter, agent_id: int | None = None, min_calls: int = 1
) -> list[RoutingRow]:
    return _todo(user, filters, agent_id, min_calls)


def budgets_for_user(user: Any) -> list[BudgetStatus]:
    """Active budgets the user may see, with the current period's spend and alerts."""
    return _todo(user)


def budget_status(budget: Budget, *, now: datetime | None = None) -> BudgetStatus:
    return _todo(budget, now)


def get_budget_for_user(user: Any, pk: int, perm: str) -> Budget:
    """One budget: 404 unless its team's costs are visible (global budgets: organisation-wide
    users), 403 unless ``perm`` (``TeamPerm.MANAGE`` to change it) is held."""
    return _todo(user, pk, perm)
