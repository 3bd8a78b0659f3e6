"""Prices: genai-prices lookup (provider matching, cached tokens), the simulated models, and
admin overrides with effective dates, audited."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

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


def test_every_model_is_priced_exactly_as_genai_prices_prices_it() -> None:
    """Ingest prices most spans from per-model rates read once; they must give calc_price's
    figure to the micro-dollar, for every model of the snapshot, tiers and cache writes included."""
    import random
    from datetime import UTC, datetime

    from genai_prices import data_snapshot

    rng = random.Random(7)
    at = datetime(2026, 6, 1, tzinfo=UTC)
    compared = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            found = prices._library_match(provider.id, model.id)
            if found is None:
                continue
            for _ in range(2):
                inp = rng.choice([0, rng.randint(1, 5_000), rng.randint(150_000, 400_000)])
                read = rng.randint(0, inp)
                usage = Usage(
                    input_tokens=inp,
                    output_tokens=rng.randint(0, 20_000),
                    cache_read_tokens=read,
                    cache_write_tokens=rng.randint(0, inp - read),
                )
                try:
                    direct = prices._calc(found[0], found[1], inp, usage.output_tokens, read, usage, at)
                except Exception:  # noqa: BLE001, S112 - genai-prices cannot price this usage at all
                    continue
                fast = prices._library_price(provider.id, model.id, usage, at)
                assert fast is not None and fast.quantize(prices.COST_PLACES) == direct.quantize(prices.COST_PLACES), (
                    provider.id,
                    model.id,
                    usage,
                )
                compared += 1
    assert compared > 2000


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
