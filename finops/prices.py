"""What a model call costs: an admin's override in force at the call's time, else the price
``genai-prices`` knows (model and provider matching, tiered and cached-token prices, price
history), else — for Cockpit's simulated models — their made-up prices. Anything else is
unpriced (``None``): shown as such, never counted as zero.

``genai-prices`` works offline from the snapshot shipped with the package (no update thread is
started). Overrides are read from the database at most every ``OVERRIDE_CACHE_SECONDS`` per
process (and at once in the process that changes them).
"""

from __future__ import annotations

import threading
import time
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone
from genai_prices import Usage as GenaiUsage
from genai_prices import data_snapshot
from genai_prices.data_snapshot import find_provider_by_id
from genai_prices.types import TieredPrices

from fleet.providers.base import Usage

COST_PLACES = Decimal("0.000001")
MILLION = Decimal(1_000_000)
MILLION_INT = 1_000_000
OVERRIDE_CACHE_SECONDS = 10.0
# OpenTelemetry's gen_ai.provider.name values genai-prices does not match on its own.
PROVIDER_ALIASES = {
    "x_ai": "x-ai",
    "xai": "x-ai",
    "azure.ai.inference": "azure",
    "az.ai.inference": "azure",
    "mistralai": "mistral",
}


@dataclass(frozen=True)
class Rate:
    """An override's prices per million tokens."""

    pk: int
    effective_from: datetime
    input: Decimal
    output: Decimal
    cache_read: Decimal | None

    def cost(self, usage: Usage) -> Decimal:
        cached = min(usage.cache_read_tokens, usage.input_tokens)
        cache_rate = self.input if self.cache_read is None else self.cache_read
        total = (usage.input_tokens - cached) * self.input + cached * cache_rate + usage.output_tokens * self.output
        return total / MILLION


class _Overrides:
    """All overrides, by (model, provider) and sorted by date, cached per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._by_key: dict[tuple[str, str], tuple[list[datetime], list[Rate]]] = {}

    def invalidate(self) -> None:
        self._loaded_at = -1e9

    def _load(self) -> dict[tuple[str, str], tuple[list[datetime], list[Rate]]]:
        now = time.monotonic()
        if now - self._loaded_at < OVERRIDE_CACHE_SECONDS:
            return self._by_key
        with self._lock:
            if now - self._loaded_at < OVERRIDE_CACHE_SECONDS:
                return self._by_key
            from finops.models import PriceOverride

            grouped: dict[tuple[str, str], list[Rate]] = {}
            for row in PriceOverride.objects.order_by("effective_from", "pk"):
                grouped.setdefault((row.model.lower(), row.provider.lower()), []).append(
                    Rate(row.pk, row.effective_from, row.input_per_mtok, row.output_per_mtok, row.cache_read_per_mtok)
                )
            self._by_key = {key: ([r.effective_from for r in rates], rates) for key, rates in grouped.items()}
            self._loaded_at = now
            return self._by_key

    def rate(self, model: str, provider: str, at: datetime) -> Rate | None:
        by_key = self._load()
        if not by_key:
            return None
        model = model.lower()
        for key in ((model, provider.lower()), (model, "")):
            found = by_key.get(key)
            if found is None:
                continue
            dates, rates = found
            index = bisect_right(dates, at)
            if index:
                return rates[index - 1]
        return None


overrides = _Overrides()


def _library_price(provider: str, model: str, usage: Usage, at: datetime) -> Decimal | None:
    found = _library_match(provider, model)
    if found is None:
        return None
    found_provider, found_model = found
    cached = min(usage.cache_read_tokens, usage.input_tokens)
    model_price = found_model.get_prices(at)
    rates = _linear_rates(found_provider, found_model, model_price, at)
    if (
        rates is not None and cached + usage.cache_write_tokens <= usage.input_tokens
    ):  # the same figure calc_price gives, for a fraction of its cost
        fixed, per_input, per_output, per_cache_read, per_cache_write = rates
        return (
            fixed
            + per_input * usage.input_tokens
            + per_output * usage.output_tokens
            + per_cache_read * cached
            + per_cache_write * usage.cache_write_tokens
        )
    return _calc(found_provider, found_model, usage.input_tokens, usage.output_tokens, cached, usage, at)


_matches: dict[tuple[int, str, str], tuple[Any, Any] | None] = {}
_rates: dict[int, tuple[Any, tuple[Decimal, ...] | None]] = {}


def _library_match(provider: str, model: str) -> tuple[Any, Any] | None:
    """genai-prices' (provider, model) for these names, looked up once per process."""
    snapshot = data_snapshot.get_snapshot()
    key = (id(snapshot), provider, model)
    if key in _matches:
        return _matches[key]
    provider_id: str | None = PROVIDER_ALIASES.get(provider, provider) or None
    if provider_id is not None and find_provider_by_id(snapshot.providers, provider_id) is None:
        provider_id = None  # a provider genai-prices does not know: match by the model alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found: tuple[Any, Any] | None = snapshot.find_provider_model(model, None, provider_id, None)
    except LookupError:
        found = None
    if len(_matches) > 10_000:
        _matches.clear()
    _matches[key] = found
    return found


