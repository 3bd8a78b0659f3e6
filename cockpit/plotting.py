"""plotly in the browser, for every app's figures, under the strict CSP and without a CDN.

plotly.js is the copy shipped inside the installed ``plotly`` package, served as the static file
``plotly/plotly.min.js`` by ``PlotlyJsFinder`` (listed in ``STATICFILES_FINDERS``): through the
finders it is collected, hashed, compressed and cached like every other static file, the CSP's
``script-src 'self'`` covers it, and its version always matches the Python package. Figures are
built server-side with ``plotly.graph_objects`` and handed to the page as JSON in a
``<script type="application/json">`` element; a static script draws them.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

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
            return [Error(f"plotly.js is missing from the plotly package ({self.location}).", id="cockpit.E010")]
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
