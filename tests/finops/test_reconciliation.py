"""One figure of cost everywhere: each span priced exactly as genai-prices' ``calc_price`` prices
its usage (every kind of token), and the rollups, the dashboard, budgets, the chargeback CSV and
the runs' totals adding up exactly to the spans — for an external agent's runs too."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from finops import rollups, selectors
from finops.models import BudgetPeriod, BudgetScope, BudgetSpend, PriceOverride
from finops.selectors import CostFilter
from finops.services import budget_create, price_override_save, spans_reprice
from fleet.models import AgentKind, Run
from fleet.providers.base import Usage
from fleet.selectors import agent_tiles
from fleet.services import run_create, run_report
from fleet.templatetags.fleet_format import usd
from tests.finops.conftest import SYSTEM, span_row, write
from tests.finops.test_prices import calc_price_of
from traces.models import Span, Trace

pytestmark = pytest.mark.django_db


def csv_rows(client, query: str) -> list[dict[str, str]]:  # noqa: ANN001
    response = client.get(f"/finops/chargeback.csv?{query}")
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def dashboard_total(client, query: str) -> Decimal:  # noqa: ANN001
    found = re.search(r'data-total="([0-9.]+)"', client.get(f"/finops/?{query}").content.decode())
    assert found
    return Decimal(found.group(1))


def child_of(parent: str, **fields: Any) -> dict[str, Any]:
    row = span_row(**fields)
    row["parent_span_id"] = parent
    return row


# model, provider, token counts: cache reads and writes, reasoning, audio, tiers, no price at all
MIXED: list[tuple[str, str, dict[str, int]]] = [
    (
        "claude-sonnet-4-20250514",
        "anthropic",
        {"input_tokens": 12_345, "output_tokens": 678, "cache_read_tokens": 4_000, "cache_write_tokens": 7_001},
    ),
    (
        "claude-sonnet-4-20250514",
        "anthropic",
        {"input_tokens": 9_999, "output_tokens": 1, "cache_write_tokens": 9_999},
    ),
    ("gpt-4o", "openai", {"input_tokens": 3_333, "output_tokens": 444, "cache_read_tokens": 1_024}),
    ("o3-mini", "openai", {"input_tokens": 2_000, "output_tokens": 5_000, "reasoning_tokens": 4_321}),
    ("sonar-deep-research", "perplexity", {"input_tokens": 1_111, "output_tokens": 3_000, "reasoning_tokens": 2_222}),
    (
        "gpt-audio",
        "openai",
        {"input_tokens": 3_000, "output_tokens": 2_000, "input_audio_tokens": 999, "output_audio_tokens": 1_501},
    ),
    ("gemini-2.5-pro", "google", {"input_tokens": 250_001, "output_tokens": 1_234, "cache_read_tokens": 100_000}),
    ("house-llama", "vllm", {"input_tokens": 5_000, "output_tokens": 700}),
]


def test_span_costs_equal_calc_price_and_everything_adds_up_to_the_spans(client, superuser, team) -> None:  # noqa: ANN001
    budget = budget_create(actor=SYSTEM, name="all", scope=BudgetScope.TEAM, team=team, limit_usd="1000")
    now = timezone.now() - timedelta(minutes=1)
    rows = []
    for n, (model, provider, counts) in enumerate(MIXED * 3):
        start = now - timedelta(hours=n % 4, minutes=n)
        rows.append(span_row(start=start, model=model, provider=provider, agent_key="mixer", **counts))
    write(team, rows[:10])
    write(team, rows[10:])

    spans = list(Span.objects.filter(team=team).order_by("start_time", "id"))
    assert len(spans) == len(MIXED) * 3
    for span in spans:
        usage = Usage(**{k: getattr(span, k) or 0 for k in Usage.__dataclass_fields__})
        assert span.cost == calc_price_of(span.provider, span.model, usage, span.start_time), span.model
    assert {s.model for s in spans if s.cost is None} == {"house-llama"}
    total = sum((s.cost for s in spans if s.cost is not None), Decimal(0))

    since, until = now - timedelta(hours=5), now + timedelta(hours=1)
    compared, differences = rollups.reconcile(since=since, until=until)
    assert compared and not differences
    filters = CostFilter(since=since, until=until)
    assert selectors.total_cost(superuser, filters=filters) == total
    assert sum(Trace.objects.filter(team=team, cost__isnull=False).values_list("cost", flat=True), Decimal(0)) == total
    assert BudgetSpend.objects.get(budget=budget).spent == total

    client.force_login(superuser)
    assert dashboard_total(client, "range=7d&team=") == total
    by_model = csv_rows(client, "range=7d&team=&by=model")
    assert sum((Decimal(r["cost_usd"]) for r in by_model if r["cost_usd"]), Decimal(0)) == total
    priced = {r["model"]: (r["cost_usd"], r["priced"], r["unpriced_llm_calls"]) for r in by_model}
    # An unpriced model's cost is unknown, not zero: blank, and said so.
    assert priced["house-llama"] == ("", "no", "3")
    assert priced["gpt-4o"][1:] == ("yes", "0") and Decimal(priced["gpt-4o"][0]) > 0
    [team_row] = csv_rows(client, "range=7d&team=")
    assert (Decimal(team_row["cost_usd"]), team_row["priced"], team_row["unpriced_llm_calls"]) == (
        total,
        "partly",
        "3",
    )


def test_an_external_runs_cost_is_the_same_on_every_page(client, superuser, team, make_agent) -> None:  # noqa: ANN001
    agent = make_agent("crm-sync", kind=AgentKind.EXTERNAL)
    budget = budget_create(
        actor=SYSTEM,
        name="crm",
        scope=BudgetScope.AGENT,
        team=team,
        agent=agent,
        period=BudgetPeriod.DAY,
        limit_usd="100",
    )
    run, _ = run_create(actor=SYSTEM, agent=agent, external_ref="sync-42")
    now = timezone.now()
    trace_id = "c" * 32
    root_id = "a" * 16
    # The agent's calls end (and are exported) before its own span, and name no run...
    write(
        team,
        [
            child_of(root_id, start=now, trace_id=trace_id, model="gpt-4o", input_tokens=1_200, output_tokens=300),
            child_of(root_id, start=now, trace_id=trace_id, model="house-llama", provider="vllm"),
        ],
    )
    assert Run.objects.get(pk=run.pk).cost == 0
    # ... then its own span names the run (gen_ai.conversation.id = the run's reference) ...
    root = span_row(start=now, trace_id=trace_id, span_type="agent", model="", input_tokens=None, output_tokens=None)
    root.update(span_id=root_id, agent_key="crm-sync", conversation_id="sync-42")
    late = child_of(
        root_id, start=now, trace_id=trace_id, model="claude-sonnet-4-20250514", provider="anthropic",
        input_tokens=8_000, output_tokens=100, cache_write_tokens=6_000,
    )  # fmt: skip
    write(team, [root, late])
    # ... a re-delivered span counts once, and spans started under the run's own trace context count too.
    write(team, [dict(late)])
    write(team, [span_row(start=now, trace_id=run.trace_id, model="gpt-4o-mini", input_tokens=999)])
    run_report(actor=SYSTEM, run=run, report={"type": "status", "status": "succeeded"})

    spans = Span.objects.filter(team=team)
    total = sum((s.cost for s in spans if s.cost is not None), Decimal(0))
    assert spans.count() == 5 and total > 0
    run.refresh_from_db()
    assert run.cost == total
    assert run.tokens_in == 1_200 + 1_000 + 8_000 + 999 and run.unpriced_steps == 1
    assert sum(Trace.objects.filter(team=team, cost__isnull=False).values_list("cost", flat=True), Decimal(0)) == total

    # The fleet tile, the runs list, FinOps' runs and totals, and the chargeback CSV.
    [tile] = agent_tiles(superuser, team=team)
    assert tile.cost_today == total
    # The agent's budget counts the calls stored before the agent's span named the agent.
    assert BudgetSpend.objects.get(budget=budget).spent == total
    client.force_login(superuser)
    runs_page = client.get("/fleet/runs/").content.decode()
    assert usd(total) in runs_page and usd(Decimal(0)) not in runs_page
    filters = CostFilter(since=now - timedelta(hours=1), until=now + timedelta(hours=1))
    assert [(r.pk, r.cost) for r in selectors.costliest_runs(superuser, filters=filters)] == [(run.pk, total)]
    [per_run] = selectors.cost_per_successful_run(superuser, filters=filters)
    assert per_run.cost == total
    assert selectors.total_cost(superuser, filters=filters) == total
    assert dashboard_total(client, "range=7d&team=") == total
    assert sum((Decimal(r["cost_usd"]) for r in csv_rows(client, "range=7d&team=")), Decimal(0)) == total
    read = client.get(f"/api/v1/traces/{trace_id}").json()
    claude = next(span for span in read["spans"] if span["model"] == "claude-sonnet-4-20250514")
    assert (claude["cache_write_tokens"], Decimal(claude["cost"])) == (
        6_000,
        Span.objects.get(model=claude["model"]).cost,
    )
    # The call without a price says so in its trace, rather than costing $0.
    unpriced = Span.objects.get(model="house-llama")
    trace = Trace.objects.get(team=team, trace_id=trace_id)
    detail = client.get(reverse("trace-span", args=[trace.pk, unpriced.span_id])).content.decode()
    assert ">unpriced</span>" in detail and "$0.00" not in detail


def test_a_run_with_only_unpriced_calls_shows_unpriced_not_zero(client, superuser, team, make_agent) -> None:  # noqa: ANN001
    run, _ = run_create(actor=SYSTEM, agent=make_agent("crm-sync", kind=AgentKind.EXTERNAL))
    write(team, [span_row(trace_id=run.trace_id, model="house-llama", provider="vllm")])
    client.force_login(superuser)
    body = client.get("/fleet/runs/").content.decode()
    assert ">unpriced</span>" in body and "$0.00" not in body


def test_repricing_keeps_an_external_runs_cost_equal_to_its_spans(team, make_agent) -> None:  # noqa: ANN001
    run, _ = run_create(actor=SYSTEM, agent=make_agent("crm-sync", kind=AgentKind.EXTERNAL))
    now = timezone.now() - timedelta(minutes=1)
    write(team, [span_row(start=now, trace_id=run.trace_id, model="gpt-4o", input_tokens=n) for n in (1_000, 2_000)])
    before = Run.objects.get(pk=run.pk).cost
    price_override_save(
        actor=SYSTEM,
        override=PriceOverride(
            model="gpt-4o", effective_from=now - timedelta(days=1), input_per_mtok=1, output_per_mtok=1
        ),
    )
    spans_reprice(actor=SYSTEM, since=now - timedelta(hours=1), until=timezone.now())
    spans = Span.objects.filter(team=team)
    after = sum((s.cost for s in spans), Decimal(0))
    assert after == Decimal("0.004000") != before  # 3,000 in + 1,000 out at $1 per M
    assert Run.objects.get(pk=run.pk).cost == after
