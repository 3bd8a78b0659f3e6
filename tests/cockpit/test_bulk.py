"""``cockpit.bulk.insert``: many rows in one statement, on PostgreSQL (arrays) and SQLite (VALUES)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cockpit import bulk
from traces.models import Trace

pytestmark = pytest.mark.django_db

COLUMNS = ["team_id", "trace_id", "started_at", "ended_at", "cost", "agent_id", "search", "updated_at", "incident"]
AT = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def _row(team_id: int, trace_id: str, cost: Decimal | None, search: str) -> list[object]:
    return [team_id, trace_id, AT, AT, cost, None, search, AT, False]


def test_rows_round_trip_with_their_types(team) -> None:  # noqa: ANN001
    rows = [
        _row(team.pk, "a" * 32, Decimal("0.123456"), "tab\tnew\nline 'quote' \"dq\" \\ back {brace}"),
        _row(team.pk, "b" * 32, None, "é ✓ 🙂"),
    ]
    fields = [f for f in Trace._meta.concrete_fields if not f.primary_key and f.column not in COLUMNS]
    columns = COLUMNS + [str(f.column) for f in fields]
    full = [row + [f.get_default() for f in fields] for row in rows]
    assert bulk.insert(Trace, columns, full) == []  # nothing asked back
    stored = {t.trace_id: t for t in Trace.objects.all()}
    assert stored["a" * 32].cost == Decimal("0.123456") and stored["b" * 32].cost is None
    assert stored["a" * 32].search == rows[0][6] and stored["b" * 32].search == "é ✓ 🙂"
    assert stored["a" * 32].started_at == AT and stored["a" * 32].agent_id is None


def test_on_conflict_returns_only_the_rows_inserted(team) -> None:  # noqa: ANN001
    fields = [f for f in Trace._meta.concrete_fields if not f.primary_key and f.column not in COLUMNS]
    columns = COLUMNS + [str(f.column) for f in fields]

    def rows(*ids: str) -> list[list[object]]:
        return [_row(team.pk, i * 32, None, "") + [f.get_default() for f in fields] for i in ids]

    suffix = "ON CONFLICT (team_id, trace_id) DO NOTHING RETURNING trace_id"
    assert sorted(bulk.insert(Trace, columns, rows("a", "b"), suffix=suffix)) == [("a" * 32,), ("b" * 32,)]
    assert bulk.insert(Trace, columns, rows("b", "c"), suffix=suffix) == [("c" * 32,)]
    assert Trace.objects.count() == 3
    assert bulk.insert(Trace, columns, [], suffix=suffix) == []
