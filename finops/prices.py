"""What a model call costs: an admin's override in force at the call's time, else the price
``genai-prices`` knows (model and provider matching, tiered and cached-token prices, price
history), else — for Cockpit's simulated models — their made-up prices. Anything else is
unpriced (``None``): shown as such, never counted as zero.

``genai-prices`` works offline from the snapshot shipped with the package (no update thread is
started). Overrides are read from the database at most every ``OVERRIDE_CACHE_SECONDS`` per
process (and at once in the process that changes them).
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

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


# Our usage field -> genai-prices' usage key, and the total it is a part of: each kind of token is
# passed to genai-prices, which prices it at the model's own rate for it (or, where the model has
# none, at the rate of the total it is part of).
KINDS: tuple[tuple[str, str, str | None], ...] = (
    ("input_tokens", "input_tokens", None),
    ("output_tokens", "output_tokens", None),
    ("cache_read_tokens", "cache_read_tokens", "input_tokens"),
    ("cache_write_tokens", "cache_write_tokens", "input_tokens"),
    ("input_audio_tokens", "input_audio_tokens", "input_tokens"),
    ("reasoning_tokens", "output_reasoning_tokens", "output_tokens"),
    ("output_audio_tokens", "output_audio_tokens", "output_tokens"),
)


def consistent(usage: Usage) -> Usage:
    """The counts as the conventions define them: cache reads, cache writes and audio input are
    parts of the input tokens, reasoning and audio output parts of the output tokens. A span
    reporting parts larger than their total is read as far as the total allows, in that order
    (genai-prices refuses such counts outright)."""
    cache_read = min(usage.cache_read_tokens, usage.input_tokens)
    cache_write = min(usage.cache_write_tokens, usage.input_tokens - cache_read)
    input_audio = min(usage.input_audio_tokens, usage.input_tokens - cache_read - cache_write)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    output_audio = min(usage.output_audio_tokens, usage.output_tokens - reasoning)
    parts = (cache_read, cache_write, input_audio, reasoning, output_audio)
    if parts == (
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.input_audio_tokens,
        usage.reasoning_tokens,
        usage.output_audio_tokens,
    ):
        return usage
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        input_audio_tokens=input_audio,
        reasoning_tokens=reasoning,
        output_audio_tokens=output_audio,
    )


def genai_usage(usage: Usage) -> GenaiUsage:
    """genai-prices' ``Usage`` for ours: every kind it knows that we count."""
    return GenaiUsage(**{key: count for field, key, _ in KINDS if (count := getattr(usage, field))})


@dataclass(frozen=True)
class Rate:
    """An override's prices per million tokens; an empty rate is the input (or output) price."""

    pk: int
    effective_from: datetime
    input: Decimal
    output: Decimal
    cache_read: Decimal | None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        """``usage`` must be ``consistent``: each part at its rate, the rest of each total at its."""
        inp, out = self.input, self.output
        parts = (
            (usage.cache_read_tokens, inp if self.cache_read is None else self.cache_read),
            (usage.cache_write_tokens, inp if self.cache_write is None else self.cache_write),
            (usage.input_audio_tokens, inp if self.input_audio is None else self.input_audio),
        )
        output_parts = (
            (usage.reasoning_tokens, out if self.reasoning is None else self.reasoning),
            (usage.output_audio_tokens, out if self.output_audio is None else self.output_audio),
        )
        plain_input = usage.input_tokens - sum(count for count, _ in parts)
        plain_output = usage.output_tokens - sum(count for count, _ in output_parts)
        total = plain_input * inp + plain_output * out
        total += sum((count * rate for count, rate in (*parts, *output_parts)), Decimal(0))
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
                    Rate(
                        row.pk,
                        row.effective_from,
                        row.input_per_mtok,
                        row.output_per_mtok,
                        row.cache_read_per_mtok,
                        row.cache_write_per_mtok,
                        row.reasoning_per_mtok,
                        row.input_audio_per_mtok,
                        row.output_audio_per_mtok,
                    )
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
    """genai-prices' ``calc_price`` of ``usage`` (``consistent``) — from the model's per-kind
    rates where its price is linear in the counts (most models: the same figure for a fraction
    of the cost), else by calling it. ``None`` when genai-prices does not know the model or
    cannot price these counts."""
    found = _library_match(provider, model)
    if found is None:
        return None
    found_provider, found_model = found
    rates = _linear_rates(found_provider, found_model, found_model.get_prices(at), at)
    if rates is not None:
        fixed, per_kind = rates
        return fixed + sum((rate * getattr(usage, field) for field, rate in per_kind), Decimal(0))
    try:
        return _calc(found_provider, found_model, usage, at)
    except ValueError as exc:  # e.g. cached audio a model prices apart, which no convention reports
        logger.info("genai-prices cannot price %s of %s/%s: %s", usage, provider, model, exc)
        return None


_matches: dict[tuple[int, str, str], tuple[Any, Any] | None] = {}
_rates: dict[int, tuple[Any, tuple[Decimal, tuple[tuple[str, Decimal], ...]] | None]] = {}


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


def _calc(found_provider: Any, found_model: Any, usage: Usage, at: datetime) -> Decimal:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculation = found_model.calc_price(genai_usage(usage), found_provider, genai_request_timestamp=at)
    return Decimal(calculation.total_price)


# Every kind at once, to check that a model's rates add up (no price depends on two kinds at once).
_MIXED = Usage(
    input_tokens=4 * MILLION_INT,
    output_tokens=3 * MILLION_INT,
    cache_read_tokens=MILLION_INT,
    cache_write_tokens=MILLION_INT,
    input_audio_tokens=MILLION_INT,
    reasoning_tokens=MILLION_INT,
    output_audio_tokens=MILLION_INT,
)


def _linear_rates(
    found_provider: Any, found_model: Any, model_price: Any, at: datetime
) -> tuple[Decimal, tuple[tuple[str, Decimal], ...]] | None:
    """Without token tiers a model's price is affine in its token counts: a fixed part and one
    rate per kind of token (over the rate of the total it is part of), read once from calc_price
    itself and checked against it. ``None`` when tiers apply or the rates do not add up."""
    cached = _rates.get(id(model_price))
    if cached is not None and cached[0] is model_price:
        return cached[1]
    rates: tuple[Decimal, tuple[tuple[str, Decimal], ...]] | None = None
    if not any(isinstance(value, TieredPrices) for value in vars(model_price).values()):
        try:
            fixed = _calc(found_provider, found_model, Usage(), at)
            per: dict[str, Decimal] = {}
            for field, _, total in KINDS:
                probe = {field: MILLION_INT} | ({total: MILLION_INT} if total else {})
                whole = (_calc(found_provider, found_model, Usage(**probe), at) - fixed) / MILLION
                per[field] = whole - (per[total] if total else 0)
            mixed = _calc(found_provider, found_model, _MIXED, at)
            if mixed == fixed + sum(rate * getattr(_MIXED, field) for field, rate in per.items()):
                rates = (fixed, tuple((field, rate) for field, rate in per.items() if rate))
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
    usage = consistent(usage)
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
