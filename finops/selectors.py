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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Count, DateTimeField, Max, Model, Q, QuerySet, Sum
from django.db.models.functions import Trunc
from django.http import Http404
from django.utils import timezone

from cockpit import access
from cockpit.models import Team
from cockpit.roles import TeamPerm
from finops.forecast import tag_filter
from finops.models import (
    Budget,
    BudgetAlert,
    BudgetPeriod,
    BudgetScope,
    BudgetSpend,
    CostRollup,
    CostRollupDay,
    Forecast,
    period_bounds,
)
from finops.rollups import day_of, hour_of
from fleet.models import FINAL_RUN_STATUSES, Agent, Run, RunKind, RunStatus, Step, StepKind, StepStatus

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
    priced_calls: int = 0  # spans with a cost

    @property
    def priced(self) -> str:
        """``yes``: every model call has a price; ``no``: none has (the cost is unknown, not
        zero); ``partly``: the cost counts the priced ones only."""
        if not self.unpriced:
            return "yes"
        return "partly" if self.priced_calls else "no"


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


# --- Scope and filters ------------------------------------------------------------------------

ZERO = Decimal(0)
AGENT_KEY_PREFIX = "key:"


def visible_team_ids(user: Any) -> set[int] | None:
    """Teams whose costs ``user`` may see; ``None`` means every team."""
    return access.principal_team_ids(user, TeamPerm.VIEW_COSTS)


def _agent_q(keys: Iterable[str]) -> Q:
    ids = [int(k) for k in keys if k.isdigit()]
    names = [k[len(AGENT_KEY_PREFIX) :] for k in keys if k.startswith(AGENT_KEY_PREFIX)]
    query = Q(pk__in=[])
    if ids:
        query |= Q(agent_id__in=ids)
    if names:
        query |= Q(agent_id=0, agent_key__in=names)
    return query


def _version_q(keys: Iterable[str]) -> Q:
    query = Q(pk__in=[])
    for key in keys:
        agent, _, version = key.rpartition("@")
        query |= _agent_q([agent]) & Q(agent_version=version)
    return query


def rollups_for(user: Any, filters: CostFilter | None) -> QuerySet[CostRollup]:
    """The hourly rollup rows ``user`` may see, narrowed by ``filters``."""
    rows = access.scope_to_principal(CostRollup.objects.all(), user, TeamPerm.VIEW_COSTS)
    if filters is None:
        return rows
    return _narrowed(rows.filter(hour__gte=hour_of(filters.since), hour__lt=filters.until), filters)


Part = tuple[QuerySet[Any], str]  # rollup rows, and the name of their time column


def rollup_parts(user: Any, filters: CostFilter) -> list[Part]:
    """The rollups of ``filters``' range as few rows as possible: its whole days (in
    ``TIME_ZONE``) from the daily table, the hours before the first and after the last midnight
    from the hourly one. Sums over the parts equal sums over the hourly rows alone."""
    start, end = hour_of(filters.since), filters.until
    first = day_of(start)
    if first < start:
        first = day_of(first + timedelta(hours=36))
    last = day_of(end)
    if last <= first:
        return [(rollups_for(user, filters), "hour")]
    hourly = access.scope_to_principal(CostRollup.objects.all(), user, TeamPerm.VIEW_COSTS)
    daily = access.scope_to_principal(CostRollupDay.objects.all(), user, TeamPerm.VIEW_COSTS)
    parts: list[Part] = [(_narrowed(daily.filter(day__gte=first, day__lt=last), filters), "day")]
    if start < first:
        parts.append((_narrowed(hourly.filter(hour__gte=start, hour__lt=first), filters), "hour"))
    if last < end:
        parts.append((_narrowed(hourly.filter(hour__gte=last, hour__lt=end), filters), "hour"))
    return parts


def _narrowed[M: Model](rows: QuerySet[M], filters: CostFilter) -> QuerySet[M]:
    if filters.teams:
        rows = rows.filter(team_id__in=filters.teams)
    if filters.agents:
        rows = rows.filter(_agent_q(filters.agents))
    if filters.agent_versions:
        rows = rows.filter(_version_q(filters.agent_versions))
    if filters.workflows:
        rows = rows.filter(workflow__in=filters.workflows)
    if filters.models:
        rows = rows.filter(model__in=filters.models)
    if filters.providers:
        rows = rows.filter(provider__in=filters.providers)
    if filters.tags:
        tag_q = Q(pk__in=[])
        for tag in filters.tags:
            tag_q |= Q(tag=tag) if tag == "" or ";" in tag else tag_filter(tag)
        rows = rows.filter(tag_q)
    return rows


