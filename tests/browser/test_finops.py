"""A finance person opens the FinOps dashboard, switches the chart to agents, drills into the
costliest one and down to its runs, downloads the chargeback CSV — and watches the burn rate
move and a budget banner appear as spans arrive, without reloading."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from cockpit.roles import Role
from cockpit.services import membership_grant
from finops import services
from finops.models import BudgetScope, BudgetSpend, period_bounds
from fleet.models import RunStatus
from tests.browser.conftest import sign_in
from tests.factories import SYSTEM
from tests.finops import costdata
from tests.finops.conftest import span_row, write

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def spend(team, other_team):  # noqa: ANN001, ANN201
    """Refund desk (Alpha) is the costliest agent: $42 over the last days; Claims bot $9;
    Beta bot (Beta) $15. Each has runs."""
    now = timezone.now()
    refund = costdata.agent(team, "refund-desk", "Refund desk")
    claims = costdata.agent(team, "claims-bot", "Claims bot")
    beta = costdata.agent(other_team, "beta-bot", "Beta bot")
    for day, amount in ((1, "20.00"), (2, "22.00")):
        costdata.rollup(team, at=now - timedelta(days=day), agent=refund, cost=amount)
    costdata.rollup(team, at=now - timedelta(days=1), agent=claims, cost="9.00", model="claude-sonnet-4")
    costdata.rollup(other_team, at=now - timedelta(days=3), agent=beta, cost="15.00", model="gpt-4o-mini")
    runs = [
        costdata.run(refund, cost="12.50", at=now - timedelta(days=1)),
        costdata.run(refund, cost="4.25", status=RunStatus.FAILED, at=now - timedelta(days=2)),
        costdata.run(claims, cost="1.10", at=now - timedelta(days=1)),
    ]
    return {"refund": refund, "claims": claims, "beta": beta, "runs": runs}


def test_finance_explores_costs_drills_down_and_exports(page, make_user, team, other_team, password, spend) -> None:
    fran = make_user(Role.FINANCE, team, username="fran")
    membership_grant(actor=SYSTEM, user=fran, team=other_team, role=Role.FINANCE)
    sign_in(page, "fran", password)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="FinOps").click()
    expect(page.get_by_role("heading", name="FinOps", exact=True)).to_be_visible()
    total = page.locator("[data-total]")
    expect(total).to_have_text("$66.00")
    breakdown = page.locator("#finops-breakdown")
    expect(breakdown.locator("h2")).to_have_text("Cost over time, by team")
    expect(page.locator("#trend-plot .barlayer .trace")).to_have_count(2)  # Alpha and Beta, stacked

    # Group by agent: only the chart's card is re-fetched; the address follows.
    breakdown.get_by_role("link", name="Agent", exact=True).click()
    expect(breakdown.locator("h2")).to_have_text("Cost over time, by agent")
    expect(page).to_have_url(re.compile(r"group=agent"))  # a link: the chart comes with the page
    expect(page.locator("#trend-plot .barlayer .trace")).to_have_count(3)
    spenders = page.locator(".finops-spenders tbody tr")
    expect(spenders.first).to_contain_text("Refund desk")
    expect(spenders.first).to_contain_text("$42.00")
    expect(spenders.first).to_contain_text("64 %")

    # Drill into the costliest agent: the page narrows to it, its runs costliest first.
    spenders.first.get_by_role("link", name="Refund desk").click()
    expect(page).to_have_url(re.compile(rf"agent={spend['refund'].pk}"))
    expect(page.locator(".finops-chip")).to_contain_text("Agent: Refund desk")
    expect(total).to_have_text("$42.00")
    expect(page.locator("#finops-breakdown h2")).to_have_text("Cost over time, by model")
    runs = page.locator("section[aria-labelledby=runs-title] tbody tr")
    expect(runs).to_have_count(2)
    expect(runs.first).to_contain_text(f"#{spend['runs'][0].pk}")
    expect(runs.first).to_contain_text("$12.50")
    # … and on to every run of it in the period, in the runs list.
    page.get_by_role("link", name="All runs in this period").click()
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.locator("#run-rows tbody tr")).to_have_count(2)
    page.go_back()

    # The chargeback CSV of what the page shows (this agent), team × month.
    page.get_by_text("Download CSV").click()
    with page.expect_download() as download_info:
        page.locator("[data-export=team]").click()
    download = download_info.value
    assert re.fullmatch(
        r"cockpit-chargeback-team-by-month-\d{4}-\d\d-\d\d_\d{4}-\d\d-\d\d\.csv", download.suggested_filename
    )
    rows = list(csv.DictReader(io.StringIO(open(download.path(), encoding="utf-8").read())))  # noqa: SIM115
    assert [(r["team"], r["cost_usd"]) for r in rows] in (
        [("Alpha", "42.000000")],
        [("Alpha", "20.000000"), ("Alpha", "22.000000")],  # the two days fell in two months
    )
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal("42")


def test_the_burn_rate_moves_and_a_budget_banner_appears_as_spans_arrive(
    page, make_user, team, password, spend
) -> None:
    make_user(Role.FINANCE, team, username="fiona")
    sign_in(page, "fiona", password)
    page.goto("/finops/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
    burn = page.locator("[data-flash-key=burn]")
    expect(burn).to_have_text("$0.00/h")
    page.evaluate("window.__marker = 'same page'")

    # Spans of a priced model arrive for the team (as OTLP ingest stores them).
    now = timezone.now()
    write(team, [span_row(start=now, agent_key="refund-desk", input_tokens=2_000_000, output_tokens=500_000)])
    expect(burn).not_to_have_text("$0.00/h", timeout=15_000)
    assert Decimal(burn.inner_text().removeprefix("$").removesuffix("/h").replace(",", "")) > 1
    assert page.evaluate("window.__marker") == "same page"

    # A budget crosses 80 %: the banner says so, live.
    budget = services.budget_create(
        actor=SYSTEM, name="Alpha monthly", scope=BudgetScope.TEAM, team=team, limit_usd=50
    )
    key, start, end = period_bounds("month", now)
    BudgetSpend.objects.update_or_create(
        budget=budget, period=key, defaults={"period_start": start, "period_end": end, "spent": Decimal("41")}
    )
    services.budget_alerts_raise(budget=budget, period=key)
    banner = page.locator("#finops-alerts .finops-alert")
    expect(banner).to_contain_text("Budget “Alpha monthly” reached 80 % of its limit", timeout=15_000)
    expect(banner).to_contain_text("$41.00 of $50.00")
    assert page.evaluate("window.__marker") == "same page"
