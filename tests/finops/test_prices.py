"""Prices: genai-prices lookup (provider matching, cached tokens), the simulated models, and
admin overrides with effective dates, audited."""

from __future__ import annotations

import random
import warnings
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price, data_snapshot

from cockpit.models import AuditEvent
from finops import prices
from finops.models import PriceOverride
from finops.services import price_override_delete, price_override_save
from fleet import seams
from fleet.providers.base import Usage
from tests.finops.conftest import SYSTEM, T

USAGE = Usage(input_tokens=1000, output_tokens=500)


def override(model: str, inp: str, out: str, *, provider: str = "", days: int = 0, cached: str | None = None):  # noqa: ANN201
    return price_override_save(
        actor=SYSTEM,
        override=PriceOverride(
            model=model,
            provider=provider,
            effective_from=T + timedelta(days=days),
            input_per_mtok=Decimal(inp),
            output_per_mtok=Decimal(out),
            cache_read_per_mtok=None if cached is None else Decimal(cached),
        ),
    )


def test_library_prices_a_known_model_for_its_provider() -> None:
    # gpt-4o: $2.50 / M input, $10 / M output.
    assert prices.price(provider="openai", model="gpt-4o", usage=USAGE) == Decimal("0.007500")


def test_cached_input_tokens_cost_less() -> None:
    cached = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=800)
    # 200 fresh input at $2.50/M + 800 cached at $1.25/M + 500 output at $10/M.
    assert prices.price(provider="openai", model="gpt-4o", usage=cached) == Decimal("0.006500")


def calc_price_of(provider: str, model: str, usage: Usage, at: datetime) -> Decimal | None:
    """genai-prices' own figure, its usage built here by hand (not with the code under test)."""
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "output_reasoning_tokens": usage.reasoning_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = calc_price(
                GenaiUsage(**{k: v for k, v in counts.items() if v}),
                model,
                provider_id=provider,
                genai_request_timestamp=at,
            )
    except (LookupError, ValueError):
        return None
    return Decimal(found.total_price).quantize(prices.COST_PLACES)


def test_every_model_is_priced_exactly_as_genai_prices_prices_it() -> None:
    """Ingest prices most spans from per-model rates read once; they must give calc_price's
    figure to the micro-dollar, for every model of the snapshot and every kind of token (cache
    reads and writes, reasoning, audio), tiers included; where calc_price cannot price the
    counts, neither do we (unpriced, not a guess)."""
    rng = random.Random(7)
    at = datetime(2026, 6, 1, tzinfo=UTC)
    compared = refused = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            if prices._library_match(provider.id, model.id) is None:
                continue
            for _ in range(3):
                inp = rng.choice([0, rng.randint(1, 5_000), rng.randint(150_000, 400_000)])
                read = rng.randint(0, inp)
                write = rng.randint(0, inp - read)
                out = rng.randint(0, 20_000)
                reasoning = rng.choice([0, rng.randint(0, out)])
                usage = Usage(
                    input_tokens=inp,
                    output_tokens=out,
                    cache_read_tokens=read,
                    cache_write_tokens=write,
                    input_audio_tokens=rng.choice([0, 0, rng.randint(0, inp - read - write)]),
                    reasoning_tokens=reasoning,
                    output_audio_tokens=rng.choice([0, 0, rng.randint(0, out - reasoning)]),
                )
                want = calc_price_of(provider.id, model.id, usage, at)
                got = prices.price(provider=provider.id, model=model.id, usage=usage, at=at)
                assert got == want, (provider.id, model.id, usage)
                compared += 1
                refused += want is None
    assert compared > 3000 and refused < compared / 100


def test_cache_writes_are_priced_at_the_cache_write_rate_not_as_plain_input() -> None:
    # claude-sonnet-4: $3/M input, $3.75/M cache write, $0.30/M cache read, $15/M output.
    at = datetime(2026, 6, 1, tzinfo=UTC)
    usage = Usage(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=2_000, cache_write_tokens=6_000)
    got = prices.price(provider="anthropic", model="claude-sonnet-4-20250514", usage=usage, at=at)
    # 2,000 fresh × $3 + 6,000 written × $3.75 + 2,000 read × $0.30 + 1,000 out × $15, per M.
    assert got == Decimal("0.044100") == calc_price_of("anthropic", "claude-sonnet-4-20250514", usage, at)


