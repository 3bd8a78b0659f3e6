"""Writing span rows: linked to the team's agents and runs, priced, stored in bulk (``COPY`` on
PostgreSQL), with each trace's summary row brought up to date and unknown agents recorded as
discovered — all in one transaction, so a request is stored whole or not at all.

Concurrent writers of the same trace are serialised by locking its summary row (in trace id
order, so two requests never wait on each other in a cycle) before spans are checked for
re-delivery: a span sent twice is stored once, even when both copies arrive at the same time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, cast

import orjson
from django.db import connection, transaction
from django.db.models import Field, Q
from django.utils.text import slugify

from cockpit import bulk, live
from cockpit.lib.validation import is_id
from cockpit.models import Team
from traces import signals
from traces.models import DiscoveredAgent, Span, StatusCode, Trace, TraceStatus
from traces.semconv import TOKEN_COLUMNS, SpanType

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fleet.providers.base import Usage

COLUMNS = (
    "team_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "span_type",
    "start_time",
    "end_time",
    "duration_us",
    "status_code",
    "status_message",
    "error_type",
    "service_name",
    "scope_name",
    "agent_id",
    "agent_key",
    "agent_name",
    "agent_version",
    "run_id",
    "conversation_id",
    "model",
    "provider",
    *TOKEN_COLUMNS,
    "cost",
    "tool_name",
    "attributes",
    "events",
    "links",
    "resource",
    "truncated",
    "received_at",
)
JSON_COLUMNS = frozenset({"attributes", "events", "links", "resource"})
_JSON_CELLS = [i for i, c in enumerate(COLUMNS) if c in JSON_COLUMNS and c != "resource"]
_RESOURCE_CELL = COLUMNS.index("resource")
# Spans whose tokens and cost are their own (not a total of the spans below them).
LEAF_TYPES = frozenset({SpanType.LLM, SpanType.EMBEDDING, SpanType.TOOL, SpanType.RETRIEVAL, SpanType.GUARDRAIL})
SEARCH_CHARS = 4000
COST_PLACES = Decimal("0.000001")


@dataclass
class SpanUsage:
    """The leaf spans' tokens and cost added to one run; ``unpriced``: model calls with no price."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal = Decimal(0)
    unpriced: int = 0


@dataclass
class Stored:
    spans: int = 0
    duplicates: int = 0
    traces: list[int] = field(default_factory=list)


def _json_cell(value: Any) -> str:
    if not value:  # most spans have no events and no links
        return "[]" if isinstance(value, list) else "{}"
    return _dumps(value)


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str).decode()
    except (orjson.JSONEncodeError, TypeError):  # beyond orjson (integers past 64 bits): rarer, slower
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# --- Linking to the fleet ---------------------------------------------------------------------


class _Links:
    """The team's agents and the runs these rows name, read once per batch."""

    def __init__(self, team: Team, rows: list[dict[str, Any]]) -> None:
        from fleet.models import Agent, Run, RunKind

        self.team = team
        self.agents: dict[str, int] = {}
        self.agent_by_name: dict[str, int | None] = {}
        for pk, slug, name in Agent.objects.filter(team=team).values_list("id", "slug", "name"):
            for key in (slug, f"{team.slug}/{slug}", name.lower(), slugify(name)):
                self.agents.setdefault(key, pk)
        for key, agent_id in DiscoveredAgent.objects.filter(team=team, adopted_as__isnull=False).values_list(
            "key", "adopted_as_id"
        ):
            self.agents[key] = agent_id
            self.agents[key.lower()] = agent_id
        run_pks: set[int] = set()
        refs: set[str] = set()
        trace_ids: set[str] = set()
        for row in rows:
            trace_ids.add(row["trace_id"])
            run_attr = row["attributes"].get("cockpit.run_id")
            if is_id(str(run_attr)):
                run_pks.add(int(run_attr))
            conversation = row["conversation_id"]
            if conversation:
                refs.add(conversation)
                if is_id(conversation):
                    run_pks.add(int(conversation))
        self.runs: dict[int, int] = {}  # run pk -> agent pk
        self.external_runs: set[int] = set()
        self.run_by_trace: dict[str, int] = {}
        self.run_by_ref: dict[str, int] = {}
        if run_pks or refs or trace_ids:
            # Each condition has its index (not the team's: a team may have millions of runs).
            found = (
                Run.objects.filter(team=team)
                .filter(Q(pk__in=run_pks) | Q(trace_id__in=trace_ids) | Q(external_ref__in=refs))
                .order_by()
            )
            for pk, agent_id, trace_id, ref, kind in found.values_list(
                "id", "agent_id", "trace_id", "external_ref", "kind"
            ):
                self.runs[pk] = agent_id
                if kind == RunKind.EXTERNAL:
                    self.external_runs.add(pk)
                self.run_by_trace[trace_id] = pk
                if ref:
                    self.run_by_ref[ref] = pk

    def agent_for(self, row: dict[str, Any]) -> int | None:
        for key in (row["agent_key"], row["agent_name"]):
            if key:
                if key not in self.agent_by_name:  # the spans of a batch name few agents: look each up once
                    self.agent_by_name[key] = (
                        self.agents.get(key) or self.agents.get(key.lower()) or self.agents.get(slugify(key))
                    )
                found = self.agent_by_name[key]
                if found:
                    return found
        return None

    def run_for(self, row: dict[str, Any]) -> int | None:
        run_attr = row["attributes"].get("cockpit.run_id")
        if is_id(str(run_attr)) and int(run_attr) in self.runs:
            return int(run_attr)
        found = self.run_by_trace.get(row["trace_id"])
        if found is not None:
            return found
        conversation = row["conversation_id"]
        if conversation:
            if conversation in self.run_by_ref:
                return self.run_by_ref[conversation]
            if is_id(conversation) and int(conversation) in self.runs:
                return int(conversation)
        return None


