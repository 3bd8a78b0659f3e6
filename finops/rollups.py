"""Hourly cost rollups, kept at ingest and rebuilt on demand.

``spans_stored`` (from ``traces.store``) hands over each batch of new span rows inside the
storing transaction; ``on_spans_stored`` folds them into ``CostRollup`` rows with one
``INSERT … ON CONFLICT DO UPDATE`` (``cockpit.bulk``), so a batch and its rollups commit or roll
back together. The rows are sorted by key, so concurrent batches lock
the rollup rows they share in the same order (no deadlocks).

``rebuild`` recomputes the rollups of a time range from the spans (after a reprice, or to
repair); ``reconcile`` compares rollups with span sums (``finops_reconcile``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Trunc
from django.utils import timezone

from cockpit import bulk, live
from finops.models import ROLLUP_KEY, ROLLUP_SUMS, CostRollup, CostRollupDay, RollupColumns
from traces.semconv import SpanType
from traces.signals import TraceBefore

# Spans whose tokens and cost are their own (the same set as the trace summaries use).
LEAF_TYPES = frozenset({SpanType.LLM, SpanType.EMBEDDING, SpanType.TOOL, SpanType.RETRIEVAL, SpanType.GUARDRAIL})
MODEL_TYPES = frozenset({SpanType.LLM, SpanType.EMBEDDING})
WORKFLOW_ATTRIBUTES = ("gen_ai.workflow.name", "traceloop.workflow.name")
ZERO = Decimal(0)

Key = tuple[Any, ...]


def tag_keys() -> tuple[str, ...]:
    return tuple(getattr(settings, "COCKPIT_FINOPS_TAG_KEYS", ("cockpit.cost_center",)))


def hour_of(moment: datetime) -> datetime:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _text(value: Any, limit: int) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)[:limit]


def workflow_of(attributes: dict[str, Any], resource: dict[str, Any]) -> str:
    for name in WORKFLOW_ATTRIBUTES:
        value = attributes.get(name) or resource.get(name)
        if value:
            return _text(value, 200)
    return ""


def tag_of(attributes: dict[str, Any], resource: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    parts = []
    for key in keys if keys is not None else tag_keys():
        value = attributes.get(key)
        if value is None or value == "":
            value = resource.get(key)
        if value is not None and value != "":
            parts.append(f"{key}={_text(value, 120)}")
    return ";".join(parts)[:200]


def tags_of(tag: str) -> set[str]:
    """``"a=1;b=2"`` → ``{"a=1", "b=2"}`` (what a tag budget matches against)."""
    return {part for part in tag.split(";") if part}


def attempts_of(attributes: dict[str, Any]) -> int:
    value = attributes.get("cockpit.attempts")
    if isinstance(value, bool) or value is None:
        return 1
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


class Dimensions(NamedTuple):
    """The rollup key of a span (without hour and team)."""

    agent_id: int
    agent_key: str
    agent_version: str
    workflow: str
    model: str
    provider: str
    tag: str


# The agent of a trace, for its spans that name none: (agent pk or 0, key as sent, version).
TraceAgent = tuple[int, str, str]


def has_agent(row: dict[str, Any]) -> bool:
    return bool(row.get("agent_id") or row.get("agent_key") or row.get("agent_name"))


def agent_of(row: dict[str, Any]) -> TraceAgent:
    agent_id = int(row.get("agent_id") or 0)
    key = "" if agent_id else _text(row.get("agent_key") or row.get("agent_name") or "", 200)
    return agent_id, key, _text(row.get("agent_version") or "", 100)


def dimensions_of(
    row: dict[str, Any], keys: tuple[str, ...] | None = None, inherited: TraceAgent | None = None
) -> Dimensions:
    """The span's dimensions; a span naming no agent takes its trace's (``inherited``).
    (Called for every span stored: ``has_agent``, ``agent_of`` and ``workflow_of`` inlined.)"""
    get = row.get
    attributes = get("attributes") or {}
    resource = get("resource") or {}
    agent_id = get("agent_id")
    named = agent_id or get("agent_key") or get("agent_name")
    if inherited is not None and not named:
        agent_id, agent_key, agent_version = inherited
    else:
        agent_id = int(agent_id or 0)
        agent_key = "" if agent_id else _text(get("agent_key") or get("agent_name") or "", 200)
        agent_version = _text(get("agent_version") or "", 100)
    workflow = ""
    for name in WORKFLOW_ATTRIBUTES:
        value = attributes.get(name) or resource.get(name)
        if value:
            workflow = _text(value, 200)
            break
    model = get("model") or ""
    provider = get("provider") or ""
    return Dimensions(
        agent_id,
        agent_key,
        agent_version,
        workflow,
        model[:200] if type(model) is str else _text(model, 200),
        provider[:100] if type(provider) is str else _text(provider, 100),
        tag_of(attributes, resource, keys) if keys is None or keys else "",
    )


class Accumulator:
    """Sums of span rows per rollup key."""

    def __init__(self) -> None:
        self.sums: dict[Key, list[Any]] = {}

    def add(
        self,
        row: dict[str, Any],
        team_id: int,
        keys: tuple[str, ...],
        inherited: TraceAgent | None = None,
        sign: int = 1,
    ) -> Dimensions:
        dims = dimensions_of(row, keys, inherited)
        key = (hour_of(row["start_time"]), team_id, *dims)
        sums = self.sums.get(key)
        if sums is None:
            sums = self.sums[key] = [ZERO, 0, 0, 0, 0, 0, 0, 0, 0, 0, ZERO, 0, ZERO]
        span_type = row["span_type"]
        cost = row.get("cost")
        leaf = span_type in LEAF_TYPES
        error = row.get("status_code") == 2
        retries = attempts_of(row.get("attributes") or {}) - 1 if leaf else 0
        if cost is not None:
            cost = cost * sign
            sums[0] += cost
            sums[8] += sign
            if error:
                sums[10] += cost
            if retries:
                sums[12] += cost
        if leaf:
            sums[1] += (row.get("input_tokens") or 0) * sign
            sums[2] += (row.get("output_tokens") or 0) * sign
            sums[3] += (row.get("cache_read_tokens") or 0) * sign
            sums[4] += (row.get("reasoning_tokens") or 0) * sign
            sums[11] += retries * sign
        sums[5] += sign
        if span_type in MODEL_TYPES:
            sums[6] += sign
            if cost is None and row.get("model") and (row.get("input_tokens") or row.get("output_tokens")):
                sums[9] += sign
        if error:
            sums[7] += sign
        return dims

    def rows(self) -> list[tuple[Any, ...]]:
        return [(*key, *sums) for key, sums in sorted(self.sums.items(), key=lambda item: _sort_key(item[0]))]

    def day_rows(self) -> list[tuple[Any, ...]]:
        """The same sums folded into days (``day_of`` each hour)."""
        days: dict[Key, list[Any]] = {}
        for key, sums in self.sums.items():
            day_key = (day_of(key[0]), *key[1:])
            total = days.get(day_key)
            if total is None:
                days[day_key] = list(sums)
            else:
                for i, value in enumerate(sums):
                    total[i] += value
        return [(*key, *sums) for key, sums in sorted(days.items(), key=lambda item: _sort_key(item[0]))]


def _sort_key(key: Key) -> tuple[Any, ...]:
    return (key[0].isoformat(), *key[1:])


def day_of(moment: datetime) -> datetime:
    """The start of the calendar day (in ``TIME_ZONE``) containing ``moment``."""
    return timezone.localtime(moment).replace(hour=0, minute=0, second=0, microsecond=0)


DAY_KEY = ("day", *ROLLUP_KEY[1:])


def _upsert_into(model: type[RollupColumns], key: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    table = model._meta.db_table
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in ROLLUP_SUMS)
    bulk.insert(model, [*key, *ROLLUP_SUMS], rows, suffix=f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def upsert(accumulator: Accumulator, *, days: bool = True) -> None:
    """Add the accumulated sums to the hourly rollups and (unless told not to) the daily ones."""
    _upsert_into(CostRollup, ROLLUP_KEY, accumulator.rows())
    if days:
        _upsert_into(CostRollupDay, DAY_KEY, accumulator.day_rows())


# --- At ingest --------------------------------------------------------------------------------


def on_spans_stored(
    sender: Any,
    *,
    team: Any,
    rows: list[dict[str, Any]],
    now: datetime,
    before: dict[str, TraceBefore],
    **kwargs: Any,
) -> None:
    """``traces.signals.spans_stored`` receiver: rollups, then budget spend, in the batch's
    transaction."""
    from finops import budgets

    keys = tag_keys()
    accumulator = Accumulator()
    charges: list[tuple[dict[str, Any], Dimensions]] = []
    costly = False
    moved: list[tuple[dict[str, Any], Dimensions, Dimensions]] = []
    agents = _trace_agents(team.pk, rows, accumulator, keys, before, moved)
    for row in rows:
        dims = accumulator.add(row, team.pk, keys, agents.get(row["trace_id"]))
        if row.get("cost") is not None:
            costly = True
            if row.get("scope_name") != budgets.RUNTIME_SCOPE:
                charges.append((row, dims))  # the runtime's steps were charged as they ended
    upsert(accumulator)
    if costly:
        live.publish({"type": "finops.cost", "team": team.pk}, team_id=team.pk, coalesce=f"finops.cost:{team.pk}")
    if charges:
        budgets.charge_spans(team.pk, charges)
    # Spans stored before their trace named its agent: now the agent's budgets' too.
    moved = [m for m in moved if m[0].get("cost") is not None and m[0].get("scope_name") != budgets.RUNTIME_SCOPE]
    if moved:
        budgets.charge_spans(team.pk, [(row, new) for row, _, new in moved], charged_as=[old for _, old, _ in moved])


def _pick(rows: Iterable[dict[str, Any]]) -> dict[str, TraceAgent]:
    """Per trace, the agent its spans name: an agent span's first, else any span's."""
    found: dict[str, tuple[int, TraceAgent]] = {}
    for row in rows:
        if not has_agent(row):
            continue
        rank = 0 if row.get("span_type") == SpanType.AGENT else 1
        current = found.get(row["trace_id"])
        if current is None or rank < current[0]:
            found[row["trace_id"]] = (rank, agent_of(row))
    return {trace_id: agent for trace_id, (_, agent) in found.items()}


def _stored_agents(team_id: int, trace_ids: Iterable[str], exclude: set[tuple[str, str]]) -> dict[str, TraceAgent]:
    """The agents that spans stored earlier name, per trace (agent spans first)."""
    from traces.models import Span

    ids = sorted(set(trace_ids))
    if not ids:
        return {}
    rows: list[dict[str, Any]] = [
        dict(row)
        for row in Span.objects.filter(team_id=team_id, trace_id__in=ids)
        .filter(Q(agent_id__isnull=False) | ~Q(agent_key="") | ~Q(agent_name=""))
        .order_by("start_time", "id")
        .values("trace_id", "span_id", "span_type", "agent_id", "agent_key", "agent_name", "agent_version")
        if (row["trace_id"], row["span_id"]) not in exclude
    ]
    return _pick(rows)


def _trace_agents(
    team_id: int,
    rows: list[dict[str, Any]],
    accumulator: Accumulator,
    keys: tuple[str, ...],
    before: dict[str, TraceBefore],
    moved: list[tuple[dict[str, Any], Dimensions, Dimensions]],
) -> dict[str, TraceAgent]:
    """The agent of each trace of the batch whose spans do not all name one: from the batch, or
    from the trace's summary before this batch (``before``: what spans stored earlier named).
    When the batch brings the first agent of a trace that has spans already (the agent's own
    span often ends, and is exported, after its children), those spans move to it in the rollups
    (subtracted where they were counted, added to the agent)."""
    batch_agents = _pick(rows)
    anonymous = {row["trace_id"] for row in rows if not has_agent(row)}
    unresolved = anonymous - set(batch_agents)
    wanted = unresolved | set(batch_agents)
    if not wanted:
        return {}
    agents = dict(batch_agents)
    newly_named = []
    for trace_id in sorted(wanted & before.keys()):
        span_count, agent_id, agent_key, agent_name = before[trace_id]
        if agent_id or agent_key or agent_name:
            if trace_id in unresolved:
                key = "" if agent_id else _text(agent_key or agent_name, 200)
                agents[trace_id] = (int(agent_id or 0), key, "")
        elif span_count and trace_id in batch_agents:
            newly_named.append(trace_id)
    if newly_named:
        in_batch = {(row["trace_id"], row["span_id"]) for row in rows}
        moved += _move_earlier_spans(team_id, newly_named, batch_agents, in_batch, accumulator, keys)
    return {t: agents[t] for t in anonymous if t in agents}


def _move_earlier_spans(
    team_id: int,
    trace_ids: list[str],
    agents: dict[str, TraceAgent],
    in_batch: set[tuple[str, str]],
    accumulator: Accumulator,
    keys: tuple[str, ...],
) -> list[tuple[dict[str, Any], Dimensions, Dimensions]]:
    """Move the earlier spans; returns each with the dimensions it leaves and those it joins."""
    from traces.models import Span

    earlier = (
        Span.objects.filter(team_id=team_id, trace_id__in=sorted(trace_ids), agent_id__isnull=True)
        .filter(agent_key="", agent_name="")
        .values("trace_id", "span_id", "run_id", "scope_name", *SPAN_FIELDS)
    )
    moved = []
    for row in earlier:
        if (row["trace_id"], row["span_id"]) in in_batch:
            continue
        old = accumulator.add(row, team_id, keys, None, sign=-1)
        moved.append((row, old, accumulator.add(row, team_id, keys, agents[row["trace_id"]])))
    return moved


# --- Rebuild and reconcile --------------------------------------------------------------------

SPAN_FIELDS = (
    "start_time",
    "span_type",
    "status_code",
    "agent_id",
    "agent_key",
    "agent_name",
    "agent_version",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "cost",
    "attributes",
    "resource",
)


def hours(since: datetime, until: datetime) -> Iterator[datetime]:
    hour = hour_of(since)
    while hour < until:
        yield hour
        hour += timedelta(hours=1)


def _lock_rollups() -> None:
    """Keep ingest from adding to the rollups being rebuilt (its upsert waits until commit; the
    spans it stores meanwhile are either read by the rebuild or added by it afterwards)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"LOCK TABLE {CostRollup._meta.db_table}, {CostRollupDay._meta.db_table} IN SHARE ROW EXCLUSIVE MODE"
            )


