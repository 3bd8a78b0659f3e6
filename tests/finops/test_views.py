"""The FinOps dashboard: who sees which numbers, every filter and grouping, the live fragments
(burn rate, budget banner), drill-downs that lead to the runs and traces behind a number,
unpriced models shown as unknown (never as zero), and a page whose query count does not grow
with the data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from cockpit.roles import Role
from finops.models import BudgetAlert, BudgetScope
from finops.services import budget_create
from fleet.models import RunStatus
from tests.finops import costdata
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def spend(team, other_team):  # noqa: ANN001, ANN201
    """Alpha: $12.50 in the last 30 days (refund-desk $10.00 on gpt-4o, claims-bot $2.50 on
    claude) and $100 in February; Beta: $7.00. Runs: two of refund-desk (one failed)."""
    refund = costdata.agent(team, "refund-desk", "Refund desk")
    claims = costdata.agent(team, "claims-bot", "Claims bot")
    beta = costdata.agent(other_team, "beta-bot", "Beta bot")
    costdata.rollup(team, at=NOW - timedelta(hours=1), agent=refund, cost="4.00", retries=2, retry_cost="0.40")
    costdata.rollup(team, at=NOW - timedelta(days=3), agent=refund, cost="6.00", errors=1, error_cost="0.60")
    costdata.rollup(
        team, at=NOW - timedelta(days=2), agent=claims, cost="2.50", model="claude-sonnet-4", provider="anthropic"
    )
    costdata.rollup(team, at=NOW - timedelta(days=35), agent=refund, cost="100.00")
    costdata.rollup(other_team, at=NOW - timedelta(hours=2), agent=beta, cost="7.00", model="gpt-4o-mini")
    costdata.run(refund, cost="3.00", at=NOW - timedelta(days=1))
    costdata.run(refund, cost="1.00", status=RunStatus.FAILED, at=NOW - timedelta(days=1))
    return {"refund": refund, "claims": claims, "beta": beta}


def text(response) -> str:  # noqa: ANN001
    """The page as a reader sees it: no tags, single spaces."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", response.content.decode())))


def total_of(response) -> Decimal:  # noqa: ANN001
    found = re.search(r'data-total="([0-9.]+)"', response.content.decode())
    assert found, "the page shows no total"
    return Decimal(found.group(1))


# --- Who sees what ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed={Role.FINANCE, Role.ADMIN}, org=True), ids=str)
def test_permission_matrix(case, client, team, other_team, spend) -> None:  # noqa: ANN001
    """Finance and admins of a team see its costs (and only its); organisation-wide finance and
    admins see every team; everyone else is refused, with the reason."""
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get("/finops/?team=")
    may_see_costs = case.role in (Role.FINANCE, Role.ADMIN)
    if not may_see_costs:
        assert response.status_code == 403
        assert "open to finance people and admins" in text(response)
        assert client.get("/finops/chargeback.csv").status_code == 403
        return
    assert response.status_code == 200
    expected = {"own": Decimal("12.50"), "other": Decimal("7.00"), "org": Decimal("19.50")}[case.where]
    assert total_of(response) == expected
    page = text(response)
    assert ("Refund desk" in page) == (case.where in ("own", "org"))
    assert ("Beta bot" in page) == (case.where in ("other", "org"))


def test_a_filter_naming_a_team_one_may_not_see_shows_nothing(client, make_user, team, other_team, spend) -> None:
    client.force_login(make_user(Role.FINANCE, team))
    response = client.get("/finops/?team=beta")
    assert response.status_code == 200
    assert total_of(response) == 0
    assert "Beta bot" not in text(response)
    assert "No cost recorded in this period" in text(response)


def test_superuser_sees_every_team(client, superuser, spend) -> None:
    client.force_login(superuser)
    assert total_of(client.get("/finops/")) == Decimal("19.50")


