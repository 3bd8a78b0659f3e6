"""How the fleet pages print durations, money and model names."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django import template
from django.utils import timezone

from fleet.models import RunStatus
from fleet.selectors import is_simulated_ref, pretty_json

register = template.Library()

CENT = Decimal("0.01")
TENTH_OF_A_CENT = Decimal("0.0001")


@register.filter
def seconds(value: float | timedelta | None) -> str:
    """12.3 → "12.3 s"; 0.42 → "420 ms"; 754 → "12 min 34 s"; None → "—"."""
    if value is None:
        return "—"
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if total < 1:
        return f"{total * 1000:.0f} ms"
    if total < 60:
        return f"{total:.1f} s"
    minutes, secs = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def usd(value: Decimal | float | None) -> str:
    """Dollars with the precision agent costs need: "$12.40", "$0.50", "$0.0031", "<$0.0001"."""
    if value is None:
        return "—"
    amount = Decimal(str(value))
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount >= 1 or amount == 0:
        return f"{sign}${amount.quantize(CENT):,}"
    if amount < TENTH_OF_A_CENT:
        return f"{sign}<$0.0001"
    text = f"{amount.quantize(TENTH_OF_A_CENT)}".rstrip("0")  # "0.03", "0.0031", "0.5"
    return f"{sign}${text if len(text) >= 4 else f'{amount:.2f}'}"


@register.filter
def elapsed(run: Any) -> timedelta | None:
    """How long a run has taken: until it ended, or until now while it goes on."""
    if run.started_at is None:
        return None
    return (run.ended_at or timezone.now()) - run.started_at


@register.filter
def age(moment: datetime | None) -> timedelta | None:
    """How long ago ``moment`` was (``{{ step.started_at|age|seconds }}`` → "42.0 s")."""
    return None if moment is None else timezone.now() - moment


@register.filter
def simulated_in(ref: str, simulated: frozenset[str] | None) -> bool:
    """``{% if ref|simulated_in:simulated %}``: the model runs on a simulated provider."""
    return bool(ref) and is_simulated_ref(ref, simulated or frozenset())


@register.filter
def run_status_label(value: str) -> str:
    """ "waiting_approval" → "Waiting for approval" (for statuses stored in history rows)."""
    return RunStatus(value).label if value in RunStatus.values else value


@register.filter(name="pretty_json")
def pretty_json_filter(value: Any) -> str:
    return pretty_json(value)
