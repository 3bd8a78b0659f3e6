"""Rollups equal the spans they summarise (a property over random spans), the reconcile
command proves it for any range, and repricing recomputes costs and rollups together."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cockpit.models import AuditEvent
from finops.models import CostRollup, CostRollupDay, PriceOverride
from finops.rollups import reconcile
from finops.services import price_override_save
from tests.finops.conftest import SYSTEM, T, span_row, write
from traces.models import Span, Trace
from traces.semconv import SpanType

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("openai", "mystery-model"),
    ("simulated", "sim-small"),
]


@st.composite
def spans(draw):  # noqa: ANN001, ANN201
    provider, model = draw(st.sampled_from(MODELS))
    span_type = draw(st.sampled_from([SpanType.LLM, SpanType.LLM, SpanType.TOOL, SpanType.AGENT, SpanType.EMBEDDING]))
    input_tokens = draw(st.one_of(st.none(), st.integers(0, 200_000)))
    cached = draw(st.one_of(st.none(), st.integers(0, input_tokens or 0)))
    attributes = {}
    if draw(st.booleans()):
        attributes["cockpit.cost_center"] = draw(st.sampled_from(["claims", "fraud", "ops"]))
    if draw(st.booleans()):
        attributes["gen_ai.workflow.name"] = draw(st.sampled_from(["triage", "refunds"]))
    if draw(st.integers(0, 4)) == 0:
        attributes["cockpit.attempts"] = draw(st.integers(1, 4))
    recorded = draw(st.one_of(st.none(), st.decimals(min_value=0, max_value=5, places=6)))
    return span_row(
        start=T + timedelta(minutes=draw(st.integers(-300, 300))),
        model=model if span_type != SpanType.TOOL else "",
        provider=provider,
        input_tokens=input_tokens,
        output_tokens=draw(st.one_of(st.none(), st.integers(0, 50_000))),
        cache_read_tokens=cached,
        span_type=span_type,
        status_code=draw(st.sampled_from([0, 1, 2])),
        agent_key=draw(st.sampled_from(["", "bot-a", "bot-b"])),
        attributes=attributes,
        trace_id=f"{draw(st.integers(1, 6)):032x}",
        cost=recorded,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(spans(), min_size=1, max_size=12), min_size=1, max_size=5))
def test_rollups_equal_the_sum_of_span_costs(team, batches) -> None:  # noqa: ANN001
    Span.objects.all().delete()
    Trace.objects.all().delete()
    CostRollup.objects.all().delete()
    CostRollupDay.objects.all().delete()
    for batch in batches:
        write(team, batch)
    span_total = Span.objects.aggregate(c=Sum("cost"))["c"] or Decimal(0)
    rolled = CostRollup.objects.aggregate(c=Sum("cost"), n=Sum("spans"), i=Sum("input_tokens"))
    assert rolled["c"] == span_total
    assert rolled["n"] == Span.objects.count()
    leaf = Span.objects.exclude(span_type=SpanType.AGENT).aggregate(i=Sum("input_tokens"))["i"] or 0
    assert (rolled["i"] or 0) == leaf
    # Per rollup row too: no row may go negative when spans move to their trace's agent.
    assert not CostRollup.objects.filter(spans__lt=0).exists()
    compared, differences = reconcile(since=T - timedelta(hours=6), until=T + timedelta(hours=6))
    assert compared > 0 and differences == []


def test_reconcile_command_passes_and_fails_with_a_table(team) -> None:  # noqa: ANN001
    write(team, [span_row(start=T), span_row(start=T + timedelta(hours=1))])
    out = StringIO()
    call_command("finops_reconcile", "--since", "2026-03-10", "--until", "2026-03-11", stdout=out)
    # Two hours against their spans, one day against its hours.
    assert "OK: rollups equal the spans in 3 team-hours and team-days" in out.getvalue()
    CostRollup.objects.filter(hour=T.replace(minute=0)).update(cost=Decimal("1.000000"))
    err = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("finops_reconcile", "--since", "2026-03-10", "--until", "2026-03-11", stderr=err)
    assert exit_info.value.code == 1
    table = err.getvalue()
    assert "hour 2026-03-10 12:00Z" in table and "alpha" in table and "0.992500" in table
    assert "day  2026-03-10" in table  # the day no longer equals its (tampered) hours either
    assert "MISMATCH: 2 of 3 team-hours and team-days differ" in table
    CostRollup.objects.filter(hour=T.replace(minute=0)).update(cost=Decimal("0.007500"))
    CostRollupDay.objects.update(cost=Decimal("5"))
    err = StringIO()
    with pytest.raises(SystemExit):
        call_command("finops_reconcile", "--since", "2026-03-10", "--until", "2026-03-11", stderr=err)
    assert "MISMATCH: 1 of 3" in err.getvalue() and "day  2026-03-10" in err.getvalue()


def test_reconcile_rejects_a_backwards_range() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="before"):
        call_command("finops_reconcile", "--since", "2026-03-11", "--until", "2026-03-10")


def test_reprice_recomputes_spans_rollups_and_traces_after_an_override(team) -> None:  # noqa: ANN001
    write(
        team,
        [
            span_row(start=T, model="house-model", provider="vllm", trace_id="b" * 32),
            span_row(start=T, model="gpt-4o", trace_id="b" * 32),
            span_row(start=T - timedelta(days=2), model="house-model", provider="vllm"),
        ],
    )
    assert Span.objects.filter(model="house-model", cost__isnull=True).count() == 2
    price_override_save(
        actor=SYSTEM,
        override=PriceOverride(
            model="house-model",
            effective_from=T - timedelta(days=30),
            input_per_mtok=Decimal("1"),
            output_per_mtok=Decimal("2"),
        ),
    )
    out = StringIO()
    call_command("finops_reprice", "--since", "2026-03-10", "--until", "2026-03-11", "--team", "alpha", stdout=out)
    assert "Repriced 2 spans (1 changed, 1 traces updated)" in out.getvalue()
    assert "2/2 spans" in out.getvalue()  # the progress bar's last state
    repriced = Span.objects.get(model="house-model", start_time=T)
    assert repriced.cost == Decimal("0.002000")
    assert Span.objects.get(model="house-model", start_time=T - timedelta(days=2)).cost is None  # outside the range
    assert Trace.objects.get(trace_id="b" * 32).cost == Decimal("0.009500")
    rollup = CostRollup.objects.get(model="house-model", hour=T.replace(minute=0))
    assert (rollup.cost, rollup.priced, rollup.unpriced) == (Decimal("0.002000"), 1, 0)
    assert reconcile(since=T - timedelta(days=3), until=T + timedelta(days=1))[1] == []
    assert AuditEvent.objects.filter(action="finops.reprice").count() == 1
