"""A provider that answers without a network, for the demo and the tests.

Answers are deterministic: the random generator behind latency, failures and content is seeded
from ``request.seed`` and the model name, so the same (run, step, attempt) always gets the same
answer and a retry (another attempt) may get a different one. Options, all optional:

``latency_ms``       mean answer time (default 0); an answer slower than ``request.timeout``
                     fails as a timeout would
``jitter_ms``        the latency varies uniformly within ± this (default 0)
``failure_rate``     probability, 0 to 1, of a transient 503 (default 0)
``tokens_per_char``  how usage is estimated from text length (default 0.25)

The simulated models have made-up prices (``PRICES_PER_MILLION``) so the demo shows costs. An
answer is cut to ``max_tokens`` (or ``MAX_OUTPUT_TOKENS``), as a real model's would be.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from fleet.providers.base import ChatRequest, ChatResponse, TransientProviderError, Usage

# USD per million tokens: (input, output).
PRICES_PER_MILLION: dict[str, tuple[Decimal, Decimal]] = {
    "sim-small": (Decimal("0.15"), Decimal("0.60")),
    "sim-large": (Decimal("2.50"), Decimal("10.00")),
    "sim-reasoner": (Decimal("5.00"), Decimal("20.00")),
}

# The longest answer of a simulated model (when the request sets no max_tokens).
MAX_OUTPUT_TOKENS = 1024

_DEFAULT_OPTIONS: dict[str, float] = {
    "latency_ms": 0.0,
    "jitter_ms": 0.0,
    "failure_rate": 0.0,
    "tokens_per_char": 0.25,
}

_OPENINGS = ("Based on the request,", "After reviewing the details,", "In short,", "On balance,")
_SUBJECTS = ("the account", "the order", "the ticket", "the report", "the customer's case")
_FINDINGS = (
    "looks consistent",
    "needs a follow-up",
    "is ready to close",
    "has one open question",
    "matches the records",
)
_NEXT_STEPS = (
    "no further action is needed.",
    "a quick review is recommended.",
    "the next step is to confirm with the owner.",
    "it can proceed as planned.",
)


def simulated_price(model: str, usage: Usage) -> Decimal | None:
    """The cost in USD of ``usage`` on a simulated model; None for any other model."""
    prices = PRICES_PER_MILLION.get(model)
    if prices is None:
        return None
    input_price, output_price = prices
    return (usage.input_tokens * input_price + usage.output_tokens * output_price) / 1_000_000


class SimulatedProvider:
    system = "simulated"
    simulated = True

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(_DEFAULT_OPTIONS))
        if unknown:
            raise ValueError(
                f"simulated provider {name!r}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(_DEFAULT_OPTIONS)})"
            )
        self.name = name
        self.latency_ms = _option(name, options, "latency_ms")
        self.jitter_ms = _option(name, options, "jitter_ms")
        self.failure_rate = _option(name, options, "failure_rate", maximum=1.0)
        self.tokens_per_char = _option(name, options, "tokens_per_char")
        # Answers at once: not worth giving the database connection back while waiting.
        self.instant = self.latency_ms + self.jitter_ms == 0

    def chat(self, request: ChatRequest) -> ChatResponse:
        label = f"{self.system} provider {self.name!r}"
        rng = random.Random(_seed(request.seed, request.model))

        jitter = rng.uniform(-self.jitter_ms, self.jitter_ms)
        latency = max(self.latency_ms + jitter, 0.0) / 1000
        if latency > request.timeout:
            time.sleep(request.timeout)
            raise TransientProviderError(f"{label}: no answer within {request.timeout:g}s")
        time.sleep(latency)
        if rng.random() < self.failure_rate:
            raise TransientProviderError(f"{label}: 503 simulated outage", status=503)

        if request.simulate is not None:
            content = request.simulate(rng, request.messages)
        else:
            content = _plausible_answer(rng, json_output=request.json_output)
        finish_reason = "stop"
        longest = self.max_output_tokens(request.model) if request.max_tokens is None else request.max_tokens
        if self.tokens_per_char and len(content) * self.tokens_per_char > longest:
            content, finish_reason = content[: int(longest / self.tokens_per_char)], "length"
        return ChatResponse(
            content=content,
            model=request.model,
            usage=Usage(
                input_tokens=self.input_tokens(request.messages),
                output_tokens=self._tokens(len(content)),
            ),
            finish_reason=finish_reason,
            response_id=f"sim-{rng.getrandbits(64):016x}",
        )

    def input_tokens(self, messages: list[dict[str, Any]]) -> int:
        return self._tokens(sum(len(str(message.get("content", ""))) for message in messages))

    def max_output_tokens(self, model: str) -> int:
        return MAX_OUTPUT_TOKENS

    def _tokens(self, chars: int) -> int:
        return max(round(chars * self.tokens_per_char), 1)


def _seed(seed: str, model: str) -> int:
    """A stable seed (``hash()`` differs between processes)."""
    digest = hashlib.sha256(f"{seed}\x00{model}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _plausible_answer(rng: random.Random, *, json_output: bool) -> str:
    sentence = f"{rng.choice(_OPENINGS)} {rng.choice(_SUBJECTS)} {rng.choice(_FINDINGS)}; {rng.choice(_NEXT_STEPS)}"
    if json_output:
        return json.dumps({"answer": sentence, "confidence": round(rng.uniform(0.6, 0.99), 2)})
    return sentence


def _option(name: str, options: Mapping[str, Any], key: str, *, maximum: float | None = None) -> float:
    value = options.get(key, _DEFAULT_OPTIONS[key])
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"simulated provider {name!r}: {key} must be a number, not {value!r}") from None
    if not (number >= 0 and (maximum is None or number <= maximum)):
        bounds = f"between 0 and {maximum:g}" if maximum is not None else "0 or more"
        raise ValueError(f"simulated provider {name!r}: {key} must be {bounds}, not {value!r}")
    return number
