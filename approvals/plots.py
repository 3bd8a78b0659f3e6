"""The calibration page's reliability plot. The figure is built here with
``plotly.graph_objects`` and handed to the page as JSON in a ``<script type="application/json">``
element; ``static/approvals/js/calibration.js`` draws it with the plotly.js that
``cockpit.plotting`` serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

if TYPE_CHECKING:
    from approvals.selectors import ReliabilityBin


def reliability_figure(bins: Sequence[ReliabilityBin]) -> dict[str, Any]:
    """Share of requests approved as proposed, per confidence bin, against the diagonal a
    perfectly calibrated agent would follow; the bars are how many decisions each bin holds.
    Colours and fonts are left to the page (static/approvals/js/calibration.js follows the
    light or dark theme)."""
    shown = [b for b in bins if b.count]
    figure = go.Figure()
    figure.add_trace(
        go.Bar(
            name="decisions in the bin",
            x=[b.center for b in bins],
            y=[b.count for b in bins],
            yaxis="y2",
            width=0.08,
            opacity=0.3,
            hovertemplate="confidence %{x:.2f} ± 0.05<br>%{y} decisions<extra></extra>",
        )
    )
    figure.add_trace(
        go.Scatter(
            name="perfect calibration",
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    figure.add_trace(
        go.Scatter(
            name="approved unchanged",
            x=[b.center for b in shown],
            y=[round(b.share or 0, 4) for b in shown],
            customdata=[[b.unchanged, b.count] for b in shown],
            mode="lines+markers",
            marker={"size": 9},
            hovertemplate="confidence %{x:.2f} ± 0.05<br>%{customdata[0]} of %{customdata[1]} approved unchanged"
            " (%{y:.0%})<extra></extra>",
        )
    )
    figure.update_layout(
        template="none",
        height=360,
        margin={"l": 56, "r": 56, "t": 36, "b": 48},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        xaxis={"title": {"text": "confidence the agent stated"}, "range": [0, 1], "dtick": 0.1, "tickformat": ".1f"},
        yaxis={"title": {"text": "approved unchanged"}, "range": [0, 1.02], "tickformat": ".0%"},
        yaxis2={
            "title": {"text": "decisions"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "tickmode": "auto",
            "tickformat": "d",
            "showgrid": False,
        },
        bargap=0,
        hovermode="closest",
    )
    return figure.to_plotly_json()