def span_usage(row: Mapping[str, Any]) -> Usage:
    """The token counts of a span row (its typed columns), for the pricer."""
    from fleet.providers.base import Usage

    return Usage(**{column: row[column] or 0 for column in TOKEN_COLUMNS})


def _price(row: dict[str, Any]) -> Decimal | None:
    """The span's own cost: what Cockpit's runtime recorded, else the pricer seam's figure."""
    if row["span_type"] not in LEAF_TYPES:
        return None
    recorded = row["attributes"].get("cockpit.cost_usd")
    if recorded is not None and not isinstance(recorded, bool):
        try:
            return Decimal(str(recorded)).quantize(COST_PLACES)
        except (InvalidOperation, ValueError):
            return None
    if row["span_type"] not in (SpanType.LLM, SpanType.EMBEDDING) or not row["model"]:
        return None
    if not (row["input_tokens"] or row["output_tokens"]):
        return None
    from fleet import seams

    price = seams.current.pricer.price(
        provider_system=row["provider"], model=row["model"], usage=span_usage(row), at=row["start_time"]
    )
    return None if price is None else Decimal(price).quantize(COST_PLACES)


# --- Summaries --------------------------------------------------------------------------------


@dataclass
class _Summary:
    started_at: datetime
    ended_at: datetime
    spans: int = 0
    errors: int = 0
    llm: int = 0
    tools: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal | None = None
    root: tuple[str, str, str, int] | None = None
    service_name: str = ""
    agent_id: int | None = None
    agent_name: str = ""
    agent_key: str = ""
    run_id: int | None = None
    models: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> _Summary:
        summary = cls(rows[0]["start_time"], rows[0]["end_time"])
        for row in rows:
            summary.add(row)
        return summary

    def add(self, row: dict[str, Any]) -> None:
        self.spans += 1
        self.started_at = min(self.started_at, row["start_time"])
        self.ended_at = max(self.ended_at, row["end_time"])
        if row["status_code"] == StatusCode.ERROR:
            self.errors += 1
        kind = row["span_type"]
        if kind == SpanType.LLM:
            self.llm += 1
        elif kind == SpanType.TOOL:
            self.tools += 1
        if kind in LEAF_TYPES:
            self.input_tokens += row["input_tokens"] or 0
            self.output_tokens += row["output_tokens"] or 0
        if row["cost"] is not None:
            self.cost = (self.cost or Decimal(0)) + row["cost"]
        if not row["parent_span_id"]:
            self.root = (row["name"], row["span_id"], kind, row["status_code"])
        if row["service_name"] and (not self.service_name or not row["parent_span_id"]):
            self.service_name = row["service_name"]
        if row["agent_id"] and (self.agent_id is None or kind == SpanType.AGENT):
            self.agent_id = row["agent_id"]
        if (row["agent_name"] or row["agent_key"]) and (not self.agent_name or kind == SpanType.AGENT):
            self.agent_name = row["agent_name"] or row["agent_key"]
            self.agent_key = row["agent_key"] or row["agent_name"]
        if row["run_id"] and self.run_id is None:
            self.run_id = row["run_id"]
        if row["model"]:
            self.models.add(row["model"])
        self.names.add(row["name"].lower())
        if row["tool_name"]:
            self.names.add(row["tool_name"].lower())

    def merge_into(self, trace: Trace, now: datetime) -> None:
        fresh = trace.span_count == 0
        trace.started_at = self.started_at if fresh else min(trace.started_at, self.started_at)
        trace.ended_at = self.ended_at if fresh else max(trace.ended_at, self.ended_at)
        trace.duration_us = int((trace.ended_at - trace.started_at).total_seconds() * 1_000_000)
        trace.span_count += self.spans
        trace.error_count += self.errors
        trace.llm_count += self.llm
        trace.tool_count += self.tools
        trace.input_tokens += self.input_tokens
        trace.output_tokens += self.output_tokens
        if self.cost is not None:
            trace.cost = (trace.cost or Decimal(0)) + self.cost
        if self.root is not None:
            trace.root_name, trace.root_span_id, trace.root_type, root_status = self.root
            trace.status = TraceStatus.ERROR if root_status == StatusCode.ERROR else TraceStatus.OK
            trace.service_name = self.service_name or trace.service_name
        elif not trace.service_name:
            trace.service_name = self.service_name
        if self.agent_id and (trace.agent_id is None or self.root is not None):
            trace.agent_id = self.agent_id
        if self.agent_name and (not trace.agent_name or self.root is not None):
            trace.agent_name, trace.agent_key = self.agent_name, self.agent_key
        trace.run_id = trace.run_id or self.run_id
        models = {m for m in trace.model_names.split("|") if m} | self.models
        trace.model_names = f"|{'|'.join(sorted(models))}|" if models else ""
        names = {n for n in trace.search.split("\n") if n} | self.names
        trace.search = "\n".join(sorted(names))[:SEARCH_CHARS]
        trace.updated_at = now


