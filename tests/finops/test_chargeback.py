"""The chargeback CSV: one row per period × dimension, the dashboard's filters, amounts that add
up to the dashboard's total to the cent (from spans priced at ingest), only the teams one may
see, and a file name that says what it holds."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from cockpit.roles import Role
from finops import selectors
from finops.selectors import CostFilter
from tests.finops import costdata
from tests.finops.conftest import span_row, write

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
SPANS = 36  # one a day, back to February 3


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def spans(team, other_team) -> None:  # noqa: ANN001
    """Real spans, priced at ingest by genai-prices (odd fractions of a cent), over February and
    March, in two teams, on three models, one of them without a price, with cost-center tags."""
    costdata.agent(team, "refund-desk", "Refund desk")
    costdata.agent(other_team, "beta-bot", "Beta bot")
    rows = []
    for n in range(SPANS):
        start = NOW - timedelta(days=n, hours=n % 5)
        rows.append(
            span_row(
                start=start,
                agent_key="refund-desk",
                model=("gpt-4o", "gpt-4o-mini", "house-llama")[n % 3],
                provider="vllm" if n % 3 == 2 else "openai",
                input_tokens=1234 + 17 * n,
                output_tokens=321 + 7 * n,
                cache_read_tokens=100 if n % 4 == 0 else None,
                attributes={"cockpit.cost_center": ("claims", "support")[n % 2]},
            )
        )
    write(team, rows)
    write(
        other_team, [span_row(start=NOW - timedelta(days=d), agent_key="beta-bot", input_tokens=777) for d in (1, 33)]
    )


def read(response) -> list[dict[str, str]]:  # noqa: ANN001
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def dashboard_total(client, query: str) -> Decimal:  # noqa: ANN001
    found = re.search(r'data-total="([0-9.]+)"', client.get(f"/finops/?{query}").content.decode())
    assert found
    return Decimal(found.group(1))


@pytest.mark.parametrize(
    "query",
    [
        "range=90d&team=",
        "range=month&team=",
        "range=last-month&team=",
        "range=30d&team=alpha",
        "range=90d&team=&model=gpt-4o-mini",
        "range=custom&since=2026-02-14&until=2026-03-03&team=",
    ],
)
@pytest.mark.parametrize("by", ["by=team", "by=team&by=model", "by=agent&bucket=day", "by=tag&bucket=week"])
def test_the_csv_adds_up_to_the_dashboard_to_the_cent(client, superuser, spans, query, by) -> None:  # noqa: ANN001
    client.force_login(superuser)
    rows = read(client.get(f"/finops/chargeback.csv?{query}&{by}"))
    exact = sum((Decimal(r["cost_usd"]) for r in rows if r["priced"] != "no"), Decimal(0))
    assert all(r["cost_usd"] == "" for r in rows if r["priced"] == "no")  # unknown, not zero
    shown = dashboard_total(client, query)
    assert exact == shown  # the page carries the exact total; the CSV's rows add up to it
    assert exact.quantize(Decimal("0.01")) == shown.quantize(Decimal("0.01"))
    assert exact > 0 or "model=" in query


def test_rows_are_team_by_month_with_tokens_and_unpriced_calls(client, superuser, spans) -> None:
    client.force_login(superuser)
    response = client.get("/finops/chargeback.csv?range=90d&team=")
    assert response["Content-Disposition"] == (
        'attachment; filename="cockpit-chargeback-team-by-month-2025-12-11_2026-03-10.csv"'
    )
    rows = read(response)
    assert list(rows[0]) == [
        "period",
        "team",
        "team_id",
        "cost_usd",
        "priced",
        "input_tokens",
        "output_tokens",
        "spans",
        "unpriced_llm_calls",
    ]
    assert [(r["period"], r["team"], r["team_id"]) for r in rows] == [
        ("2026-02", "Alpha", "alpha"),
        ("2026-02", "Beta", "beta"),
        ("2026-03", "Alpha", "alpha"),
        ("2026-03", "Beta", "beta"),
    ]
    assert all(re.fullmatch(r"\d+\.\d{6}", r["cost_usd"]) for r in rows)
    assert {r["priced"] for r in rows} == {"partly", "yes"}  # Alpha's house-llama calls have no price
    alpha = [r for r in rows if r["team"] == "Alpha"]
    assert sum(int(r["spans"]) for r in alpha) == SPANS
    unpriced = len([n for n in range(SPANS) if n % 3 == 2])  # house-llama has no price
    assert sum(int(r["unpriced_llm_calls"]) for r in alpha) == unpriced == 12
    assert sum(int(r["input_tokens"]) for r in alpha) == sum(1234 + 17 * n for n in range(SPANS))
    # The same rows as the selector, amount for amount.
    start = datetime(2025, 12, 11, tzinfo=UTC)
    expected = selectors.chargeback(
        superuser, filters=CostFilter(since=start, until=datetime(2026, 3, 11, tzinfo=UTC))
    )
    assert [Decimal(r["cost_usd"]) for r in rows] == [c.cost for c in expected]


def test_any_dimension_by_day(client, superuser, team, spans) -> None:
    client.force_login(superuser)
    rows = read(client.get("/finops/chargeback.csv?range=7d&team=alpha&by=agent&by=tag&bucket=day"))
    assert list(rows[0])[:6] == ["period", "agent", "agent_id", "tag", "cost_usd", "priced"]
    assert {r["agent"] for r in rows} == {"Refund desk"}
    assert {r["tag"] for r in rows} == {"cockpit.cost_center=claims", "cockpit.cost_center=support"}
    assert sorted({r["period"] for r in rows}) == [f"2026-03-{d:02d}" for d in range(4, 11)]


def test_finance_of_a_team_exports_only_its_rows(client, make_user, team, spans) -> None:
    client.force_login(make_user(Role.FINANCE, team))
    rows = read(client.get("/finops/chargeback.csv?range=90d&team="))
    assert {r["team"] for r in rows} == {"Alpha"}
    # Naming another team does not reveal it: no rows, same as a team without spend.
    assert read(client.get("/finops/chargeback.csv?range=90d&team=beta")) == []


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER])
def test_roles_without_cost_access_get_no_csv(client, make_user, team, spans, role) -> None:  # noqa: ANN001
    client.force_login(make_user(role, team))
    assert client.get("/finops/chargeback.csv").status_code == 403


def test_signed_out_people_are_sent_to_sign_in(client, spans) -> None:
    response = client.get("/finops/chargeback.csv")
    assert response.status_code == 302 and response["Location"].startswith("/account/login/")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("range=custom", "Custom dates need a start day"),
        ("by=colour", "Select a valid choice"),
        ("bucket=year", "Select a valid choice"),
        ("range=custom&since=2026-03-09&until=2026-03-01", "'From' must not be after 'To'."),
    ],
)
def test_bad_requests_say_why(client, superuser, spans, query, message) -> None:  # noqa: ANN001
    client.force_login(superuser)
    response = client.get(f"/finops/chargeback.csv?{query}")
    assert response.status_code == 400
    assert message in response.content.decode()