def _runs_for(user: Any, filters: CostFilter) -> QuerySet[Run]:
    runs = access.scope_to_principal(Run.objects.all(), user, TeamPerm.VIEW_COSTS).filter(
        created_at__gte=filters.since, created_at__lt=filters.until
    )
    if filters.teams:
        runs = runs.filter(team_id__in=filters.teams)
    agent_ids = [int(k) for k in filters.agents if k.isdigit()]
    if filters.agents:
        runs = runs.filter(agent_id__in=agent_ids)
    if filters.workflows:
        runs = runs.filter(agent__entrypoint__in=filters.workflows)
    return runs


GROUP_FIELDS: dict[str, tuple[str, ...]] = {
    "team": ("team_id",),
    "agent": ("agent_id", "agent_key"),
    "agent_version": ("agent_id", "agent_key", "agent_version"),
    "workflow": ("workflow",),
    "model": ("model",),
    "provider": ("provider",),
    "tag": ("tag",),
}


def _check_dimension(dimension: str) -> tuple[str, ...]:
    if dimension not in GROUP_FIELDS:
        raise ValueError(f"{dimension!r} is not a cost dimension ({', '.join(DIMENSIONS)})")
    return GROUP_FIELDS[dimension]


class _Labels:
    """Names for teams and agents, read once per call."""

    def __init__(self) -> None:
        self._teams: dict[int, str] | None = None
        self._agents: dict[int, str] = {}

    def team(self, pk: int) -> str:
        if self._teams is None:
            self._teams = dict(Team.objects.values_list("pk", "name"))
        return self._teams.get(pk, f"team #{pk}")

    def load_agents(self, ids: Iterable[int]) -> None:
        wanted = {i for i in ids if i and i not in self._agents}
        if wanted:
            self._agents.update(Agent.objects.filter(pk__in=wanted).values_list("pk", "name"))

    def agent(self, pk: int, key: str) -> str:
        if pk:
            return self._agents.get(pk, f"agent #{pk}")
        return f"{key} (not in the fleet)" if key else "(no agent)"

    def group(self, dimension: str, row: dict[str, Any]) -> Group:
        if dimension == "team":
            return Group(str(row["team_id"]), self.team(row["team_id"]))
        if dimension in ("agent", "agent_version"):
            agent_key = str(row["agent_id"]) if row["agent_id"] else f"{AGENT_KEY_PREFIX}{row['agent_key']}"
            label = self.agent(row["agent_id"], row["agent_key"])
            if dimension == "agent":
                return Group(agent_key, label)
            version = row["agent_version"]
            return Group(f"{agent_key}@{version}", f"{label} {version or '(no version)'}")
        value = row[dimension]
        empty = {"workflow": "(no workflow)", "model": "(no model)", "provider": "(no provider)", "tag": "(untagged)"}
        return Group(value, value or empty[dimension])


def _trunc(bucket: str, field: str = "hour") -> Trunc:
    if bucket not in ("hour", "day", "week", "month"):
        raise ValueError(f"{bucket!r} is not a bucket (hour, day, week, month)")
    tz = UTC if bucket == "hour" else timezone.get_current_timezone()
    return Trunc(field, bucket, output_field=DateTimeField(), tzinfo=tz)


def _bucketed(
    user: Any, filters: CostFilter, bucket: str, fields: Iterable[str], sums: Iterable[str]
) -> list[dict[str, Any]]:
    """Sums per ``bucket`` and combination of ``fields``, over the parts of the range (hourly
    buckets from the hourly rows alone)."""
    parts = [(rollups_for(user, filters), "hour")] if bucket == "hour" else rollup_parts(user, filters)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows, time_field in parts:
        found = (
            rows.annotate(bucket=_trunc(bucket, time_field))
            .values("bucket", *fields)
            .annotate(**{name: Sum(name) for name in sums})
            .order_by()
        )
        for row in found:
            key = (row["bucket"], *(row[f] for f in fields))
            into = merged.get(key)
            if into is None:
                merged[key] = dict(row)
                continue
            for name in sums:
                into[name] = (into[name] or 0) + (row[name] or 0)
    return sorted(merged.values(), key=lambda r: r["bucket"])


def _period_label(moment: datetime, bucket: str) -> str:
    local = timezone.localtime(moment)
    if bucket == "month":
        return local.strftime("%Y-%m")
    if bucket == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if bucket == "day":
        return local.strftime("%Y-%m-%d")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")


def _money(value: Any) -> Decimal:
    return Decimal(value or 0).quantize(PLACES)


PLACES = Decimal("0.000001")


# --- Headline figures -------------------------------------------------------------------------


def burn_rate(user: Any, *, filters: CostFilter | None = None, now: datetime | None = None) -> BurnRate:
    """$/h over the last 60 minutes (the current hour's spend plus the elapsed share of the
    previous hour's). Live: the dashboard re-fetches on ``finops.cost`` events."""
    now = now or timezone.now()
    current = hour_of(now)
    rows = rollups_for(user, _without_time(filters)).filter(hour__in=[current - timedelta(hours=1), current])
    by_hour = {hour_of(r["hour"]): r["cost"] or ZERO for r in rows.values("hour").annotate(cost=Sum("cost"))}
    elapsed = Decimal((now - current).total_seconds() / 3600).quantize(PLACES)
    previous = by_hour.get(current - timedelta(hours=1), ZERO)
    rate = by_hour.get(current, ZERO) + previous * (Decimal(1) - elapsed)
    return BurnRate(_money(rate), now)