def rebuild(*, since: datetime, until: datetime, team_ids: Iterable[int] | None = None) -> int:
    """Recompute the rollups of the whole hours in ``[since, until)`` from the spans, one hour per
    transaction; returns the number of spans read."""
    from traces.models import Span

    keys = tag_keys()
    teams = list(team_ids) if team_ids is not None else None
    read = 0
    for hour in hours(since, until):
        with transaction.atomic():
            _lock_rollups()
            rollups = CostRollup.objects.filter(hour=hour)
            spans = Span.objects.filter(start_time__gte=hour, start_time__lt=hour + timedelta(hours=1))
            if teams is not None:
                rollups = rollups.filter(team_id__in=teams)
                spans = spans.filter(team_id__in=teams)
            rollups.delete()
            accumulator = Accumulator()
            rows = list(spans.values("team_id", "trace_id", "span_id", *SPAN_FIELDS))
            anonymous: dict[int, set[str]] = {}
            for row in rows:
                if not has_agent(row):
                    anonymous.setdefault(row["team_id"], set()).add(row["trace_id"])
            agents = {
                (team_id, trace_id): agent
                for team_id, trace_ids in anonymous.items()
                for trace_id, agent in _stored_agents(team_id, trace_ids, set()).items()
            }
            for row in rows:
                accumulator.add(row, row["team_id"], keys, agents.get((row["team_id"], row["trace_id"])))
                read += 1
            upsert(accumulator, days=False)
    for day in sorted({day_of(hour) for hour in hours(since, until)}):
        rebuild_day(day, team_ids=teams)
    return read


