"""What PostgreSQL (and Python) cannot take, checked where input enters: the API's schemas
(``cockpit.api``), the list filters' forms (``cockpit.forms``) and the live bus's topics.

Each check returns a sentence for the person who sent the value, or ``None`` when it is fine;
the callers turn that into their own error (a 422 naming the field, a form error).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

MAX_INT = 2**31 - 1  # integer columns (a step's token counts)
MAX_BIGINT = 2**63 - 1  # bigint columns (ids, a run's totals)
# PostgreSQL keeps UTC offsets within ±15:59:59 and refuses a timestamp with a larger one
# (Python's datetime allows up to ±23:59).
MAX_UTC_OFFSET = timedelta(hours=15, minutes=59, seconds=59)
# A step or a wait longer than a year is a mistake, and the bound keeps ``now - duration``
# inside the range of dates.
MAX_DURATION_SECONDS = 366 * 24 * 3600
MAX_JSON_DEPTH = 64


class IdempotencyConflict(Exception):
    """An idempotency key seen before, sent with a different request: replaying the first
    answer would hide that the second was never carried out (the API answers 409)."""


def text_problem(text: str) -> str | None:
    """NUL characters (PostgreSQL text cannot hold them) and lone surrogates (not Unicode: a
    JSON ``"\\ud800"`` decodes to one, and neither UTF-8 nor jsonb can store it)."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "contains a lone surrogate (\\ud800–\\udfff), which is not a character"
    return None


def json_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first value inside a decoded JSON document that cannot be stored: ``(path, why)``
    with a path like ``input.items[2].name`` (empty: the value itself), or ``None``."""
    return _walk(value, path, 0)


def _walk(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be a finite number (not NaN or Infinity)")
    if isinstance(value, (dict, list)) and depth >= MAX_JSON_DEPTH:
        return path, f"is nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (problem := text_problem(key)):
                return f"{path} key {key!r}".strip(), problem
            if (found := _walk(item, inner, depth + 1)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _walk(item, f"{path}[{index}]", depth + 1)) is not None:
                return found
    return None


def offset_problem(moment: datetime) -> str | None:
    offset = moment.utcoffset()
    if offset is not None and abs(offset) > MAX_UTC_OFFSET:
        return "has a UTC offset beyond ±15:59, which PostgreSQL does not accept (use Z or a real zone's offset)"
    return None


def is_id(text: str) -> bool:
    """A database id written in ASCII digits (``"²".isdigit()`` is true, and ``int("²")`` fails)."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit() and 0 < int(text) <= MAX_BIGINT