SUMMARY_FIELDS = [
    "started_at",
    "ended_at",
    "duration_us",
    "span_count",
    "error_count",
    "llm_count",
    "tool_count",
    "input_tokens",
    "output_tokens",
    "cost",
    "root_name",
    "root_span_id",
    "root_type",
    "service_name",
    "agent_id",
    "agent_name",
    "agent_key",
    "run_id",
    "status",
    "model_names",
    "search",
    "updated_at",
]


# --- Writing ----------------------------------------------------------------------------------


def write(team: Team, rows: list[dict[str, Any]], *, now: datetime) -> Stored:
    """Store ``rows`` (from ``traces.normalise``) for ``team``; spans already stored are skipped.

    A trace this batch starts gets its summary row whole, in one ``INSERT`` (most traces arrive
    in one batch); a trace that has a row already (an earlier batch, or a concurrent one) has it
    locked, its re-delivered spans dropped, and the rest merged into it.
    """
    stored = Stored()
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        unique.setdefault((row["trace_id"], row["span_id"]), row)
    stored.duplicates = len(rows) - len(unique)
    if not unique:
        return stored
    rows = list(unique.values())
    links = _Links(team, rows)
    discovered: dict[str, dict[str, Any]] = {}
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        row["team_id"] = team.pk
        row["run_id"] = links.run_for(row)
        agent_id = links.agent_for(row)
        if agent_id is None and (row["agent_key"] or row["agent_name"]):
            key = row["agent_key"] or row["agent_name"]
            seen = discovered.setdefault(key, {"name": row["agent_name"], "service": row["service_name"], "n": 0})
            seen["n"] += 1
        if agent_id is None and row["run_id"] is not None:
            agent_id = links.runs.get(row["run_id"])
        row["agent_id"] = agent_id
        row["cost"] = _price(row)
        by_trace[row["trace_id"]].append(row)
    trace_ids = sorted(by_trace)

    with transaction.atomic():
        # In trace id order, as every writer inserts and locks summaries: no lock cycles.
        created = _summaries_insert([_summary_of(team, by_trace[trace_id], now) for trace_id in trace_ids])
        continued = [trace_id for trace_id in trace_ids if trace_id not in created]
        summaries = (
            list(Trace.objects.select_for_update().filter(team=team, trace_id__in=continued).order_by("trace_id"))
            if continued
            else []
        )
        # Only a trace that already holds spans can hold these (its summary counts them, in the
        # same transaction as the spans, and is locked above).
        known = [t.trace_id for t in summaries if t.span_count]
        existing = (
            set(Span.objects.filter(team=team, trace_id__in=known).values_list("trace_id", "span_id"))
            if known
            else set()
        )
        before = {t.trace_id: (t.span_count, t.agent_id, t.agent_key, t.agent_name) for t in summaries}
        run_before = {t.trace_id: t.run_id for t in summaries if t.span_count}
        watched = []  # traces that existed before this batch: someone may have them open
        changed: list[Trace] = []
        for trace in summaries:
            fresh = [r for r in by_trace[trace.trace_id] if (r["trace_id"], r["span_id"]) not in existing]
            if not fresh:
                continue
            if trace.span_count:
                watched.append(trace)
            _Summary.of(fresh).merge_into(trace, now)
            changed.append(trace)
        merged = {t.trace_id for t in changed}
        new_rows = [
            r
            for r in rows
            if r["trace_id"] in created or (r["trace_id"] in merged and (r["trace_id"], r["span_id"]) not in existing)
        ]
        stored.duplicates += len(rows) - len(new_rows)
        run_of = {t.trace_id: t.run_id for t in changed}
        for trace_id in created:
            run_of[trace_id] = next((r["run_id"] for r in by_trace[trace_id] if r["run_id"]), None)
        usage = _external_run_usage(team, links, new_rows, run_of, run_before)
        if new_rows:
            _insert(new_rows)
        if usage:
            from fleet.services import runs_add_span_usage

            runs_add_span_usage(usage=usage)
        if changed:
            _summaries_save(changed)
        if discovered:
            _discovered_upsert(team, discovered, now)
        if new_rows:
            # Last before the commit: the cost rollups a receiver adds to are shared by every
            # batch of the hour, so their row locks are held as briefly as can be.
            signals.spans_stored.send(sender=Span, team=team, rows=new_rows, now=now, before=before)
        stored.spans = len(new_rows)
        stored.traces = [*created.values(), *(t.pk for t in changed)]
        if new_rows:
            live.publish(
                {"type": "traces.arrived", "spans": len(new_rows), "traces": len(stored.traces)},
                team_id=team.pk,
                coalesce=f"traces.arrived:{team.pk}",
            )
            for trace in watched:
                live.publish(
                    {"type": "trace.spans", "trace": trace.pk},
                    team_id=team.pk,
                    topics=[f"trace.{trace.pk}"],
                    team_wide=False,
                    coalesce=f"trace.spans:{trace.pk}",
                )
    return stored


