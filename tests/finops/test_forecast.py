"""Forecasts: exponential smoothing over the hourly rollups with an interval for the period
total, stored per team and agent, a "projected to exceed" alert once per period, and a backtest
that reports the error on past data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import numpy as np
import time_machine
from django.core.management import call_command

from finops import forecast, selectors
from finops.models import BudgetAlert, BudgetPeriod, BudgetScope, CostRollup, Forecast
from finops.services import budget_create
from finops.tasks import forecasts_refresh
from fleet.models import AgentKind
from tests.finops.conftest import SYSTEM

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)  # mid-month


def seasonal(hours: int, *, base: float = 1.0, seed: int = 7) -> np.ndarray:
    """Hourly spend with a daily rhythm (busy days, quiet nights) and noise."""
    rng = np.random.default_rng(seed)
    hour = np.arange(hours)
    return np.clip(base * (1 + 0.8 * np.sin((hour % 24) / 24 * 2 * np.pi)) + rng.normal(0, 0.1 * base, hours), 0, None)


def fill(team, series: np.ndarray, *, end: datetime, agent_id: int = 0) -> None:  # noqa: ANN001
    start = end - timedelta(hours=len(series))
    CostRollup.objects.bulk_create(
        [
            CostRollup(
                hour=start + timedelta(hours=i),
                team=team,
                agent_id=agent_id,
                model="gpt-4o",
                cost=Decimal(str(round(value, 6))),
                spans=1,
                priced=1,
            )
            for i, value in enumerate(series)
        ]
    )


def test_the_projection_follows_a_daily_season_and_its_interval_covers_the_truth() -> None:
    history = seasonal(14 * 24)
    future = seasonal(14 * 24 + 48)[-48:]
    result = forecast.project(history, 48)
    assert result.method.startswith("ETS(A,N,A)")
    assert abs(result.total - future.sum()) / future.sum() < 0.1
    assert result.low < future.sum() < result.high
    assert len(result.path) == 48
    means = [m for m, _, _ in result.path]
    assert max(means[:24]) > 2 * min(means[:24])  # days and nights, not a flat line


def test_little_history_falls_back_and_no_spend_projects_nothing() -> None:
    assert forecast.project(np.array([0.5, 0.5, 0.5]), 10).method == "mean"
    assert forecast.project(np.array([0.5, 0.5, 0.5]), 10).total == 5.0
    assert forecast.project(np.zeros(100), 10).total == 0.0
    assert forecast.project(np.array([]), 10).method == "no spend"


def test_forecasts_are_stored_per_team_and_agent(team, other_team, make_agent, admin_user) -> None:  # noqa: ANN001
    agent = make_agent("claims-bot", kind=AgentKind.EXTERNAL)
    fill(team, seasonal(10 * 24), end=NOW, agent_id=agent.pk)
    fill(other_team, seasonal(10 * 24, base=3), end=NOW)
    with time_machine.travel(NOW, tick=False):
        forecasts_refresh.apply().get()
    stored = {(f.team_id, f.agent_id): f for f in Forecast.objects.all()}
    assert set(stored) == {(team.pk, None), (team.pk, agent.pk), (other_team.pk, None)}
    team_forecast = stored[(team.pk, None)]
    month_so_far = CostRollup.objects.filter(team=team, hour__gte=datetime(2026, 3, 1, tzinfo=UTC)).values_list(
        "cost", flat=True
    )
    assert team_forecast.spent_to_date == sum(month_so_far)
    # 16.5 days to go at about $1/h: some $400 more.
    assert 300 < team_forecast.projected_total - team_forecast.spent_to_date < 500
    assert team_forecast.low < team_forecast.projected_total < team_forecast.high
    assert team_forecast.period_end == datetime(2026, 4, 1, tzinfo=UTC) and len(team_forecast.points) == 16 * 24 + 12
    # Admins of team alpha see alpha's forecasts only.
    assert {(f.team_id, f.agent_id) for f in selectors.forecasts(admin_user)} == {(team.pk, None), (team.pk, agent.pk)}


def test_projected_to_exceed_alerts_once_per_period(team, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    fill(team, seasonal(10 * 24), end=NOW)
    spent = sum(CostRollup.objects.filter(hour__gte=datetime(2026, 3, 1, tzinfo=UTC)).values_list("cost", flat=True))
    over = budget_create(
        actor=SYSTEM, name="tight", scope=BudgetScope.TEAM, team=team, limit_usd=spent + 100, alert_emails=["f@x.io"]
    )
    budget_create(actor=SYSTEM, name="roomy", scope=BudgetScope.TEAM, team=team, limit_usd=spent + 5000)
    for _ in range(2):
        with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=True):
            forecasts_refresh.apply().get()
    [alert] = BudgetAlert.objects.filter(kind="projected")
    assert (alert.budget, alert.period, alert.threshold) == (over, "2026-03", 100)
    assert alert.projected > over.limit_usd
    assert alert.notifications.get().status == "sent"


def test_backtest_reports_the_error_on_past_data(team) -> None:  # noqa: ANN001
    fill(team, seasonal(21 * 24), end=NOW)
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("finops_backtest", "--days", "5", "--horizon", "24", stdout=out)
    report = out.getvalue()
    assert "MAE $" in report and "MAPE" in report
    [line] = [line for line in report.splitlines() if line.startswith("alpha")]
    windows, mae, mape = line.split()[1:4]
    assert int(windows) == 5 and float(mae) < 5 and float(mape.rstrip("%")) < 15
    scores = forecast.score(forecast.backtest(now=NOW, days=5, team_ids=[team.pk]))
    assert scores[0].coverage >= 0.6


def test_backtest_without_spend_says_so(db) -> None:  # noqa: ANN001
    out = StringIO()
    call_command("finops_backtest", stdout=out)
    assert "nothing to score" in out.getvalue()


def test_budget_periods_other_than_a_month_are_projected_too(team) -> None:  # noqa: ANN001
    fill(team, seasonal(10 * 24), end=NOW)
    result = forecast.forecast_period(CostRollup.objects.filter(team=team), now=NOW, period=BudgetPeriod.DAY)
    assert result.period_end == datetime(2026, 3, 16, tzinfo=UTC) and len(result.points) == 12