def test_counts_larger_than_their_total_are_read_as_far_as_the_total_allows() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    odd = Usage(
        input_tokens=1_000, output_tokens=100, cache_read_tokens=800, cache_write_tokens=900, reasoning_tokens=500
    )
    fixed = Usage(
        input_tokens=1_000, output_tokens=100, cache_read_tokens=800, cache_write_tokens=200, reasoning_tokens=100
    )
    got = prices.price(provider="anthropic", model="claude-sonnet-4-20250514", usage=odd, at=at)
    assert got is not None and got == calc_price_of("anthropic", "claude-sonnet-4-20250514", fixed, at)


def test_opentelemetry_provider_names_are_matched() -> None:
    vertex = prices.price(provider="gcp.vertex_ai", model="gemini-1.5-pro", usage=USAGE)
    assert vertex is not None and vertex > 0
    assert prices.price(provider="x_ai", model="grok-3", usage=USAGE) is not None
    # A provider genai-prices does not know: the model name alone decides.
    assert prices.price(provider="my-gateway", model="claude-3-5-sonnet-20241022", usage=USAGE) == Decimal("0.010500")


def test_an_unknown_model_is_unpriced_not_free() -> None:
    assert prices.price(provider="openai", model="llama-3.1-70b-selfhosted", usage=USAGE) is None
    assert prices.price(provider="openai", model="", usage=USAGE) is None
    assert prices.source(provider="openai", model="llama-3.1-70b-selfhosted") == "unpriced"


def test_simulated_models_keep_their_made_up_prices() -> None:
    # sim-large: $2.50 / $10 per M.
    assert prices.price(provider="simulated", model="sim-large", usage=USAGE) == Decimal("0.007500")
    assert prices.price(provider="simulated", model="no-such-sim", usage=USAGE) is None


def test_the_registered_pricer_is_cockpits() -> None:
    assert isinstance(seams.current.pricer, prices.CockpitPricer)
    assert seams.current.pricer.price(provider_system="openai", model="gpt-4o", usage=USAGE) == Decimal("0.007500")


def test_the_override_in_force_at_the_calls_time_wins() -> None:
    override("llama-3.1-70b", "1.00", "2.00", days=0)
    override("llama-3.1-70b", "0.50", "1.00", days=10)
    before = prices.price(provider="openai", model="llama-3.1-70b", usage=USAGE, at=T - timedelta(seconds=1))
    first = prices.price(provider="openai", model="llama-3.1-70b", usage=USAGE, at=T + timedelta(days=3))
    second = prices.price(provider="openai", model="Llama-3.1-70B", usage=USAGE, at=T + timedelta(days=11))
    assert before is None  # no override yet, and genai-prices has no such OpenAI model
    assert first == Decimal("0.002000")  # 1000 × $1 + 500 × $2 per M
    assert second == Decimal("0.001000")


def test_an_override_beats_the_library_and_a_provider_specific_one_beats_any_provider() -> None:
    override("gpt-4o", "1.00", "1.00")
    override("gpt-4o", "2.00", "2.00", provider="azure.ai.openai")
    at = T + timedelta(days=1)
    assert prices.price(provider="openai", model="gpt-4o", usage=USAGE, at=at) == Decimal("0.001500")
    assert prices.price(provider="azure.ai.openai", model="gpt-4o", usage=USAGE, at=at) == Decimal("0.003000")
    assert prices.source(provider="openai", model="gpt-4o", at=at) == "override"


def test_override_cached_token_price() -> None:
    override("house-model", "1.00", "4.00", cached="0.10")
    usage = Usage(input_tokens=1000, output_tokens=0, cache_read_tokens=600)
    # 400 × $1 + 600 × $0.10 per M.
    assert prices.price(provider="", model="house-model", usage=usage, at=T) == Decimal("0.000460")