def _is_unpriced(row: Mapping[str, Any]) -> bool:
    """A model call with usage and no price (the rollups count the same spans as unpriced)."""
    return (
        row["cost"] is None
        and row["span_type"] in (SpanType.LLM, SpanType.EMBEDDING)
        and bool(row["model"])
        and bool(row["input_tokens"] or row["output_tokens"])
    )


def _external_run_usage(
    team: Team,
    links: _Links,
    rows: list[dict[str, Any]],
    run_of: dict[str, int | None],
    run_before: dict[str, int | None],
) -> dict[int, SpanUsage]:
    """What these spans add to external runs: a trace linked to an external run (by any of its
    spans) brings it every leaf span's tokens and cost. When this batch links a trace that
    already held spans, those earlier spans are added too (an agent's own span, which names the
    run, ends and is exported after its children)."""
    usage: dict[int, SpanUsage] = {}

    def add(run_id: int, cost: Decimal | None, tokens_in: int, tokens_out: int, unpriced: int) -> None:
        total = usage.setdefault(run_id, SpanUsage())
        total.tokens_in += tokens_in
        total.tokens_out += tokens_out
        total.cost += cost or Decimal(0)
        total.unpriced += unpriced

    for row in rows:
        run_id = run_of.get(row["trace_id"])
        if run_id in links.external_runs and row["span_type"] in LEAF_TYPES:
            add(run_id, row["cost"], row["input_tokens"] or 0, row["output_tokens"] or 0, int(_is_unpriced(row)))
    linked_now = {
        trace_id: run_id
        for trace_id, run_id in run_of.items()
        if run_id in links.external_runs and trace_id in run_before and run_before[trace_id] != run_id
    }
    if linked_now:
        earlier = Span.objects.filter(team=team, trace_id__in=list(linked_now), span_type__in=list(LEAF_TYPES))
        for span in earlier.values("trace_id", "span_type", "model", "input_tokens", "output_tokens", "cost"):
            add(
                linked_now[span["trace_id"]],
                span["cost"],
                span["input_tokens"] or 0,
                span["output_tokens"] or 0,
                int(_is_unpriced(span)),
            )
    return usage


