"""How the FinOps pages print shares, changes, token counts and whole-dollar amounts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

register = template.Library()


@register.filter
def pct(value: float | Decimal | None, digits: int = 0) -> str:
    """A share (0..1) as a percentage: 0.1234 → "12 %"; 0.004 → "<1 %"; None → "—"."""
    if value is None:
        return "—"
    percent = float(value) * 100
    smallest = 10 ** -int(digits)
    if 0 < percent < smallest:
        return f"<{smallest:g} %"
    return f"{percent:.{int(digits)}f} %"


@register.filter
def change(value: float | None) -> str:
    """A relative change: 0.12 → "+12 %", -0.05 → "−5 %", None → "—"."""
    if value is None:
        return "—"
    percent = float(value) * 100
    if abs(percent) < 0.5:
        return "±0 %"
    sign = "+" if percent > 0 else "−"
    return f"{sign}{abs(percent):,.0f} %"


@register.filter
def change_class(value: float | None) -> str:
    """Spending more is the direction finance watches: up is "is-up", down is "is-down"."""
    if value is None or abs(float(value)) < 0.005:
        return "is-flat"
    return "is-up" if value > 0 else "is-down"


@register.filter
def tokens(value: int | None) -> str:
    """1234 → "1,234"; 1234567 → "1.23 M"; 2_000_000_000 → "2.00 B"."""
    if value is None:
        return "—"
    number = int(value)
    if abs(number) >= 1_000_000_000:
        return f"{number / 1_000_000_000:.2f} B"
    if abs(number) >= 1_000_000:
        return f"{number / 1_000_000:.2f} M"
    return f"{number:,}"


@register.filter
def meter(value: float | None) -> str:
    """A percentage for <meter value="…">, never localised (a comma breaks the attribute)."""
    return f"{float(value or 0):.1f}"


@register.filter
def get(mapping: dict[str, Any], key: str) -> Any:
    return mapping.get(key)


@register.filter
def share_meter(value: float | None) -> str:
    """A share (0..1) as the value of a 0–100 <meter>."""
    return f"{float(value or 0) * 100:.1f}"


@register.filter
def share_of(part: Decimal | None, whole: Decimal | None) -> str:
    """``{{ part|share_of:whole }}`` → "3.2 %" (one decimal below 10 %), "—" without a whole."""
    if not whole or part is None:
        return "—"
    percent = float(Decimal(part) / Decimal(whole) * 100)
    return f"{percent:.1f} %" if percent < 10 else f"{percent:.0f} %"


@register.filter
def meter_bounds(thresholds: list[int]) -> tuple[str, str]:
    """(low, high) of a budget <meter>: green up to the last threshold before 100 %, amber up to
    the limit, red beyond it."""
    below = [t for t in thresholds if t < 100]
    return (str(below[-1] if below else 80), "99.9")


@register.filter
def waste_share(row: Any) -> str:
    """What failed and retried calls cost, as a share of everything the group cost."""
    return share_of(row.failed_span_cost + row.retry_cost, row.total_cost)
