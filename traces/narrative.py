"""A trace told as plain-language steps, for people who do not read spans (no LLM involved)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from traces.models import Span, Trace


@dataclass(frozen=True)
class Sentence:
    at: datetime
    text: str  # "approved by Dana after 4 min"
    kind: str  # read / decide / tool / llm / approval / operator / error / outcome / other
    span_id: str = ""  # the span it was told from (the trace view links to it)
    detail: str = ""
    repeat: int = 1  # "× N" when similar steps were folded into one sentence


def narrate(trace: Trace, spans: Sequence[Span]) -> list[Sentence]:
    """The steps of ``trace`` in order. ``spans`` are all of its spans, attributes loaded."""
    return [Sentence(at=s.start_time, text=s.name, kind="other", span_id=s.span_id) for s in spans]
