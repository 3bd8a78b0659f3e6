"""What an approval binds: a SHA-256 over the canonical JSON of a tool's name and the arguments
it will run with. The decision stores it; whoever executes the action (the managed runtime, an
external agent reporting its step) recomputes it from what is about to run and refuses on any
difference.

Canonical JSON: ``{"arguments": …, "tool": …}`` with keys sorted at every depth, no whitespace
(``","`` and ``":"``), UTF-8 without escaping, as Python's ``json.dumps(value, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` writes it. Values are first made JSON as Cockpit
stores them (decimals, dates and UUIDs become strings) and a float with an integral value is
written as an integer (``1.0`` → ``1``), because PostgreSQL's ``jsonb`` may hand either back.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder


def _normal(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    as_stored = json.loads(json.dumps(value, cls=DjangoJSONEncoder))
    return json.dumps(_normal(as_stored), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def action_hash(tool: str, arguments: dict[str, Any] | None) -> str:
    """The hex SHA-256 an approval of running ``tool`` with ``arguments`` carries."""
    return hashlib.sha256(canonical_json({"tool": tool, "arguments": arguments or {}})).hexdigest()