def days_from_hours(*, team_ids: list[int] | None = None) -> int:
    """Write the daily rollups afresh from the hourly ones (for hourly rows written by other
    means than ingest: data loaded in bulk, benchmarks, fixtures); returns the rows written."""
    hourly = CostRollup.objects.all()
    daily = CostRollupDay.objects.all()
    if team_ids is not None:
        hourly, daily = hourly.filter(team_id__in=team_ids), daily.filter(team_id__in=team_ids)
    dims = ROLLUP_KEY[1:]
    grouped = (
        hourly.annotate(day_start=Trunc("hour", "day", tzinfo=timezone.get_current_timezone()))
        .values("day_start", *dims)
        .annotate(**{f"sum_{c}": Sum(c) for c in ROLLUP_SUMS})
        .order_by()
    )
    rows = sorted(
        ((day_of(r["day_start"]), *(r[d] for d in dims), *(r[f"sum_{c}"] for c in ROLLUP_SUMS)) for r in grouped),
        key=lambda row: _sort_key(row[: len(ROLLUP_KEY)]),
    )
    with transaction.atomic():
        _lock_rollups()
        daily.delete()
        _upsert_into(CostRollupDay, DAY_KEY, rows)
    return len(rows)


def rebuild_day(day: datetime, *, team_ids: list[int] | None = None) -> None:
    """Recompute one day's daily rollups from its hourly ones."""
    end = day_of(day + timedelta(hours=36))
    dims = ", ".join(ROLLUP_KEY[1:])
    sums = ", ".join(f"SUM({c})" for c in ROLLUP_SUMS)
    team_filter = f" AND team_id IN ({', '.join(['%s'] * len(team_ids))})" if team_ids else ""
    adapt = connection.ops.adapt_datetimefield_value
    with transaction.atomic():
        _lock_rollups()
        days = CostRollupDay.objects.filter(day=day)
        if team_ids is not None:
            days = days.filter(team_id__in=team_ids)
        days.delete()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {CostRollupDay._meta.db_table} (day, {dims}, {', '.join(ROLLUP_SUMS)}) "
                f"SELECT %s, {dims}, {sums} FROM {CostRollup._meta.db_table} "
                f"WHERE hour >= %s AND hour < %s{team_filter} GROUP BY {dims}",
                [adapt(day), adapt(day), adapt(end), *(team_ids or [])],
            )