def _without_time(filters: CostFilter | None) -> CostFilter | None:
    if filters is None:
        return None
    return replace(filters, since=datetime(1970, 1, 1, tzinfo=UTC), until=datetime(9999, 1, 1, tzinfo=UTC))


def today_vs_yesterday(
    user: Any, *, filters: CostFilter | None = None, now: datetime | None = None
) -> TodayVsYesterday:
    now = now or timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = midnight - timedelta(days=1)
    rows = rollups_for(user, _without_time(filters)).filter(hour__gte=hour_of(yesterday), hour__lt=now)
    same_time = hour_of(now) - timedelta(days=1)
    totals = rows.aggregate(
        today=Sum("cost", filter=Q(hour__gte=hour_of(midnight))),
        same=Sum("cost", filter=Q(hour__lt=hour_of(midnight), hour__lte=same_time)),
        whole=Sum("cost", filter=Q(hour__lt=hour_of(midnight))),
    )
    today, same = _money(totals["today"]), _money(totals["same"])
    change = float(today / same - 1) if same else None
    return TodayVsYesterday(today, same, _money(totals["whole"]), change)


def total_cost(user: Any, *, filters: CostFilter) -> Decimal:
    """The total the dashboard headline shows for ``filters`` (what the CSV must add up to)."""
    return _money(sum((rows.aggregate(c=Sum("cost"))["c"] or ZERO for rows, _ in rollup_parts(user, filters)), ZERO))


# --- Breakdowns -------------------------------------------------------------------------------
#
# Every breakdown is derived from rows of rollup sums grouped by some dimension fields (the
# ``_spenders``, ``_tokens``, ``_waste``, ``_unpriced`` and ``_values`` helpers below). The single
# selectors read only the fields they need; ``overview`` reads every dimension at once and
# derives all of them from the same rows, so the dashboard and the selectors cannot disagree.

SUMS = (
    "cost",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "spans",
    "llm_spans",
    "errors",
    "unpriced",
    "error_cost",
    "retries",
    "retry_cost",
)
DIMENSION_FIELDS = ("team_id", "agent_id", "agent_key", "workflow", "model", "provider", "tag")


def _group_rows(rows: QuerySet[Any], fields: Iterable[str], time_field: str = "hour") -> list[dict[str, Any]]:
    """Sums of ``rows`` per combination of ``fields``, with the latest hour seen (``last_hour``;
    from the daily table, the start of the latest day)."""
    found = rows.values(*fields).annotate(**{name: Sum(name) for name in SUMS}, last_hour=Max(time_field)).order_by()
    # (a group whose spans all moved to their trace's agent keeps a row of zeros: not a group)
    return [r for r in found if r["spans"] or r["cost"]]


def _group_parts(
    user: Any, filters: CostFilter, fields: Iterable[str], *, with_model: bool = False
) -> list[dict[str, Any]]:
    """``_group_rows`` over the parts of the range (whole days from the daily rollups), merged."""
    fields = tuple(fields)
    rows: list[dict[str, Any]] = []
    for part, time_field in rollup_parts(user, filters):
        rows += _group_rows(part.exclude(model="") if with_model else part, fields, time_field)
    return _merge(rows, fields)