# --- Filters and grouping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "total"),
    [
        ("", "12.50"),
        ("range=today", "4.00"),
        ("range=7d", "12.50"),
        ("range=month", "12.50"),
        ("range=90d", "112.50"),
        ("range=last-month", "100.00"),
        ("range=custom&since=2026-03-07&until=2026-03-08", "8.50"),
        ("range=custom&since=2026-02-03&until=2026-02-03", "100.00"),
        ("model=claude-sonnet-4", "2.50"),
        ("provider=openai", "10.00"),
        ("agent={claims}", "2.50"),
        ("agent={claims}&model=gpt-4o", "0"),
        ("team=alpha", "12.50"),
    ],
)
def test_filters(client, admin_user, spend, query, total) -> None:  # noqa: ANN001
    client.force_login(admin_user)
    response = client.get(f"/finops/?{query.format(claims=spend['claims'].pk)}")
    assert response.status_code == 200
    assert total_of(response) == Decimal(total)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("range=custom&since=2026-03-09&until=2026-03-01", "'From' must not be after 'To'."),
        ("range=custom", "Custom dates need a start day"),
        ("range=custom&since=2024-01-01&until=2026-03-01", "at most 400 days"),
        ("range=forever", "Select a valid choice"),
        ("since=yesterday", "Enter a valid date"),
        ("group=color", "Select a valid choice"),
    ],
)
def test_bad_filters_are_refused_with_the_reason(client, admin_user, spend, query, message) -> None:  # noqa: ANN001
    client.force_login(admin_user)
    response = client.get(f"/finops/?{query}")
    assert response.status_code == 400
    assert message in text(response)
    assert "data-total" not in response.content.decode()


def test_the_team_switcher_narrows_the_page_unless_the_url_says_otherwise(
    client, make_user, team, other_team, spend
) -> None:
    user = make_user(Role.FINANCE, team)
    make_user  # noqa: B018
    from cockpit.services import membership_grant
    from tests.factories import SYSTEM

    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.FINANCE)
    client.force_login(user)
    client.post("/team/switch/", {"team": "beta", "next": "/finops/"})
    assert total_of(client.get("/finops/")) == Decimal("7.00")
    assert total_of(client.get("/finops/?team=")) == Decimal("19.50")