def test_override_prices_every_kind_of_token_at_its_own_rate() -> None:
    row = override("house-model", "1.00", "4.00", cached="0.10")
    row.cache_write_per_mtok, row.reasoning_per_mtok = Decimal("1.25"), Decimal("8.00")
    row.input_audio_per_mtok, row.output_audio_per_mtok = Decimal("10.00"), Decimal("20.00")
    price_override_save(actor=SYSTEM, override=row)
    usage = Usage(
        input_tokens=10_000,
        output_tokens=1_000,
        cache_read_tokens=4_000,
        cache_write_tokens=2_000,
        input_audio_tokens=1_000,
        reasoning_tokens=300,
        output_audio_tokens=200,
    )
    # 3,000 × $1 + 4,000 × $0.10 + 2,000 × $1.25 + 1,000 × $10 + 500 × $4 + 300 × $8 + 200 × $20, per M.
    assert prices.price(provider="", model="house-model", usage=usage, at=T) == Decimal("0.024300")
    # Rates left empty are the input and output prices.
    plain = override("plain-model", "1.00", "4.00")
    assert plain.cache_write_per_mtok is None
    assert prices.price(provider="", model="plain-model", usage=usage, at=T) == Decimal("0.014000")


def test_override_changes_are_audited_and_deletion_too() -> None:
    row = override("house-model", "1.00", "4.00")
    row.output_per_mtok = Decimal("3.00")
    price_override_save(actor=SYSTEM, override=row, reason="new contract")
    price_override_delete(actor=SYSTEM, override=row, reason="model retired")
    actions = list(
        AuditEvent.objects.filter(object_type="finops.priceoverride").order_by("id").values_list("action", "reason")
    )
    assert actions == [
        ("price_override.create", ""),
        ("price_override.update", "new contract"),
        ("price_override.delete", "model retired"),
    ]
    assert prices.price(provider="", model="house-model", usage=USAGE, at=T) is None


def test_a_negative_price_is_refused() -> None:
    with pytest.raises(ValidationError):
        override("house-model", "-1", "1")
    for rate in ("cache_write_per_mtok", "reasoning_per_mtok", "input_audio_per_mtok", "output_audio_per_mtok"):
        row = PriceOverride(model="house-model", effective_from=T, input_per_mtok=1, output_per_mtok=1)
        setattr(row, rate, Decimal("-0.5"))
        with pytest.raises(ValidationError):
            price_override_save(actor=SYSTEM, override=row)
    assert not PriceOverride.objects.exists()


def test_admin_adds_an_override_and_it_is_audited(client, superuser) -> None:  # noqa: ANN001
    client.force_login(superuser)
    response = client.post(
        reverse("admin:finops_priceoverride_add"),
        {
            "model": "house-model",
            "provider": "",
            "effective_from_0": "2026-03-01",
            "effective_from_1": "00:00:00",
            "input_per_mtok": "1.5",
            "output_per_mtok": "3",
            "cache_read_per_mtok": "",
            "note": "self-hosted GPU estimate",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    row = PriceOverride.objects.get()
    assert row.created_by_label == superuser.username
    event = AuditEvent.objects.get(action="price_override.create")
    assert event.actor_label == superuser.username and event.reason == "self-hosted GPU estimate"
    assert prices.price(provider="vllm", model="house-model", usage=USAGE) == Decimal("0.003000")


def test_admin_creates_and_raises_a_budget_through_the_audited_services(client, superuser, team) -> None:  # noqa: ANN001
    from finops.models import Budget

    client.force_login(superuser)
    form = {
        "name": "Alpha monthly",
        "scope": "team",
        "team": team.pk,
        "agent": "",
        "workflow": "",
        "tag": "",
        "period": "month",
        "limit_usd": "100",
        "thresholds": "[50, 80, 100]",
        "action": "pause",
        "alert_emails": '["fin@example.com"]',
        "webhook_url": "",
        "webhook_secret": "",
        "active": "on",
        "raise_reason": "",
    }
    response = client.post(reverse("admin:finops_budget_add"), form)
    assert response.status_code == 302, response.content[:3000]
    budget = Budget.objects.get()
    response = client.post(
        reverse("admin:finops_budget_change", args=[budget.pk]),
        {**form, "limit_usd": "150", "raise_reason": "hiring spree"},
    )
    assert response.status_code == 302, response.content[:3000]
    budget.refresh_from_db()
    assert budget.limit_usd == 150
    actions = list(
        AuditEvent.objects.filter(object_type="finops.budget").order_by("id").values_list("action", "reason")
    )
    assert actions == [("budget.create", ""), ("budget.raise", "hiring spree")]
