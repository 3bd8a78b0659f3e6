"""Formatting for the trace explorer's templates (traces/list.html, traces/detail.html)."""

from __future__ import annotations

from django import template

from fleet.templatetags.fleet_format import seconds

register = template.Library()


@register.filter
def micros(value: int | float | None) -> str:
    """A duration in microseconds, as people read it: "420 ms", "12.3 s", "4 min 2 s"."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} µs" if value else "0 ms"
    return seconds(value / 1_000_000)


@register.filter
def millis(value: float | None) -> str:
    """A duration or an offset in milliseconds, as people read it."""
    return "—" if value is None else micros(value * 1000)