def test_grouping_switches_the_chart_and_the_top_spenders(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    by_model = client.get("/finops/?group=model")
    assert "Cost over time, by model" in text(by_model)
    spenders = by_model.context["spenders"]
    assert [(r.item.group.label, r.item.cost) for r in spenders] == [
        ("gpt-4o", Decimal("10.000000")),
        ("claude-sonnet-4", Decimal("2.500000")),
    ]
    assert [round(r.item.share, 2) for r in spenders] == [0.8, 0.2]
    by_agent = client.get("/finops/?group=agent")
    assert "Cost over time, by agent" in text(by_agent)
    assert [r.item.group.label for r in by_agent.context["spenders"]] == ["Refund desk", "Claims bot"]
    # The switch keeps the filters and the period.
    switches = {key: href for key, _, href in client.get("/finops/?range=7d&model=gpt-4o").context["groupings"]}
    assert switches["agent"] == "/finops/?range=7d&model=gpt-4o&group=agent"


def test_the_default_grouping_is_one_level_below_the_filter(client, superuser, spend) -> None:
    client.force_login(superuser)
    assert client.get("/finops/?team=").context["group_by"] == "team"
    assert client.get("/finops/?team=alpha").context["group_by"] == "agent"
    assert client.get(f"/finops/?team=&agent={spend['refund'].pk}").context["group_by"] == "model"


def test_the_chart_carries_every_group_and_a_drill_down_address(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    response = client.get("/finops/?team=alpha&group=agent")
    figure = response.context["trend_figure"]
    names = [trace["name"] for trace in figure["data"]]
    assert names == ["Refund desk", "Claims bot"]
    refund = figure["data"][0]
    assert sum(refund["y"]) == pytest.approx(10.0)
    assert refund["customdata"][0][0] == f"/finops/?team=alpha&agent={spend['refund'].pk}"
    assert figure["layout"]["barmode"] == "stack"
    # The figure reaches the page as JSON for static/finops/js/finops.js, no inline script.
    assert '<script id="trend-figure" type="application/json">' in response.content.decode()


# --- Drill-down -------------------------------------------------------------------------------


def test_numbers_lead_to_the_runs_and_traces_behind_them(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    response = client.get("/finops/?team=alpha&group=agent&range=7d")
    refund = next(r for r in response.context["spenders"] if r.item.group.label == "Refund desk")
    pk = spend["refund"].pk
    assert refund.drill.href == f"/finops/?team=alpha&range=7d&agent={pk}"
    assert refund.drill.runs == f"/fleet/runs/?team=alpha&agent={pk}&since=2026-03-04T00%3A00&until=2026-03-11T00%3A00"
    assert refund.drill.traces.startswith(f"/traces/?team=alpha&agent={pk}&since=")
    runs_page = client.get(refund.drill.runs)
    assert runs_page.status_code == 200
    assert {run.cost for run in runs_page.context["page"].runs} == {Decimal("3.000000"), Decimal("1.000000")}
    assert client.get(refund.drill.traces).status_code == 200
    # The drilled-down page: the agent's figures, and its costliest runs first.
    drilled = client.get(refund.drill.href)
    assert total_of(drilled) == Decimal("10.00")
    assert [run.cost for run in drilled.context["costliest_runs"]] == [Decimal("3.000000"), Decimal("1.000000")]
    assert "Agent: Refund desk" in text(drilled)


def test_no_link_leads_to_lists_that_cannot_narrow_as_the_page_does(client, admin_user, spend) -> None:
    """The runs and traces lists know teams, agents and models; a page narrowed to a tag or a
    workflow offers no link that would show more than its numbers count."""
    client.force_login(admin_user)
    response = client.get("/finops/?team=&tag=cockpit.cost_center%3Dclaims&group=agent")
    assert response.context["behind"].runs == response.context["behind"].traces == ""
    assert all(not r.drill.runs and not r.drill.traces for r in response.context["spenders"])
    assert response.context["burn_traces"] == ""


def test_models_lead_to_their_traces_not_to_runs(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    response = client.get("/finops/?team=&group=model")
    gpt = next(r for r in response.context["spenders"] if r.item.group.key == "gpt-4o")
    assert gpt.drill.runs == ""  # the runs list cannot narrow by model
    assert "model=gpt-4o" in gpt.drill.traces


# --- Figures ----------------------------------------------------------------------------------


def test_waste_and_cost_per_successful_run(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    response = client.get("/finops/?team=alpha")
    waste = {r.item.group.label: r.item for r in response.context["waste"]}
    refund = waste["Refund desk"]
    assert (refund.failed_span_cost, refund.retry_cost) == (Decimal("0.600000"), Decimal("0.400000"))
    assert (refund.failed_runs, refund.failed_run_cost) == (1, Decimal("1.000000"))
    per_run = {r.item.agent: r.item for r in response.context["per_run"]}
    assert per_run["Refund desk"].runs == 2 and per_run["Refund desk"].succeeded == 1
    assert per_run["Refund desk"].cost_per_success == Decimal("4.000000")  # the failed run's cost included
    page = text(response)
    assert "$4.00" in page and "Retry and failure waste" in page
    # Failed and retried calls: $1.00 of the $10.00 it cost.
    assert "Refund desk $0.60 · 1 $0.40 · 2 retries $1.00 · 1 10 %" in page


def test_unpriced_models_are_listed_as_unknown_never_as_zero(client, admin_user, team, spend) -> None:
    costdata.rollup(team, at=NOW, agent=spend["refund"], model="house-llama", provider="vllm", cost="0", unpriced=4)
    client.force_login(admin_user)
    response = client.get("/finops/?team=")
    page = text(response)
    assert "1 model without a price: 4 LLM calls not counted" in page
    assert "unknown, not zero" in page
    assert "house-llama" in page
    spender = next(r.item for r in client.get("/finops/?team=&group=model").context["spenders"] if r.item.unpriced)
    assert spender.group.key == "house-llama"


def test_the_unpriced_list_links_each_model_to_its_price_override_form(client, superuser, team, spend) -> None:  # noqa: ANN001
    costdata.rollup(team, at=NOW, agent=spend["refund"], model="house-llama", provider="vllm", cost="0", unpriced=4)
    client.force_login(superuser)
    link = re.search(
        r'href="([^"]*priceoverride/add/[^"]*)">set its price<', client.get("/finops/?team=").content.decode()
    )
    assert link and "model=house-llama" in link.group(1) and "provider=vllm" in link.group(1)
    form = client.get(link.group(1).replace("&amp;", "&")).content.decode()
    assert 'name="model" value="house-llama"' in form and 'name="provider" value="vllm"' in form


def test_an_empty_period_says_so(client, admin_user, spend) -> None:
    client.force_login(admin_user)
    response = client.get("/finops/?range=custom&since=2025-12-01&until=2025-12-02")
    assert total_of(response) == 0
    page = text(response)
    assert "No cost recorded in this period" in page
    assert "No run started in this period." in page


def test_forecast_and_budgets_on_the_dashboard(client, admin_user, team, spend) -> None:
    from finops.models import Forecast, period_bounds

    _, start, end = period_bounds("month", NOW)
    Forecast.objects.create(
        team=team,
        period="month",
        period_start=start,
        period_end=end,
        spent_to_date=Decimal("12.50"),
        projected_total=Decimal("40.00"),
        low=Decimal("31.00"),
        high=Decimal("52.00"),
        method="ETS",
    )
    budget_create(actor=costdata.SYSTEM, name="Alpha monthly", scope=BudgetScope.TEAM, team=team, limit_usd=50)
    client.force_login(admin_user)
    page = text(client.get("/finops/?team=alpha"))
    assert "$40.00" in page and "80 % range $31.00 – $52.00" in page
    assert "Alpha monthly" in page


# --- Live -------------------------------------------------------------------------------------


def test_the_burn_fragment_is_the_last_hour_of_spend(client, admin_user, team, spend) -> None:
    """At 12:30 the last 60 minutes are this hour so far and the second half of the last one."""
    costdata.rollup(team, at=NOW, agent=spend["claims"], cost="3.00")
    client.force_login(admin_user)
    response = client.get("/finops/?team=alpha", HTTP_HX_TARGET="finops-burn", **HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="finops-burn"') and "<html" not in body
    assert response.context["burn"].usd_per_hour == Decimal("5.000000")  # 3.00 + 4.00 × 0.5
    assert "$5.00" in text(response)
    # The spans behind it, and behind today's figure.
    assert response.context["burn_traces"] == "/traces/?team=alpha&since=2026-03-10T11%3A30"
    assert response.context["today_traces"] == "/traces/?team=alpha&since=2026-03-10T00%3A00"
    # Its element re-fetches itself through this view (finops.js triggers it on traces.arrived).
    assert 'hx-trigger="finops:refresh, every 60s"' in body
    assert 'hx-get="/finops/?team=alpha"' in body


def test_the_burn_fragment_checks_permission_like_the_page(client, make_user, team, spend) -> None:
    client.force_login(make_user(Role.VIEWER, team))
    assert client.get("/finops/", HTTP_HX_TARGET="finops-burn", **HTMX).status_code == 403


def test_a_budget_alert_shows_a_banner(client, make_user, team, other_team, spend) -> None:
    budget = budget_create(
        actor=costdata.SYSTEM, name="Alpha monthly", scope=BudgetScope.TEAM, team=team, limit_usd=10
    )
    hidden = budget_create(
        actor=costdata.SYSTEM, name="Beta monthly", scope=BudgetScope.TEAM, team=other_team, limit_usd=5
    )
    for b, spent in ((budget, "8.20"), (hidden, "6.00")):
        BudgetAlert.objects.create(
            budget=b, period="2026-03", threshold=80, spent=Decimal(spent), limit_usd=b.limit_usd
        )
    client.force_login(make_user(Role.FINANCE, team))
    response = client.get("/finops/", HTTP_HX_TARGET="finops-alerts", **HTMX)
    page = text(response)
    assert "Budget “Alpha monthly” reached 80 % of its limit — $8.20 of $10.00 spent in 2026-03." in page
    assert "Beta monthly" not in page
    assert 'data-live-on="finops.budget"' in response.content.decode()


# --- Cost of the page -------------------------------------------------------------------------


def test_the_page_costs_the_same_queries_whatever_it_holds(
    client, superuser, team, other_team, spend, django_assert_max_num_queries
) -> None:
    client.force_login(superuser)
    client.get("/finops/?team=")
    with CaptureQueriesContext(connection) as few:
        client.get("/finops/?team=")
    for n in range(30):
        agent = costdata.agent(team if n % 2 else other_team, f"bulk-{n}")
        for day in range(10):
            costdata.rollup(
                agent.team, at=NOW - timedelta(days=day), agent=agent, model=f"m-{n % 7}", tag=f"cc={n % 3}"
            )
        costdata.run(agent, at=NOW - timedelta(days=n % 9))
    with django_assert_max_num_queries(len(few)):
        response = client.get("/finops/?team=")
    assert len(response.context["options"]["agent"]) == 33
