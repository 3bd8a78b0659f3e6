"""Forecasts of spend to the end of a period, from the hourly rollups.

The model is exponential smoothing in state-space form (statsmodels ``ETSModel``: additive
errors, with a 24-hour additive season once three days of history exist). The interval of the
period total comes from simulating the model's future paths (sums of hourly paths, so an
interval for the *total*, not a sum of hourly intervals); negative hours are cut to zero. With
less history the forecast is the mean hourly spend so far, with a ±50 % band.

``backtest`` replays the forecast at past cut-offs and compares it with what was then spent.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from finops.models import Budget, BudgetPeriod, BudgetScope, BudgetSpend, CostRollup, Forecast, period_bounds
from finops.rollups import hour_of
from fleet.models import Agent

logger = logging.getLogger(__name__)

HISTORY_DAYS = 14
SEASON = 24
SEASONAL_MIN_HOURS = 3 * SEASON
SMOOTHING_MIN_HOURS = 6
SIMULATIONS = 300
SEED = 20_240_601  # simulated paths are reproducible: the same history gives the same interval
INTERVAL = (10, 90)  # percentiles: an 80 % interval
PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Projection:
    """Spend over the horizon: ``total`` (mean) within ``[low, high]``; ``path`` per hour."""

    total: float
    low: float
    high: float
    path: list[tuple[float, float, float]]
    method: str


def project(history: np.ndarray, horizon: int) -> Projection:
    """Forecast the next ``horizon`` hours of spend from hourly ``history`` (oldest first)."""
    if horizon <= 0:
        return Projection(0.0, 0.0, 0.0, [], "none")
    history = np.asarray(history, dtype=float)
    if len(history) == 0 or not np.any(history):
        return Projection(0.0, 0.0, 0.0, [(0.0, 0.0, 0.0)] * horizon, "no spend")
    if len(history) >= SMOOTHING_MIN_HOURS:
        try:
            return _ets(history, horizon)
        except Exception:  # noqa: BLE001 - a fit that fails falls back to the mean
            logger.warning("exponential smoothing failed; using the mean hourly spend", exc_info=True)
    rate = float(history.mean())
    total = rate * horizon
    return Projection(total, total * 0.5, total * 1.5, [(rate, rate * 0.5, rate * 1.5)] * horizon, "mean")


def _ets(history: np.ndarray, horizon: int) -> Projection:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    seasonal = len(history) >= SEASONAL_MIN_HOURS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ETSModel(
            history,
            error="add",
            trend=None,
            seasonal="add" if seasonal else None,
            seasonal_periods=SEASON if seasonal else None,
        )
        fitted = model.fit(disp=False, maxiter=200)
        mean = np.clip(np.asarray(fitted.forecast(horizon)), 0, None)
        paths = np.asarray(
            fitted.simulate(
                nsimulations=horizon, repetitions=SIMULATIONS, anchor="end", rng=np.random.default_rng(SEED)
            )
        )
    # The point forecast is the model's; the simulated paths (hours below zero cut to zero) give
    # the interval of the total.
    paths = np.clip(paths.reshape(horizon, -1), 0, None)
    low, high = np.percentile(paths.sum(axis=0), INTERVAL)
    total = float(mean.sum())
    low, high = min(low, total), max(high, total)
    hourly_mean = mean
    hourly_low, hourly_high = np.percentile(paths, INTERVAL, axis=1)
    path = [(float(m), float(lo), float(hi)) for m, lo, hi in zip(hourly_mean, hourly_low, hourly_high, strict=True)]
    method = "ETS(A,N,A) 24h season" if seasonal else "ETS(A,N,N) simple exponential smoothing"
    return Projection(total, float(low), float(high), path, method)


def hourly_series(rollups: QuerySet[CostRollup], start: datetime, end: datetime) -> np.ndarray:
    """Cost per hour of ``rollups`` over the whole hours in ``[start, end)`` (zeros included)."""
    start, end = hour_of(start), hour_of(end)
    hours = int((end - start).total_seconds() // 3600)
    series = np.zeros(max(hours, 0))
    for row in rollups.filter(hour__gte=start, hour__lt=end).values("hour").annotate(cost=Sum("cost")):
        index = int((hour_of(row["hour"]) - start).total_seconds() // 3600)
        if 0 <= index < len(series):
            series[index] = float(row["cost"] or 0)
    return series


def _spent(rollups: QuerySet[CostRollup], start: datetime, end: datetime) -> Decimal:
    total = rollups.filter(hour__gte=hour_of(start), hour__lt=end).aggregate(c=Sum("cost"))["c"]
    return Decimal(total or 0).quantize(PLACES)


@dataclass(frozen=True)
class PeriodForecast:
    period_start: datetime
    period_end: datetime
    spent: Decimal
    projected: Decimal
    low: Decimal
    high: Decimal
    points: list[list[Any]]
    method: str


def forecast_period(
    rollups: QuerySet[CostRollup], *, now: datetime, period: str = BudgetPeriod.MONTH
) -> PeriodForecast:
    """Spend of ``rollups`` from the start of the period containing ``now`` to its end."""
    _, start, end = period_bounds(period, now)
    current = hour_of(now)
    history = hourly_series(rollups, current - timedelta(days=HISTORY_DAYS), current)
    horizon = max(0, math.ceil((end - current).total_seconds() / 3600))
    projection = project(history, horizon)
    before_this_hour = _spent(rollups, start, current)
    spent = _spent(rollups, start, current + timedelta(hours=1))
    projected = max(spent, before_this_hour + Decimal(str(projection.total)).quantize(PLACES))
    low = max(spent, before_this_hour + Decimal(str(projection.low)).quantize(PLACES))
    high = max(projected, before_this_hour + Decimal(str(projection.high)).quantize(PLACES))
    points = [
        [(current + timedelta(hours=i)).isoformat(), round(m, 6), round(lo, 6), round(hi, 6)]
        for i, (m, lo, hi) in enumerate(projection.path)
    ]
    return PeriodForecast(start, end, spent, projected, low, high, points, projection.method)


def _store(team_id: int, agent_id: int | None, period: str, result: PeriodForecast, now: datetime) -> None:
    Forecast.objects.update_or_create(
        team_id=team_id,
        agent=None if agent_id is None else Agent(pk=agent_id),
        period=period,
        defaults={
            "period_start": result.period_start,
            "period_end": result.period_end,
            "computed_at": now,
            "spent_to_date": result.spent,
            "projected_total": result.projected,
            "low": result.low,
            "high": result.high,
            "method": result.method,
            "points": result.points,
        },
    )


def refresh_all(*, now: datetime, period: str = BudgetPeriod.MONTH) -> int:
    """Store the forecast of every team with spend in the last ``HISTORY_DAYS`` days, and of
    each of its fleet agents with spend."""
    since = hour_of(now) - timedelta(days=HISTORY_DAYS)
    recent = CostRollup.objects.filter(hour__gte=since)
    pairs = set(recent.values_list("team_id", "agent_id").distinct())
    stored = 0
    existing_agents = set(Agent.objects.filter(pk__in={a for _, a in pairs if a}).values_list("pk", flat=True))
    for team_id in sorted({t for t, _ in pairs}):
        result = forecast_period(CostRollup.objects.filter(team_id=team_id), now=now, period=period)
        with transaction.atomic():
            _store(team_id, None, period, result, now)
        stored += 1
    for team_id, agent_id in sorted(pairs):
        if not agent_id or agent_id not in existing_agents:
            continue
        result = forecast_period(CostRollup.objects.filter(team_id=team_id, agent_id=agent_id), now=now, period=period)
        with transaction.atomic():
            _store(team_id, agent_id, period, result, now)
        stored += 1
    return stored


# --- Budgets ----------------------------------------------------------------------------------


def tag_filter(tag: str) -> Q:
    """Rollup rows whose ``tag`` (``k=v;k=v``) holds ``tag``."""
    return Q(tag=tag) | Q(tag__startswith=f"{tag};") | Q(tag__endswith=f";{tag}") | Q(tag__contains=f";{tag};")


def budget_rollups(budget: Budget) -> QuerySet[CostRollup]:
    rollups = CostRollup.objects.all()
    if budget.team_id is not None:
        rollups = rollups.filter(team_id=budget.team_id)
    if budget.scope == BudgetScope.AGENT:
        rollups = rollups.filter(agent_id=budget.agent_id or 0)
    elif budget.scope == BudgetScope.WORKFLOW:
        rollups = rollups.filter(workflow=budget.workflow)
    elif budget.scope == BudgetScope.TAG:
        rollups = rollups.filter(tag_filter(budget.tag))
    return rollups


def _stored_forecast(budget: Budget, period_start: datetime, now: datetime) -> Forecast | None:
    if budget.period != BudgetPeriod.MONTH or budget.team is None:
        return None
    if budget.scope == BudgetScope.TEAM:
        scope = Q(agent__isnull=True)
    elif budget.scope == BudgetScope.AGENT:
        scope = Q(agent=budget.agent)
    else:
        return None
    return (
        Forecast.objects.filter(scope, team=budget.team, period=BudgetPeriod.MONTH, period_start=period_start)
        .filter(computed_at__gte=now - timedelta(hours=2))
        .first()
    )


def budgets_projection_check(*, now: datetime | None = None) -> int:
    """Alert (once per period) the active calendar budgets projected to end over their limit."""
    from finops.services import budget_projection_alert

    now = now or timezone.now()
    alerted = 0
    for budget in Budget.objects.filter(active=True).exclude(period=BudgetPeriod.RUN).select_related("team", "agent"):
        key, start, _ = period_bounds(budget.period, now)
        stored = _stored_forecast(budget, start, now)
        if stored is not None:  # the hourly team or agent forecast covers exactly this budget
            spent, projected = stored.spent_to_date, stored.projected_total
        else:
            result = forecast_period(budget_rollups(budget), now=now, period=budget.period)
            spent, projected = result.spent, result.projected
        counted = BudgetSpend.objects.filter(budget=budget, period=key).values_list("spent", flat=True).first()
        projected += max(Decimal(0), (counted or Decimal(0)) - spent)
        if projected > budget.limit_usd and budget_projection_alert(budget=budget, period=key, projected=projected):
            alerted += 1
    return alerted


# --- Backtest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestRow:
    series: str
    cutoff: datetime
    horizon_hours: int
    actual: float
    predicted: float
    low: float
    high: float

    @property
    def error(self) -> float:
        return self.predicted - self.actual

    @property
    def covered(self) -> bool:
        return self.low <= self.actual <= self.high


def backtest(
    *,
    now: datetime,
    days: int = 7,
    horizon_hours: int = 24,
    step_hours: int = 24,
    team_ids: Iterable[int] | None = None,
) -> list[BacktestRow]:
    """For cut-offs every ``step_hours`` over the last ``days`` days, forecast the next
    ``horizon_hours`` from the history before the cut-off and compare with the rollups."""
    from cockpit.models import Team

    end = hour_of(now)
    teams = Team.objects.order_by("slug")
    if team_ids is not None:
        teams = teams.filter(pk__in=list(team_ids))
    series: list[tuple[str, QuerySet[CostRollup]]] = [
        (team.slug, CostRollup.objects.filter(team=team)) for team in teams
    ]
    if team_ids is None:
        series.insert(0, ("(all teams)", CostRollup.objects.all()))
    rows = []
    first_cutoff = end - timedelta(days=days)
    for name, rollups in series:
        cutoff = first_cutoff
        while cutoff + timedelta(hours=horizon_hours) <= end:
            history = hourly_series(rollups, cutoff - timedelta(days=HISTORY_DAYS), cutoff)
            actual = hourly_series(rollups, cutoff, cutoff + timedelta(hours=horizon_hours)).sum()
            if history.any() or actual:
                projection = project(history, horizon_hours)
                predicted = (projection.total, projection.low, projection.high)
                rows.append(BacktestRow(name, cutoff, horizon_hours, float(actual), *predicted))
            cutoff += timedelta(hours=step_hours)
    return rows


@dataclass(frozen=True)
class Score:
    series: str
    windows: int
    mae: float
    mape: float | None  # over windows with spend
    coverage: float  # share of windows whose actual fell within the interval


def score(rows: list[BacktestRow]) -> list[Score]:
    by_series: dict[str, list[BacktestRow]] = {}
    for row in rows:
        by_series.setdefault(row.series, []).append(row)
    scores = []
    for name, items in by_series.items():
        mae = sum(abs(r.error) for r in items) / len(items)
        spent = [r for r in items if r.actual > 0]
        mape = sum(abs(r.error) / r.actual for r in spent) / len(spent) * 100 if spent else None
        coverage = sum(1 for r in items if r.covered) / len(items)
        scores.append(Score(name, len(items), mae, mape, coverage))
    return scores
