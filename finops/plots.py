"""The FinOps dashboard's figures, built here with ``plotly.graph_objects`` and handed to the page
as JSON in ``<script type="application/json">`` elements; ``static/finops/js/finops.js`` draws
them with plotly.js (served from the installed plotly package as ``plotly/plotly.min.js``, see
``cockpit.plotting``) in the page's colours, light or dark.

Amounts are plotted as floats (a chart needs no more than a cent of precision); every figure a
person reads as a number — totals, tables, the CSV — stays ``Decimal``. Each bar segment carries
the address of the dashboard narrowed to it in ``customdata``, so a click drills down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import plotly.graph_objects as go
from django.utils import timezone

from finops.selectors import AgentRunCost, Group, ModelTokens, Point

# Categorical colours that read on light and dark backgrounds alike (Tableau 10), in the order
# groups are ranked; "Other" is always grey.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
OTHER_COLOUR = "#8c96a3"
TICK_FORMATS = {"hour": "%H:%M", "day": "%b %d", "week": "%b %d", "month": "%b %Y"}
HOVER_PERIODS = {"hour": "%b %d, %H:00", "day": "%a %b %d", "week": "week of %b %d", "month": "%B %Y"}


def _colour(rank: int, group: Group) -> str:
    return OTHER_COLOUR if group.key == "other" else PALETTE[rank % len(PALETTE)]


def _figure(
    traces: list[dict[str, Any]],
    *,
    height: int,
    bucket: str | None = None,
    span: tuple[datetime, datetime] | None = None,
    **layout: Any,
) -> dict[str, Any]:
    """The figure as plotly.js takes it, validated by plotly's classes. An empty template keeps
    plotly's default one (large) out of the page: colours and fonts come from finops.js. A time
    axis covers the whole period shown (``span``), data or not."""
    if bucket is not None:
        layout["xaxis"] = {"type": "date", "tickformat": TICK_FORMATS[bucket], "showgrid": False}
        if span is not None:
            layout["xaxis"]["range"] = _axis_range(span, bucket)
    figure = go.Figure(
        data=traces,
        layout={
            "template": {},
            "height": height,
            "margin": {"l": 64, "r": 16, "t": 8, "b": 40},
            "legend": {"orientation": "h", "x": 0, "y": -0.14, "yanchor": "top"},
            "hovermode": "closest",
            **layout,
        },
    )
    return figure.to_plotly_json()


# Bars take three quarters of their bucket (a month counted as 30 days).
BAR_WIDTH_MS = {
    "hour": 0.75 * 3600_000,
    "day": 0.75 * 86400_000,
    "week": 0.75 * 7 * 86400_000,
    "month": 0.75 * 30 * 86400_000,
}
HALF_BUCKET = {
    "hour": timedelta(minutes=30),
    "day": timedelta(hours=12),
    "week": timedelta(days=3.5),
    "month": timedelta(days=15),
}


def _bucket_start(moment: datetime, bucket: str) -> datetime:
    local = timezone.localtime(moment)
    if bucket == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "week":
        return day - timedelta(days=day.weekday())
    if bucket == "month":
        return day.replace(day=1)
    return day


def _axis_range(span: tuple[datetime, datetime], bucket: str) -> list[str]:
    """From half a bucket before the first bucket to half one after the last (bars are centred
    on their bucket's start)."""
    first = _bucket_start(span[0], bucket) - HALF_BUCKET[bucket]
    last = _bucket_start(span[1] - timedelta(microseconds=1), bucket) + HALF_BUCKET[bucket]
    return [_plot_time(first), _plot_time(last)]


def _money_format(peak: float) -> str:
    """Enough decimals for the axis to tell its ticks apart: "$1,200", "$0.25", "$0.0012"."""
    if peak >= 10:
        return ",.0f"
    if peak >= 0.1:
        return ",.2f"
    if peak >= 0.001:
        return ",.4~f"
    return ",.6~f"


def cost_over_time(
    points: Sequence[Point],
    *,
    bucket: str,
    drill: Callable[[Group], str],
    span: tuple[datetime, datetime] | None = None,
    height: int = 340,
) -> dict[str, Any]:
    """Stacked bars: cost per bucket, one colour per group (the costliest at the bottom)."""
    by_group: dict[Group, list[Point]] = {}
    totals: dict[Group, Decimal] = {}
    stacks: dict[datetime, Decimal] = {}
    for point in points:
        by_group.setdefault(point.group, []).append(point)
        totals[point.group] = totals.get(point.group, Decimal(0)) + point.cost
        stacks[point.bucket] = stacks.get(point.bucket, Decimal(0)) + point.cost
    order = sorted(totals, key=lambda g: (g.key == "other", -totals[g], g.label))
    times = _plot_times(p.bucket for p in points)
    hover = (
        f"<b>%{{fullData.name}}</b><br>%{{x|{HOVER_PERIODS[bucket]}}}<br>"
        "$%{y:,.4~f} · %{customdata[1]:,} spans<extra></extra>"
    )
    traces = []
    for rank, group in enumerate(order):
        mine = by_group[group]
        href = drill(group) if group.key != "other" else ""
        traces.append(
            {
                "type": "bar",
                "name": group.label,
                "x": [times[p.bucket] for p in mine],
                "y": [float(p.cost) for p in mine],
                "customdata": [[href, p.spans] for p in mine],
                "width": BAR_WIDTH_MS[bucket],  # (plotly cannot infer it from a single bucket)
                "marker": {"color": _colour(rank, group), "line": {"width": 0}},
                "hovertemplate": hover,
            }
        )
    peak = float(max(stacks.values(), default=Decimal(0)))
    return _figure(
        traces,
        height=height,
        bucket=bucket,
        span=span,
        barmode="stack",
        yaxis={"tickprefix": "$", "tickformat": _money_format(peak), "rangemode": "tozero"},
    )


def cost_per_success_trend(
    agents: Sequence[AgentRunCost], *, bucket: str, span: tuple[datetime, datetime] | None = None, limit: int = 6
) -> dict[str, Any]:
    """Lines: what one successful run of each of the costliest agents cost, per bucket."""
    times = _plot_times(p.bucket for agent in agents[:limit] for p in agent.trend)
    hover = (
        f"<b>%{{fullData.name}}</b><br>%{{x|{HOVER_PERIODS[bucket]}}}<br>"
        "$%{y:,.4~f} per successful run<br>%{customdata[0]} of %{customdata[1]} runs succeeded<extra></extra>"
    )
    traces = []
    for rank, agent in enumerate(agents[:limit]):
        shown = [p for p in agent.trend if p.cost_per_success is not None]
        traces.append(
            {
                "type": "scatter",
                "name": agent.agent,
                "x": [times[p.bucket] for p in shown],
                "y": [float(p.cost_per_success or 0) for p in shown],
                "customdata": [[p.succeeded, p.runs] for p in shown],
                "mode": "lines+markers",
                "line": {"color": PALETTE[rank % len(PALETTE)], "width": 2},
                "marker": {"size": 6},
                "hovertemplate": hover,
            }
        )
    peak = max((p.cost_per_success or Decimal(0) for a in agents[:limit] for p in a.trend), default=Decimal(0))
    return _figure(
        traces,
        height=260,
        bucket=bucket,
        span=span,
        yaxis={"tickprefix": "$", "tickformat": _money_format(float(peak)), "rangemode": "tozero"},
    )


def tokens_by_model(models: Sequence[ModelTokens], *, limit: int = 10) -> dict[str, Any]:
    """Horizontal stacked bars per model: uncached input, cached input and output tokens."""
    shown = list(reversed(models[:limit]))  # plotly draws the first category at the bottom
    labels = [m.model for m in shown]
    parts = (
        ("input", [max(m.input_tokens - m.cache_read_tokens, 0) for m in shown], PALETTE[0]),
        ("cached input", [m.cache_read_tokens for m in shown], PALETTE[4]),
        ("output", [m.output_tokens for m in shown], PALETTE[1]),
    )
    traces = [
        {
            "type": "bar",
            "name": f"{name} tokens",
            "y": labels,
            "x": values,
            "orientation": "h",
            "marker": {"color": colour, "line": {"width": 0}},
            "hovertemplate": f"<b>%{{y}}</b><br>%{{x:,}} {name} tokens<extra></extra>",
        }
        for name, values, colour in parts
    ]
    return _figure(
        traces,
        height=max(160, 46 * len(shown) + 70),
        barmode="stack",
        bargap=0.35,
        xaxis={"tickformat": "~s", "rangemode": "tozero"},
        yaxis={"automargin": True},
    )


def _plot_time(moment: datetime) -> str:
    """Local wall time without offset: plotly draws a date axis in the string's own time."""
    return timezone.localtime(moment).isoformat(sep=" ", timespec="minutes")[:16]


def _plot_times(moments: Iterable[datetime]) -> dict[datetime, str]:
    """Each bucket formatted once."""
    return {m: _plot_time(m) for m in set(moments)}
