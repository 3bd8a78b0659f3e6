"""Browser tests live here, and elsewhere: see tests/support/browser.py, which provides the
``browser`` and ``page`` fixtures to the whole suite."""

from __future__ import annotations

from tests.support.browser import CHROMIUM, sign_in

__all__ = ["CHROMIUM", "sign_in"]
