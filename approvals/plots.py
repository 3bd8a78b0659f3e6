"""The calibration page's reliability plot, and how the browser gets plotly.js.

The figure is built here with ``plotly.graph_objects`` and handed to the page as JSON in a
``<script type="application/json">`` element; ``static/approvals/js/calibration.js`` draws it
with plotly.js. plotly.js is the copy shipped inside the installed ``plotly`` package, served as
the static file ``plotly/plotly.min.js`` by ``PlotlyJsFinder``: through the finders it is
collected, hashed, compressed and cached like every other static file, the CSP's
``script-src 'self'`` covers it, and its version always matches the Python package.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import plotly
import plotly.graph_objects as go
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

if TYPE_CHECKING:
    from approvals.selectors import ReliabilityBin

PLOTLY_JS = "plotly.min.js"
PLOTLY_PREFIX = "plotly"
PACKAGE_DATA = Path(plotly.__file__).parent / "package_data"
# plotly.js injects a <style> element when it loads (the CSS of its map traces) unless an element
# with the id it checks for exists: getElementById("<id>")){var e=document.createElement("style")
_STYLE_GUARD = re.compile(rb'getElementById\("([0-9a-f]{16,64})"\)\)\{var \w+=document\.createElement\("style"\)')


class PlotlyJsFinder(BaseFinder):
    """Finds exactly one file, ``plotly/plotly.min.js``, in the plotly package (not the rest of
    its package data: datasets, templates, the Jupyter widget bundle)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.location = str(PACKAGE_DATA)
        self.storage = FileSystemStorage(location=self.location)
        self.storage.prefix = PLOTLY_PREFIX  # type: ignore[attr-defined]  # read by collectstatic and ServeStatic
        self.storages = {self.location: self.storage}

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        if not self.storage.exists(PLOTLY_JS):
            return [Error(f"plotly.js is missing from the plotly package ({self.location}).", id="approvals.E001")]
        return []

    @overload
    def find(self, path: str, find_all: Literal[False] = False) -> str | None: ...
    @overload
    def find(self, path: str, find_all: Literal[True]) -> list[str]: ...
    def find(self, path: str, find_all: bool = False) -> str | list[str] | None:
        if path.replace(os.sep, "/") != f"{PLOTLY_PREFIX}/{PLOTLY_JS}" or not self.storage.exists(PLOTLY_JS):
            return []  # "not here", as Django's own finders say it, whatever find_all is
        found = self.storage.path(PLOTLY_JS)
        return [found] if find_all else found

    def list(self, ignore_patterns: Iterable[str] | None) -> Iterator[tuple[str, FileSystemStorage]]:
        if self.storage.exists(PLOTLY_JS):
            yield PLOTLY_JS, self.storage


@functools.cache
def plotly_style_guards() -> tuple[str, ...]:
    """The ids plotly.js looks for before injecting a ``<style>`` element of its own at load time.

    The CSP refuses inline styles, so the page renders an inert element with each id: plotly.js
    then skips the injection (of CSS for map traces, which no page here draws) instead of raising
    a CSP violation. Read from the installed plotly.js, so an upgrade brings its own ids."""
    return tuple(match.decode() for match in _STYLE_GUARD.findall((PACKAGE_DATA / PLOTLY_JS).read_bytes()))


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
