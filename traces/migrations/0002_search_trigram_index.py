"""On PostgreSQL, a trigram index makes the trace list's text search (span and tool names) fast
at any volume. pg_trgm ships with PostgreSQL and is a trusted extension (PostgreSQL 13+), so
the database owner may create it; where it cannot be created the search still works, unindexed,
and the migration says so."""

from django.db import migrations, transaction


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as exc:  # noqa: BLE001
        print(f"\n  pg_trgm is not available ({exc}); trace search will work without its index.")
        return
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS traces_trace_search_trgm ON traces_trace USING gin (search gin_trgm_ops)"
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS traces_trace_search_trgm")


class Migration(migrations.Migration):
    dependencies = [("traces", "0001_initial")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
