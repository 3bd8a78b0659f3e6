"""What the dashboards read: figures from the rollups, runs and forecasts, only ever for the
teams whose costs the user may see (finance of team A sees team A; admins see every team)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.exceptions import PermissionDenied
from django.http import Http404

from cockpit.roles import Role, TeamPerm
from finops import selectors
from finops.models import BudgetScope
from finops.selectors import CostFilter
from finops.services import budget_create
from fleet.models import AgentKind
from tests.finops.conftest import SYSTEM, T, span_row, write
from tests.support.matrix import matrix

RANGE = CostFilter(since=T - timedelta(days=2), until=T + timedelta(days=2))


@pytest.fixture
def spend(team, other_team, make_agent):  # noqa: ANN001, ANN201
    """Team alpha: $0.0225 on gpt-4o by its agent, one unpriced call; team beta: $0.0150."""
    claims = make_agent("claims-bot", kind=AgentKind.EXTERNAL)
    make_agent("beta-bot", owner=other_team, kind=AgentKind.EXTERNAL)
    write(
        team,
        [
            span_row(start=T, agent_key="claims-bot", attributes={"cockpit.cost_center": "claims"}),
            span_row(start=T - timedelta(hours=1), agent_key="claims-bot"),
            span_row(start=T - timedelta(days=1), agent_key="claims-bot", model="gpt-4o", status_code=2),
            span_row(start=T, agent_key="claims-bot", model="house-llama", provider="vllm"),
        ],
    )
    write(other_team, [span_row(start=T, agent_key="beta-bot"), span_row(start=T, agent_key="beta-bot")])
    budget_create(actor=SYSTEM, name="alpha monthly", scope=BudgetScope.TEAM, team=team, limit_usd=10)
    budget_create(actor=SYSTEM, name="beta monthly", scope=BudgetScope.TEAM, team=other_team, limit_usd=10)
    budget_create(actor=SYSTEM, name="everything", scope=BudgetScope.GLOBAL, limit_usd=100)
    return claims


@pytest.mark.parametrize("case", matrix(allowed={Role.FINANCE, Role.ADMIN}, org=True), ids=str)
def test_permission_matrix(case, team, other_team, spend) -> None:  # noqa: ANN001
    user = case.make_user(team=team, other_team=other_team)
    total = selectors.total_cost(user, filters=RANGE)
    teams = {s.group.label for s in selectors.top_spenders(user, filters=RANGE, dimension="team")}
    budgets = {s.budget.name for s in selectors.budgets_for_user(user)}
    unpriced = selectors.unpriced_models(user, filters=RANGE)
    if case.where == "org" and case.outcome == "ok":  # organisation-wide finance and admins
        assert total == Decimal("0.037500") and teams == {"Alpha", "Beta"}
        assert budgets == {"alpha monthly", "beta monthly", "everything"}
        assert [u.model for u in unpriced] == ["house-llama"]
    elif case.where == "own" and case.outcome == "ok":
        assert total == Decimal("0.022500") and teams == {"Alpha"}
        assert budgets == {"alpha monthly"} and [u.model for u in unpriced] == ["house-llama"]
    elif case.where == "other" and case.role in (Role.FINANCE, Role.ADMIN):
        assert total == Decimal("0.015000") and teams == {"Beta"} and budgets == {"beta monthly"}
        assert unpriced == []
    else:  # viewers, operators, approvers and people without a role see no costs
        assert total == 0 and teams == set() and budgets == set() and unpriced == []


def test_superusers_see_every_team(superuser, spend) -> None:  # noqa: ANN001
    assert selectors.total_cost(superuser, filters=RANGE) == Decimal("0.037500")


def test_a_filter_naming_a_hidden_team_yields_nothing(make_user, team, other_team, spend) -> None:  # noqa: ANN001
    finance = make_user(Role.FINANCE, team)
    only_beta = CostFilter(since=RANGE.since, until=RANGE.until, teams=frozenset({other_team.pk}))
    assert selectors.total_cost(finance, filters=only_beta) == 0
    assert selectors.chargeback(finance, filters=only_beta) == []


def test_budget_access_helper(make_user, team, other_team, spend) -> None:  # noqa: ANN001
    from finops.models import Budget

    alpha = Budget.objects.get(name="alpha monthly")
    everything = Budget.objects.get(name="everything")
    finance, admin, outsider = (
        make_user(Role.FINANCE, team),
        make_user(Role.ADMIN, team),
        make_user(Role.ADMIN, other_team),
    )
    assert selectors.get_budget_for_user(finance, alpha.pk, TeamPerm.VIEW_COSTS) == alpha
    with pytest.raises(PermissionDenied):
        selectors.get_budget_for_user(finance, alpha.pk, TeamPerm.MANAGE)
    assert selectors.get_budget_for_user(admin, alpha.pk, TeamPerm.MANAGE) == alpha
    with pytest.raises(Http404):
        selectors.get_budget_for_user(outsider, alpha.pk, TeamPerm.VIEW_COSTS)
    with pytest.raises(Http404):  # a budget over every team: organisation-wide users only
        selectors.get_budget_for_user(admin, everything.pk, TeamPerm.VIEW_COSTS)
    assert selectors.can_manage_budgets(admin, team.pk) and not selectors.can_manage_budgets(admin, None)


def test_chargeback_rows_add_up_to_the_dashboard_total_to_the_cent(superuser, spend) -> None:  # noqa: ANN001
    total = selectors.total_cost(superuser, filters=RANGE)
    for dimensions in [("team",), ("team", "agent"), ("model", "provider"), ("tag",), ("workflow", "agent_version")]:
        rows = selectors.chargeback(superuser, filters=RANGE, dimensions=dimensions)
        assert sum(r.cost for r in rows) == total, dimensions
    rows = selectors.chargeback(superuser, filters=RANGE, dimensions=("team",), bucket="month")
    assert [(r.period, r.values["team"], r.cost) for r in rows] == [
        ("2026-03", "Alpha", Decimal("0.022500")),
        ("2026-03", "Beta", Decimal("0.015000")),
    ]
    by_day = selectors.chargeback(superuser, filters=RANGE, dimensions=("team",), bucket="day")
    assert {r.period for r in by_day} == {"2026-03-09", "2026-03-10"}


def test_breakdowns(superuser, spend, team) -> None:  # noqa: ANN001
    agent = spend
    spenders = selectors.top_spenders(superuser, filters=RANGE, dimension="agent")
    assert [(s.group.key, s.group.label, s.cost) for s in spenders][:1] == [
        (str(agent.pk), "Claims Bot", Decimal("0.022500"))
    ]
    tags = {g.label for g in selectors.dimension_values(superuser, filters=RANGE, dimension="tag")}
    assert tags == {"cockpit.cost_center=claims", "(untagged)"}
    only_claims = CostFilter(since=RANGE.since, until=RANGE.until, tags=frozenset({"cockpit.cost_center=claims"}))
    assert selectors.total_cost(superuser, filters=only_claims) == Decimal("0.007500")
    by_agent = CostFilter(since=RANGE.since, until=RANGE.until, agents=frozenset({str(agent.pk)}))
    assert selectors.total_cost(superuser, filters=by_agent) == Decimal("0.022500")
    points = selectors.cost_over_time(superuser, filters=RANGE, group_by="team", bucket="day")
    assert sum(p.cost for p in points) == Decimal("0.037500")
    assert {p.group.label for p in points} == {"Alpha", "Beta"}
    folded = selectors.cost_over_time(superuser, filters=RANGE, group_by="team", bucket="day", top=1)
    assert {p.group.label for p in folded} == {"Alpha", "Other"}
    [gpt] = [m for m in selectors.tokens_by_model(superuser, filters=RANGE) if m.model == "gpt-4o"]
    assert (gpt.input_tokens, gpt.output_tokens, gpt.spans) == (5000, 2500, 5)
    [waste] = selectors.waste(superuser, filters=RANGE, dimension="agent")
    assert (waste.group.label, waste.failed_spans, waste.failed_span_cost) == ("Claims Bot", 1, Decimal("0.007500"))


def test_burn_rate_and_today_vs_yesterday(superuser, team) -> None:  # noqa: ANN001
    now = T.replace(minute=15)  # a quarter into the 12:00 hour
    write(team, [span_row(start=now - timedelta(hours=1)) for _ in range(4)])  # $0.03 in the 11:00 hour
    write(team, [span_row(start=now)])  # $0.0075 so far this hour
    write(team, [span_row(start=now - timedelta(days=1)) for _ in range(2)])  # yesterday at this time
    write(team, [span_row(start=now - timedelta(days=1) + timedelta(hours=3))])  # yesterday, later
    with time_machine.travel(now, tick=False):
        burn = selectors.burn_rate(superuser)
        days = selectors.today_vs_yesterday(superuser)
    # This hour's $0.0075 plus three quarters of the last hour's $0.03.
    assert burn.usd_per_hour == Decimal("0.030000")
    assert (days.today, days.yesterday_same_time, days.yesterday_total) == (
        Decimal("0.037500"),
        Decimal("0.015000"),
        Decimal("0.022500"),
    )
    assert days.change == pytest.approx(1.5)


def test_cost_per_successful_run_and_routing_insight(superuser, make_agent, start, execute) -> None:  # noqa: ANN001
    agent = make_agent()
    runs = [execute(start(agent, n=2)) for _ in range(3)]
    window = CostFilter(since=runs[0].created_at - timedelta(hours=1), until=runs[-1].created_at + timedelta(hours=1))
    [row] = selectors.cost_per_successful_run(superuser, filters=window)
    assert (row.agent, row.runs, row.succeeded) == ("Spender", 3, 3)
    assert row.cost == sum(r.cost for r in runs) and row.cost_per_success == (row.cost / 3).quantize(
        Decimal("0.000001")
    )
    insight = selectors.routing_insight(superuser, filters=window)
    assert {(r.step, r.model, r.calls, r.run_success_rate) for r in insight} == {
        ("step 0", "sim/sim-large", 3, 1.0),
        ("step 1", "sim/sim-large", 3, 1.0),
    }
    assert sum(r.cost for r in insight) == row.cost
    assert [r.pk for r in selectors.costliest_runs(superuser, filters=window)] == [
        r.pk for r in sorted(runs, key=lambda r: (-r.cost, -r.pk))
    ]


def test_unknown_dimensions_are_refused(superuser) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="dimension"):
        selectors.top_spenders(superuser, filters=RANGE, dimension="colour")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (T - timedelta(days=3, hours=5), T + timedelta(days=2, hours=3)),  # whole days and ragged edges
        (T - timedelta(hours=30), T + timedelta(hours=1)),  # one midnight inside
        (T - timedelta(hours=2), T + timedelta(hours=2)),  # within a day: hourly rows only
    ],
)
def test_whole_days_read_from_daily_rollups_add_up_as_the_hours_do(superuser, team, since, until) -> None:  # noqa: ANN001
    from django.db.models import Sum

    from finops.models import CostRollup

    write(team, [span_row(start=T + timedelta(hours=h * 7), agent_key=f"bot-{h % 3}") for h in range(-14, 10)])
    window = CostFilter(since=since, until=until)
    uses_days = any(field == "day" for _, field in selectors.rollup_parts(superuser, window))
    assert uses_days == (until - since > timedelta(days=2))
    hourly = CostRollup.objects.filter(hour__gte=since.replace(minute=0), hour__lt=until)
    expected = hourly.aggregate(c=Sum("cost"))["c"] or Decimal(0)
    assert selectors.total_cost(superuser, filters=window) == expected
    assert sum(p.cost for p in selectors.cost_over_time(superuser, filters=window, bucket="day")) == expected
    assert sum(r.cost for r in selectors.chargeback(superuser, filters=window, dimensions=("agent",))) == expected
    assert sum(s.cost for s in selectors.top_spenders(superuser, filters=window, dimension="agent")) == expected