@dataclass(frozen=True)
class Difference:
    """An hour whose rollups differ from its spans (``what="hour"``), or a day whose daily
    rollups differ from its hourly ones (``what="day"``: "span" columns are the hourly sums)."""

    hour: datetime
    team_id: int
    span_cost: Decimal
    rollup_cost: Decimal
    span_count: int
    rollup_count: int
    what: str = "hour"

    @property
    def cost_delta(self) -> Decimal:
        return self.rollup_cost - self.span_cost


def reconcile(
    *, since: datetime, until: datetime, team_ids: Iterable[int] | None = None
) -> tuple[int, list[Difference]]:
    """Compare, per hour and team, the rollups' cost and span count with the spans' own, and per
    day and team the daily rollups with the hourly ones; returns (groups compared, differences).
    Cost is compared to six places."""
    from traces.models import Span

    start, end = hour_of(since), until
    spans = Span.objects.filter(start_time__gte=start, start_time__lt=end)
    rollups = CostRollup.objects.filter(hour__gte=start, hour__lt=end)
    if team_ids is not None:
        teams = list(team_ids)
        spans = spans.filter(team_id__in=teams)
        rollups = rollups.filter(team_id__in=teams)
    from_spans = {
        (hour_of(row["bucket"]), row["team_id"]): (row["cost"] or ZERO, row["n"])
        for row in spans.annotate(bucket=Trunc("start_time", "hour", tzinfo=UTC))
        .values("bucket", "team_id")
        .annotate(cost=Sum("cost"), n=Count("id"))
    }
    from_rollups = {
        (hour_of(row["hour"]), row["team_id"]): (row["cost"] or ZERO, row["n"])
        for row in rollups.values("hour", "team_id").annotate(cost=Sum("cost"), n=Sum("spans"))
    }
    differences = _differences(from_spans, from_rollups, "hour")
    compared = len(set(from_spans) | set(from_rollups))
    # The daily rows of the days the range touches equal the hourly rows they fold.
    first, last = day_of(start), day_of(end - timedelta(microseconds=1)) if end > start else day_of(start)
    day_end = day_of(last + timedelta(hours=36))
    hourly = CostRollup.objects.filter(hour__gte=first, hour__lt=day_end)
    daily = CostRollupDay.objects.filter(day__gte=first, day__lt=day_end)
    if team_ids is not None:
        hourly, daily = hourly.filter(team_id__in=teams), daily.filter(team_id__in=teams)
    tz = timezone.get_current_timezone()
    from_hours = {
        (day_of(row["bucket"]), row["team_id"]): (row["cost"] or ZERO, row["n"])
        for row in hourly.annotate(bucket=Trunc("hour", "day", tzinfo=tz))
        .values("bucket", "team_id")
        .annotate(cost=Sum("cost"), n=Sum("spans"))
    }
    from_days = {
        (day_of(row["day"]), row["team_id"]): (row["cost"] or ZERO, row["n"])
        for row in daily.values("day", "team_id").annotate(cost=Sum("cost"), n=Sum("spans"))
    }
    differences += _differences(from_hours, from_days, "day")
    return compared + len(set(from_hours) | set(from_days)), differences


def _differences(
    expected: dict[tuple[datetime, int], tuple[Any, Any]],
    found: dict[tuple[datetime, int], tuple[Any, Any]],
    what: str,
) -> list[Difference]:
    places = Decimal("0.000001")
    differences = []
    for key in sorted(set(expected) | set(found)):
        want_cost, want_n = expected.get(key, (ZERO, 0))
        got_cost, got_n = found.get(key, (ZERO, 0))
        want_cost, got_cost = Decimal(want_cost).quantize(places), Decimal(got_cost).quantize(places)
        if want_cost != got_cost or int(want_n) != int(got_n):
            differences.append(Difference(key[0], key[1], want_cost, got_cost, int(want_n), int(got_n), what))
    return differences