def _calc(
    found_provider: Any, found_model: Any, input: int, output: int, cache_read: int, usage: Usage | None, at: datetime
) -> Decimal:
    genai_usage = GenaiUsage(
        input_tokens=input,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=usage.cache_write_tokens if usage is not None else 0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculation = found_model.calc_price(genai_usage, found_provider, genai_request_timestamp=at)
    return Decimal(calculation.total_price)


def _linear_rates(found_provider: Any, found_model: Any, model_price: Any, at: datetime) -> tuple[Decimal, ...] | None:
    """Without token tiers a model's price is affine in its token counts: a fixed part and one
    rate per kind of token, read once from calc_price itself. ``None`` when tiers apply."""
    cached = _rates.get(id(model_price))
    if cached is not None and cached[0] is model_price:
        return cached[1]
    rates: tuple[Decimal, ...] | None = None
    if not any(isinstance(value, TieredPrices) for value in vars(model_price).values()):
        try:
            fixed = _calc(found_provider, found_model, 0, 0, 0, None, at)
            per_input = (_calc(found_provider, found_model, MILLION_INT, 0, 0, None, at) - fixed) / MILLION
            per_output = (_calc(found_provider, found_model, 0, MILLION_INT, 0, None, at) - fixed) / MILLION
            with_cache = _calc(found_provider, found_model, MILLION_INT, 0, MILLION_INT, None, at)
            per_cache_read = (with_cache - fixed) / MILLION - per_input
            write = Usage(input_tokens=0, output_tokens=0, cache_write_tokens=MILLION_INT)
            with_write = _calc(found_provider, found_model, MILLION_INT, 0, 0, write, at)
            per_cache_write = (with_write - fixed) / MILLION - per_input
            rates = (fixed, per_input, per_output, per_cache_read, per_cache_write)
        except Exception:  # noqa: BLE001 - a price calc_price cannot split: use calc_price every time
            rates = None
    _rates[id(model_price)] = (model_price, rates)
    return rates


def price(*, provider: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
    """The cost in USD of ``usage`` on ``model`` at ``at`` (default now), 6 places; ``None``
    when no price is known."""
    if not model:
        return None
    at = at or timezone.now()
    provider = (provider or "").lower()
    rate = overrides.rate(model, provider, at)
    if rate is not None:
        cost: Decimal | None = rate.cost(usage)
    elif provider == "simulated":
        from fleet.providers.simulated import simulated_price

        cost = simulated_price(model, usage)
    else:
        cost = _library_price(provider, model, usage, at)
    return None if cost is None else Decimal(cost).quantize(COST_PLACES)


def source(*, provider: str, model: str, at: datetime | None = None) -> str:
    """Where the price of ``model`` comes from: ``override``, ``genai-prices``, ``simulated``
    or ``unpriced`` (for the admin and the unpriced list)."""
    at = at or timezone.now()
    if overrides.rate(model, provider, at) is not None:
        return "override"
    probe = Usage(input_tokens=1000, output_tokens=1000)
    if provider.lower() == "simulated":
        return "simulated" if price(provider=provider, model=model, usage=probe, at=at) is not None else "unpriced"
    return "genai-prices" if _library_price(provider.lower(), model, probe, at) is not None else "unpriced"


class CockpitPricer:
    """The pricer seam (``fleet.seams.Pricer``): called by the runtime for an LLM call's worst
    case before it and its cost after it, and by the span store for spans that carry no cost."""

    def price(self, *, provider_system: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
        return price(provider=provider_system, model=model, usage=usage, at=at)