def _summary_of(team: Team, rows: list[dict[str, Any]], now: datetime) -> Trace:
    """The summary row of a trace made of ``rows`` alone."""
    summary = _Summary.of(rows)
    trace = Trace(team=team, trace_id=rows[0]["trace_id"], started_at=summary.started_at, ended_at=summary.ended_at)
    summary.merge_into(trace, now)
    return trace


def _summaries_insert(traces: list[Trace]) -> dict[str, int]:
    """``INSERT`` the summaries of ``traces``, skipping those already present (another batch's,
    committed or not: the insert waits for it); trace id → pk of those inserted."""
    fields = [f for f in Trace._meta.concrete_fields if not f.primary_key]
    inserted = bulk.insert(
        Trace,
        [str(f.column) for f in fields],
        [[getattr(t, f.attname) for f in fields] for t in traces],
        suffix="ON CONFLICT (team_id, trace_id) DO NOTHING RETURNING id, trace_id",
    )
    return {trace_id: pk for pk, trace_id in inserted}


def _insert(rows: list[dict[str, Any]]) -> None:
    if connection.vendor == "postgresql":
        with (
            connection.cursor() as cursor,
            cursor.cursor.copy(f"COPY {Span._meta.db_table} ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            # Spans of one resource share its dict: it is serialised once, not once per span.
            resources: dict[int, str] = {}
            for row in rows:
                cells = [row[c] for c in COLUMNS]
                for i in _JSON_CELLS:
                    cells[i] = _json_cell(cells[i])
                resource = row["resource"]
                if id(resource) not in resources:
                    resources[id(resource)] = _dumps(resource)
                cells[_RESOURCE_CELL] = resources[id(resource)]
                copy.write_row(cells)
        return
    Span.objects.bulk_create([Span(**{c: row[c] for c in COLUMNS}) for row in rows], batch_size=500)


def _summaries_save(traces: list[Trace]) -> None:
    """``bulk_update`` in one prepared statement (the ORM's CASE-per-field version costs more
    than everything else in a small batch)."""
    fields = [cast("Field[Any, Any]", Trace._meta.get_field(name)) for name in SUMMARY_FIELDS]
    assignments = ", ".join(f"{f.column} = %s" for f in fields)
    params = [
        [f.get_db_prep_save(getattr(trace, f.attname), connection) for f in fields] + [trace.pk] for trace in traces
    ]
    with connection.cursor() as cursor:
        cursor.executemany(f"UPDATE {Trace._meta.db_table} SET {assignments} WHERE id = %s", params)


def _discovered_upsert(team: Team, seen: dict[str, dict[str, Any]], now: datetime) -> None:
    """Record the agents these spans name that the fleet does not know. An agent seen for the
    first time is inserted with the spans (same transaction); for one already listed, its last
    sighting and span count are bumped once the spans have committed, in a statement of its
    own: every batch from a busy unknown agent touches that row, and locking it until the
    batch's commit would make concurrent batches wait for one another."""
    keys = sorted(seen)
    created = {
        key
        for (key,) in bulk.insert(
            DiscoveredAgent,
            ["team_id", "key", "name", "service_name", "first_seen", "last_seen", "span_count", "adopted_by_label"],
            [
                [team.pk, key[:200], seen[key]["name"][:200], seen[key]["service"][:200], now, now, seen[key]["n"], ""]
                for key in keys
            ],
            suffix="ON CONFLICT (team_id, key) DO NOTHING RETURNING key",
        )
    }
    known = [key for key in keys if key[:200] not in created]
    if known:
        transaction.on_commit(lambda: _discovered_seen(team.pk, {key: seen[key] for key in known}, now), robust=True)


def _discovered_seen(team_id: int, seen: dict[str, dict[str, Any]], now: datetime) -> None:
    table = DiscoveredAgent._meta.db_table
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        for key in sorted(seen):
            cursor.execute(
                f"UPDATE {table} SET last_seen = CASE WHEN last_seen < %s THEN %s ELSE last_seen END, "
                "span_count = span_count + %s, name = CASE WHEN %s <> '' THEN %s ELSE name END "
                "WHERE team_id = %s AND key = %s",
                [at, at, seen[key]["n"], seen[key]["name"][:200], seen[key]["name"][:200], team_id, key[:200]],
            )