def _merge(rows: Iterable[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """``rows`` re-grouped by ``fields`` (some of theirs): sums added, the latest hour kept."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[f] for f in fields)
        into = merged.get(key)
        if into is None:
            merged[key] = {
                **{f: row[f] for f in fields},
                **{s: row[s] or 0 for s in SUMS},
                "last_hour": row["last_hour"],
            }
            continue
        for name in SUMS:
            into[name] += row[name] or 0
        into["last_hour"] = max(into["last_hour"], row["last_hour"])
    return list(merged.values())


def _grouped(user: Any, filters: CostFilter, dimension: str) -> list[dict[str, Any]]:
    return _group_parts(user, filters, _check_dimension(dimension))


def _labels_for(rows: Iterable[dict[str, Any]]) -> _Labels:
    labels = _Labels()
    labels.load_agents(r["agent_id"] for r in rows if "agent_id" in r)
    return labels


def _spenders(rows: list[dict[str, Any]], dimension: str, labels: _Labels, limit: int) -> list[Spender]:
    merged = _merge(rows, _check_dimension(dimension))
    total = sum((r["cost"] for r in merged), ZERO)
    spenders = [
        Spender(
            labels.group(dimension, r),
            _money(r["cost"]),
            float(r["cost"] / total) if total else 0.0,
            int(r["spans"]),
            int(r["unpriced"]),
        )
        for r in merged
    ]
    spenders.sort(key=lambda s: (-s.cost, s.group.label, s.group.key))
    return spenders[:limit]


def _values(rows: list[dict[str, Any]], dimension: str, labels: _Labels) -> list[Group]:
    merged = _merge(rows, _check_dimension(dimension))
    return sorted({labels.group(dimension, r) for r in merged}, key=lambda g: (g.label.lower(), g.key))


def _tokens(rows: list[dict[str, Any]]) -> list[ModelTokens]:
    result = [
        ModelTokens(
            r["provider"],
            r["model"],
            int(r["input_tokens"]),
            int(r["output_tokens"]),
            int(r["cache_read_tokens"]),
            int(r["reasoning_tokens"]),
            _money(r["cost"]),
            int(r["llm_spans"]),
        )
        for r in _merge((r for r in rows if r["model"]), ("provider", "model"))
    ]
    result.sort(key=lambda m: (-(m.input_tokens + m.output_tokens), m.model, m.provider))
    return result


def _waste(
    rows: list[dict[str, Any]], dimension: str, labels: _Labels, failed_runs: dict[str, tuple[Decimal, int]]
) -> list[WasteRow]:
    result = []
    for r in _merge(rows, _check_dimension(dimension)):
        group = labels.group(dimension, r)
        run_cost, run_count = failed_runs.get(group.key, (ZERO, 0))
        if not (r["error_cost"] or r["retry_cost"] or r["errors"] or r["retries"] or run_count):
            continue
        result.append(
            WasteRow(
                group,
                _money(r["error_cost"]),
                int(r["errors"]),
                _money(r["retry_cost"]),
                int(r["retries"]),
                run_cost,
                run_count,
                _money(r["cost"]),
            )
        )
    result.sort(key=lambda w: (-(w.failed_span_cost + w.retry_cost + w.failed_run_cost), w.group.label, w.group.key))
    return result


def _unpriced(rows: list[dict[str, Any]], labels: _Labels) -> list[UnpricedModel]:
    """Per model with unpriced calls in the range: how many, the tokens of its calls in the
    range, the teams that made them, and the last hour it was seen."""
    by_team = [r for r in _merge(rows, ("provider", "model", "team_id")) if r["unpriced"] and r["model"]]
    teams: dict[tuple[str, str], set[str]] = {}
    for r in by_team:
        teams.setdefault((r["provider"], r["model"]), set()).add(labels.team(r["team_id"]))
    result = []
    for r in _merge(by_team, ("provider", "model")):
        result.append(
            UnpricedModel(
                r["provider"],
                r["model"],
                int(r["unpriced"]),
                int(r["input_tokens"]),
                int(r["output_tokens"]),
                sorted(teams[(r["provider"], r["model"])]),
                r["last_hour"],
            )
        )
    result.sort(key=lambda u: (-u.spans, u.model, u.provider))
    return result


def cost_over_time(
    user: Any, *, filters: CostFilter, group_by: Dimension = "team", bucket: Bucket = "day", top: int = 8
) -> list[Point]:
    """Cost per bucket per group (stacked charts); groups beyond the ``top`` costliest are
    folded into one ``Group("other", "Other")``."""
    fields = _check_dimension(group_by)
    rows = _bucketed(user, filters, bucket, fields, ("cost", "input_tokens", "output_tokens", "spans"))
    labels = _Labels()
    if group_by in ("agent", "agent_version"):
        labels.load_agents(r["agent_id"] for r in rows)
    totals: dict[Group, Decimal] = {}
    grouped = []
    for row in rows:
        if not row["spans"] and not row["cost"]:
            continue
        group = labels.group(group_by, row)
        totals[group] = totals.get(group, ZERO) + (row["cost"] or ZERO)
        grouped.append((row, group))
    kept = {g for g, _ in sorted(totals.items(), key=lambda item: (-item[1], item[0].label))[:top]}
    other = Group("other", "Other")
    points: dict[tuple[datetime, Group], list[Any]] = {}
    for row, group in grouped:
        key = (row["bucket"], group if group in kept else other)
        sums = points.setdefault(key, [ZERO, 0, 0, 0])
        sums[0] += row["cost"] or ZERO
        sums[1] += row["input_tokens"] or 0
        sums[2] += row["output_tokens"] or 0
        sums[3] += row["spans"] or 0
    return [
        Point(bucket_at, group, _money(s[0]), int(s[1]), int(s[2]), int(s[3]))
        for (bucket_at, group), s in sorted(points.items(), key=lambda item: (item[0][0], -item[1][0]))
    ]


def top_spenders(user: Any, *, filters: CostFilter, dimension: Dimension = "agent", limit: int = 10) -> list[Spender]:
    rows = _grouped(user, filters, dimension)
    return _spenders(rows, dimension, _labels_for(rows), limit)


def dimension_values(user: Any, *, filters: CostFilter, dimension: Dimension) -> list[Group]:
    """The values a filter drop-down offers (groups with any spans in the range)."""
    rows = _grouped(user, filters, dimension)
    return _values(rows, dimension, _labels_for(rows))


def tokens_by_model(user: Any, *, filters: CostFilter) -> list[ModelTokens]:
    return _tokens(_group_parts(user, filters, ("provider", "model"), with_model=True))


def waste(user: Any, *, filters: CostFilter, dimension: Dimension = "agent") -> list[WasteRow]:
    """Per group: the cost of failed spans and of spans that needed retries (from the rollups),
    and — per agent or team — what its failed and cancelled runs cost."""
    rows = _grouped(user, filters, dimension)
    failed = _failed_runs(_run_rows(user, filters, None), dimension)
    return _waste(rows, dimension, _labels_for(rows), failed)


def unpriced_models(user: Any, *, filters: CostFilter | None = None) -> list[UnpricedModel]:
    """Models seen with usage but no price (no override, unknown to genai-prices): their spend
    is unknown, not zero — pages show this list prominently. Default range: the last 30 days."""
    if filters is None:
        now = timezone.now()
        filters = CostFilter(since=now - timedelta(days=30), until=now + timedelta(hours=1))
    rows = _group_parts(user, filters, ("provider", "model", "team_id"), with_model=True)
    return _unpriced(rows, _Labels())


def chargeback(
    user: Any,
    *,
    filters: CostFilter,
    dimensions: tuple[Dimension, ...] = ("team",),
    bucket: Bucket = "month",
) -> list[ChargebackRow]:
    """Rows by period × dimensions (team × month by default) for the chargeback CSV."""
    fields: list[str] = []
    for dimension in dimensions:
        for name in _check_dimension(dimension):
            if name not in fields:
                fields.append(name)
    sums = ("cost", "input_tokens", "output_tokens", "spans", "unpriced", "priced")
    rows = _bucketed(user, filters, bucket, fields, sums)
    labels = _Labels()
    if "agent_id" in fields:
        labels.load_agents(r["agent_id"] for r in rows)
    result = []
    for r in rows:
        groups = {d: labels.group(d, r) for d in dimensions}
        result.append(
            ChargebackRow(
                _period_label(r["bucket"], bucket),
                {d: g.label for d, g in groups.items()},
                {d: g.key for d, g in groups.items()},
                _money(r["cost"]),
                int(r["input_tokens"] or 0),
                int(r["output_tokens"] or 0),
                int(r["spans"] or 0),
                int(r["unpriced"] or 0),
                int(r["priced"] or 0),
            )
        )
    result.sort(key=lambda c: (c.period, [c.values[d] for d in dimensions]))
    return result


# --- Runs -------------------------------------------------------------------------------------

FAILED_RUN_STATUSES = (RunStatus.FAILED, RunStatus.CANCELLED)


def _run_rows(
    user: Any, filters: CostFilter, bucket: str | None, agent_ids: list[int] | None = None
) -> list[dict[str, Any]]:
    """Runs started in the range (of ``agent_ids`` only, if given), per agent (and ``bucket`` of
    their start): their cost and count, how many succeeded, and what the failed and cancelled
    ones cost."""
    runs = _runs_for(user, filters)
    if agent_ids is not None:
        runs = runs.filter(agent_id__in=agent_ids)
    keys = ["agent_id", "team_id"]
    if bucket is not None:
        if bucket not in ("hour", "day", "week", "month"):
            raise ValueError(f"{bucket!r} is not a bucket")
        tz = UTC if bucket == "hour" else timezone.get_current_timezone()
        runs = runs.annotate(bucket=Trunc("created_at", bucket, output_field=DateTimeField(), tzinfo=tz))
        keys.append("bucket")
    failed = Q(status__in=FAILED_RUN_STATUSES)
    return list(
        runs.values(*keys)
        .annotate(
            spent=Sum("cost"),
            count=Count("id"),
            succeeded=Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
            failed_cost=Sum("cost", filter=failed),
            failed=Count("id", filter=failed),
        )
        .order_by(*keys[2:])
    )


def _failed_runs(rows: list[dict[str, Any]], dimension: str) -> dict[str, tuple[Decimal, int]]:
    """What failed and cancelled runs cost, per agent or team key (other dimensions: nothing)."""
    if dimension not in ("agent", "team"):
        return {}
    field_name = "agent_id" if dimension == "agent" else "team_id"
    found: dict[str, tuple[Decimal, int]] = {}
    for r in rows:
        if r["failed"]:
            cost, count = found.get(str(r[field_name]), (ZERO, 0))
            found[str(r[field_name])] = (cost + _money(r["failed_cost"]), count + r["failed"])
    return found


def _per_run(totals: list[dict[str, Any]]) -> list[AgentRunCost]:
    """Per agent, from its rows of ``_run_rows`` (one per bucket, or one in all), costliest
    first; the trends are ``_with_trends``' to add."""
    sums: dict[int, list[Any]] = {}
    for r in totals:
        entry = sums.setdefault(r["agent_id"], [ZERO, 0, 0])
        entry[0] += _money(r["spent"])
        entry[1] += r["count"]
        entry[2] += r["succeeded"]
    agents = {a.pk: a for a in Agent.objects.filter(pk__in=sums).select_related("team")}
    result = []
    for agent_id, (cost, runs, succeeded) in sums.items():
        agent = agents.get(agent_id)
        result.append(
            AgentRunCost(
                agent_id,
                agent.name if agent else f"agent #{agent_id}",
                agent.team.name if agent else "",
                cost,
                runs,
                succeeded,
                (cost / succeeded).quantize(PLACES) if succeeded else None,
                [],
                None,
            )
        )
    result.sort(key=lambda a: (-a.cost, a.agent, a.agent_id))
    return result


def _with_trends(agents: list[AgentRunCost], rows: list[dict[str, Any]]) -> list[AgentRunCost]:
    """``agents`` with their trend per bucket from ``rows`` (bucketed ``_run_rows``), and the
    change of the cost per successful run between the last two buckets that had a success."""
    trends: dict[int, list[RunCostPoint]] = {}
    for r in rows:
        cost = _money(r["spent"])
        per = (cost / r["succeeded"]).quantize(PLACES) if r["succeeded"] else None
        trends.setdefault(r["agent_id"], []).append(RunCostPoint(r["bucket"], cost, r["count"], r["succeeded"], per))
    result = []
    for agent in agents:
        trend = trends.get(agent.agent_id, [])
        with_success = [p.cost_per_success for p in trend if p.cost_per_success is not None]
        change = None
        if len(with_success) >= 2 and with_success[-2]:
            change = float(with_success[-1] / with_success[-2] - 1)
        result.append(replace(agent, trend=trend, change=change))
    return result


def _run_costs(
    user: Any, filters: CostFilter, bucket: str, trend_agents: int | None
) -> tuple[list[AgentRunCost], list[dict[str, Any]]]:
    """Cost per successful run per agent (trends for the ``trend_agents`` costliest, or all),
    and the runs' rows per agent. With many agents, the trends are read for a few only: the
    bucketed read is the costly one."""
    if trend_agents is None:
        rows = _run_rows(user, filters, bucket)
        return _with_trends(_per_run(rows), rows), rows
    totals = _run_rows(user, filters, None)
    ranked = _per_run(totals)
    wanted = [a.agent_id for a in ranked[:trend_agents]] if len(ranked) > trend_agents else None
    return _with_trends(ranked, _run_rows(user, filters, bucket, agent_ids=wanted)), totals


def cost_per_successful_run(
    user: Any, *, filters: CostFilter, bucket: Bucket = "day", trend_agents: int | None = None
) -> list[AgentRunCost]:
    """Per agent: cost of its runs started in the range divided by those that succeeded, with
    the trend per bucket (from ``fleet.Run``) — for every agent, or the ``trend_agents``
    costliest (the others' trend is empty)."""
    return _run_costs(user, filters, bucket, trend_agents)[0]


def costliest_runs(user: Any, *, filters: CostFilter, limit: int = 20) -> list[Run]:
    """Drill-down: the runs (``fleet.Run``, with agent and team) behind a number, costliest first.
    Model, provider and tag filters do not narrow runs (a run may use several)."""
    # The few ids first, then their rows: sorting narrow rows, not rows joined to their agent.
    ids = list(_runs_for(user, filters).order_by("-cost", "-id").values_list("pk", flat=True)[:limit])
    return list(Run.objects.filter(pk__in=ids).select_related("agent", "team").order_by("-cost", "-id"))


def routing_insight(
    user: Any, *, filters: CostFilter, agent_id: int | None = None, min_calls: int = 1
) -> list[RoutingRow]:
    """Per agent, LLM step name and model (managed runs' journal): calls, cost, and how the runs
    making such calls ended and how their approvals were decided."""
    steps = Step.objects.filter(
        kind=StepKind.LLM,
        run__kind=RunKind.MANAGED,  # external runs report steps without a cost of their own
        run__in=_runs_for(user, filters),
        status__in=[StepStatus.SUCCEEDED, StepStatus.FAILED],
    )
    if agent_id is not None:
        steps = steps.filter(run__agent_id=agent_id)
    rows = (
        steps.values("run__agent_id", "name", "model")
        .annotate(
            unpriced=Count("id", filter=Q(cost__isnull=True, status=StepStatus.SUCCEEDED)),
            failed=Count("id", filter=Q(status=StepStatus.FAILED)),
            calls=Count("id"),
            spent=Sum("cost"),
        )
        .order_by()
    )
    run_links = steps.values_list("run__agent_id", "name", "model", "run_id").distinct()
    runs_of: dict[tuple[int, str, str], set[int]] = {}
    for agent, name, model, run_id in run_links:
        runs_of.setdefault((agent, name, model), set()).add(run_id)
    all_runs = set().union(*runs_of.values()) if runs_of else set()
    outcome = dict(Run.objects.filter(pk__in=all_runs).values_list("pk", "status"))
    approvals: dict[int, list[int]] = {}
    for run_id, status in Step.objects.filter(
        run_id__in=all_runs, kind=StepKind.APPROVAL, status__in=[StepStatus.SUCCEEDED, StepStatus.FAILED]
    ).values_list("run_id", "status"):
        entry = approvals.setdefault(run_id, [0, 0])
        entry[0] += status == StepStatus.SUCCEEDED
        entry[1] += 1
    labels = _Labels()
    labels.load_agents(r["run__agent_id"] for r in rows)
    result = []
    for r in rows:
        if r["calls"] < min_calls:
            continue
        runs = runs_of.get((r["run__agent_id"], r["name"], r["model"]), set())
        ended = [outcome[i] for i in runs if outcome.get(i) in FINAL_RUN_STATUSES]
        approved = sum(approvals.get(i, [0, 0])[0] for i in runs)
        decided = sum(approvals.get(i, [0, 0])[1] for i in runs)
        priced_calls = r["calls"] - r["unpriced"] - r["failed"]
        cost = _money(r["spent"])
        result.append(
            RoutingRow(
                r["run__agent_id"],
                labels.agent(r["run__agent_id"], ""),
                r["name"],
                r["model"],
                r["calls"],
                cost,
                (cost / priced_calls).quantize(PLACES) if priced_calls > 0 and r["spent"] is not None else None,
                r["unpriced"],
                sum(1 for s in ended if s == RunStatus.SUCCEEDED) / len(ended) if ended else None,
                approved / decided if decided else None,
                r["failed"],
            )
        )
    result.sort(key=lambda x: (x.agent, x.step, -x.cost))
    return result


# --- The dashboard in one read ----------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """Every figure of the dashboard for one filter: what ``total_cost``, ``cost_over_time``,
    ``top_spenders``, ``tokens_by_model``, ``waste``, ``unpriced_models``,
    ``cost_per_successful_run`` and ``dimension_values`` return for it."""

    total: Decimal
    points: list[Point]
    spenders: list[Spender]
    tokens: list[ModelTokens]
    waste: list[WasteRow]
    unpriced: list[UnpricedModel]
    per_run: list[AgentRunCost]
    values: dict[str, list[Group]]


def overview(
    user: Any,
    *,
    filters: CostFilter,
    group_by: Dimension = "team",
    bucket: Bucket = "day",
    run_bucket: Bucket | None = None,
    top: int = 8,
    limit: int = 10,
    waste_by: Dimension = "agent",
    trend_agents: int | None = 12,
) -> Overview:
    """The dashboard's figures from a few reads: the rollups summed per combination of every
    dimension (a few hundred rows, whatever the range), the rollups per bucket of the chart's
    grouping, the runs per agent, and the runs per bucket of the ``trend_agents`` costliest."""
    fields = (*DIMENSION_FIELDS, "agent_version") if "agent_version" in (group_by, waste_by) else DIMENSION_FIELDS
    rows = _hashed(lambda: _group_parts(user, filters, fields))
    per_run, runs = _run_costs(user, filters, run_bucket or bucket, trend_agents)
    labels = _labels_for(rows)
    return Overview(
        total=_money(sum((r["cost"] for r in rows), ZERO)),
        points=cost_over_time(user, filters=filters, group_by=group_by, bucket=bucket, top=top),
        spenders=_spenders(rows, group_by, labels, limit),
        tokens=_tokens(rows),
        waste=_waste(rows, waste_by, labels, _failed_runs(runs, waste_by)),
        unpriced=_unpriced(rows, labels),
        per_run=per_run,
        values={d: _values(rows, d, labels) for d in ("team", "agent", "workflow", "model", "provider", "tag")},
    )


def _hashed[T](read: Callable[[], T]) -> T:
    """Run ``read`` with memory enough for PostgreSQL to hash its groups.

    Dimensions are correlated (an agent uses a few models, a workflow belongs to one agent), which
    the planner cannot know: it expects a hundred times more groups than there are, and with the
    default ``work_mem`` sorts the rows on disk instead of hashing them (3× slower). Extended
    statistics on the rollup table (``CREATE STATISTICS … (ndistinct)``) would tell it."""
    if connection.vendor != "postgresql":
        return read()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'")
        return read()


# --- Forecasts and budgets --------------------------------------------------------------------


def forecasts(user: Any, *, team_id: int | None = None, agent_id: int | None = None) -> list[Forecast]:
    """Stored forecasts (recomputed hourly) of team and agent spend to the end of the month."""
    rows = access.scope_to_principal(Forecast.objects.select_related("team", "agent"), user, TeamPerm.VIEW_COSTS)
    if team_id is not None:
        rows = rows.filter(team_id=team_id)
    if agent_id is not None:
        rows = rows.filter(agent_id=agent_id)
    return list(rows.order_by("team__name", "agent__name"))


def _visible_budgets(user: Any) -> QuerySet[Budget]:
    ids = visible_team_ids(user)
    budgets = Budget.objects.select_related("team", "agent")
    if ids is None:
        return budgets
    return budgets.filter(team_id__in=ids)


def budgets_for_user(user: Any) -> list[BudgetStatus]:
    """Active budgets the user may see, with the current period's spend and alerts."""
    return _statuses(list(_visible_budgets(user).filter(active=True)), timezone.now())


def inactive_budgets_for_user(user: Any) -> list[Budget]:
    """Budgets switched off that the user may see (the budgets page lists them to switch back on)."""
    return list(_visible_budgets(user).filter(active=False))


def budget_status(budget: Budget, *, now: datetime | None = None) -> BudgetStatus:
    return _statuses([budget], now or timezone.now())[0]


def _statuses(budgets: list[Budget], now: datetime) -> list[BudgetStatus]:
    """The statuses of ``budgets`` in a handful of queries, whatever their number."""
    periods: dict[int, tuple[str, datetime | None, datetime | None]] = {}
    for budget in budgets:
        if budget.period == BudgetPeriod.RUN:
            top = (
                BudgetSpend.objects.filter(budget=budget, updated_at__gte=now - timedelta(days=1))
                .order_by("-spent")
                .values_list("period", flat=True)
                .first()
            )
            periods[budget.pk] = (top or "", None, None)
        else:
            periods[budget.pk] = period_bounds(budget.period, now)
    wanted = Q(pk__in=[])
    for budget in budgets:
        if periods[budget.pk][0]:
            wanted |= Q(budget_id=budget.pk, period=periods[budget.pk][0])
    spent = {(b, p): v for b, p, v in BudgetSpend.objects.filter(wanted).values_list("budget_id", "period", "spent")}
    alerts: dict[tuple[int, str], list[BudgetAlert]] = {}
    for alert in BudgetAlert.objects.filter(wanted).order_by("-created_at", "-id"):
        alerts.setdefault((alert.budget_id, alert.period), []).append(alert)
    month_starts: set[datetime] = set()
    for budget in budgets:
        start = periods[budget.pk][1]
        if budget.period == BudgetPeriod.MONTH and start is not None:
            month_starts.add(start)
    team_ids = {b.team_id for b in budgets if b.team_id is not None}
    forecasts_by_key: dict[tuple[int | None, int | None, datetime | None], Decimal] = {
        (f.team_id, f.agent_id, f.period_start): f.projected_total
        for f in Forecast.objects.filter(
            team_id__in=team_ids, period=BudgetPeriod.MONTH, period_start__in=month_starts
        )
    }
    statuses = []
    for budget in budgets:
        period, start, end = periods[budget.pk]
        amount = spent.get((budget.pk, period), ZERO) if period else ZERO
        forecast = None
        if budget.period == BudgetPeriod.MONTH and budget.scope in (BudgetScope.TEAM, BudgetScope.AGENT):
            agent_id = budget.agent_id if budget.scope == BudgetScope.AGENT else None
            forecast = forecasts_by_key.get((budget.team_id, agent_id, start))
        percent = float(amount / budget.limit_usd * 100) if budget.limit_usd else 0.0
        statuses.append(
            BudgetStatus(
                budget, period, start, end, _money(amount), percent, forecast, alerts.get((budget.pk, period), [])
            )
        )
    return statuses


def get_budget_for_user(user: Any, pk: int, perm: str) -> Budget:
    """One budget: 404 unless its team's costs are visible (budgets without a team:
    organisation-wide users), 403 unless ``perm`` (``TeamPerm.MANAGE`` to change it) is held."""
    budget = Budget.objects.select_related("team", "agent").filter(pk=pk).first()
    who = access.for_user(user)
    if budget is None or not who.can(TeamPerm.VIEW_COSTS, budget.team_id):
        raise Http404("No such budget.")
    if perm != TeamPerm.VIEW_COSTS and not who.can(perm, budget.team_id):
        raise PermissionDenied("Your role does not allow changing this budget.")
    return budget


def can_manage_budgets(user: Any, team_id: int | None) -> bool:
    """May ``user`` create or change budgets for ``team_id`` (``None``: budgets over every team)?"""
    return access.for_user(user).can(TeamPerm.MANAGE, team_id)
