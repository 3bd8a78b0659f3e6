"""Many rows in one ``INSERT`` whose text does not grow with the rows.

On PostgreSQL the rows go in as one array per column (``INSERT … SELECT * FROM unnest(…)``):
the statement is the same for one row or a thousand, so the driver converts it once and reuses
it (psycopg re-parses every long statement it has not seen before: with a ``VALUES`` list of
hundreds of placeholders that costs more than running it). Elsewhere (SQLite) the rows go in as
a multi-row ``VALUES`` list, in chunks.

``suffix`` is what follows the rows (``ON CONFLICT …``, ``RETURNING …``); rows returned by
``RETURNING`` are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Field, Model

VALUES_CHUNK = 500  # rows per statement where there are no arrays (SQLite allows 32,766 parameters)


def insert(
    model: type[Model], columns: Sequence[str], rows: Sequence[Sequence[Any]], *, suffix: str = ""
) -> list[tuple[Any, ...]]:
    """``INSERT INTO`` ``model``'s table the ``rows`` (values in the order of ``columns``,
    database column names); returns what ``RETURNING`` in ``suffix`` returns."""
    if not rows:
        return []
    table = model._meta.db_table
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    returning = "RETURNING" in suffix.upper()
    returned: list[tuple[Any, ...]] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{kind}[]" for kind in _array_types(model, tuple(columns)))
            cursor.execute(
                f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}",
                [list(column) for column in zip(*rows, strict=True)],
            )
            return list(cursor.fetchall()) if returning else []
        fields = _fields(model, tuple(columns))
        placeholders = "(" + ", ".join(["%s"] * len(columns)) + ")"
        for start in range(0, len(rows), VALUES_CHUNK):
            chunk = rows[start : start + VALUES_CHUNK]
            params = [
                f.get_db_prep_save(value, connection) for row in chunk for f, value in zip(fields, row, strict=True)
            ]
            cursor.execute(
                f"INSERT INTO {table} ({names}) VALUES {', '.join([placeholders] * len(chunk))} {suffix}", params
            )
            if returning:
                returned += cursor.fetchall()
    return returned


@cache
def _fields(model: type[Model], columns: tuple[str, ...]) -> list[Field[Any, Any]]:
    by_column = {f.column: f for f in model._meta.concrete_fields}
    return [by_column[c] for c in columns]


@cache
def _array_types(model: type[Model], columns: tuple[str, ...]) -> list[str]:
    """The PostgreSQL type of each column, for its array (``varchar(200)``, ``numeric(14, 6)``…)."""
    return [str(f.db_type(connection)) for f in _fields(model, columns)]
