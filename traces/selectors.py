"""Reads of the span store that depend on who is asking: which traces a user or API key sees, a
page of the trace list, one trace as the trace view draws it, one span in detail, and the spans
the narrative and the API need. The trace list, the trace view and the API read spans through
them (docs/architecture.md § Scale path names the few other readers).

Every page-level read runs a fixed number of queries whatever the number of traces or spans:

* the trace list reads one page of summary rows through the ``(team, -started_at, -id)`` index,
  pages by keyset (no OFFSET, no COUNT over millions of rows), and text search uses the trigram
  index on ``Trace.search`` (PostgreSQL);
* the trace view reads its spans' typed columns in one query (never their attributes) and sends
  them to the browser as compact JSON; a span's attributes are read when someone opens it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import BigIntegerField, F, FloatField, Func, Lookup, Q, QuerySet, Sum
from django.db.models.functions import Cast, Coalesce
from django.http import Http404
from django.utils import timezone

from cockpit import access
from cockpit.models import Team
from cockpit.roles import TeamPerm
from fleet.models import Agent, RunEvent, RunStatus, Step, StepKind, StepStatus
from fleet.templatetags.fleet_format import seconds
from traces import conversation, store
from traces.models import Span, Trace
from traces.semconv import SpanType

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser = User | AnonymousUser

PAGE_SIZE = 50
ARRIVALS_CAP = 99
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How close (seconds) a run journal entry and an operator span must be to be the same action.
SAME_ACTION_SECONDS = 2.0
ATTRIBUTE_VALUE_CHARS = 4000


# --- Access -----------------------------------------------------------------------------------


def visible_traces(principal: Any) -> QuerySet[Trace]:
    """Summary rows of the teams a user (view permission) or an API key (its team) may see."""
    return access.scope_to_principal(Trace.objects.all(), principal, TeamPerm.VIEW)


def get_trace_for_user(user: AnyUser, pk: int) -> Trace:
    """404 unless the user sees the trace's team."""
    traces = Trace.objects.select_related("team", "agent", "run")
    return access.get_for_user(user, traces, TeamPerm.VIEW, pk=pk)


def trace_for_principal(principal: Any, trace_id: str, team_slug: str | None = None) -> Trace:
    """The trace with this OpenTelemetry id among those the principal sees. Trace ids are chosen
    by the agents, so two teams may hold the same one: then ``team_slug`` must say which
    (``AmbiguousTrace``)."""
    traces = visible_traces(principal).select_related("team", "agent", "run").filter(trace_id=trace_id.lower())
    if team_slug:
        traces = traces.filter(team__slug=team_slug)
    found = list(traces[:2])
    if not found:
        raise Http404
    if len(found) > 1:
        raise AmbiguousTrace(sorted(t.team.slug for t in found))
    return found[0]


class AmbiguousTrace(Exception):
    def __init__(self, teams: list[str]) -> None:
        self.teams = teams
        super().__init__(f"Teams {', '.join(teams)} both hold a trace with this id: say which with ?team=.")


# --- The trace list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceCursor:
    """Where a page starts: the (started_at, id) of a row, as an opaque token.

    Keyset pagination: a page costs the same however deep it is, and rows do not shift while
    traces arrive."""

    started_at: datetime
    pk: int

    def encode(self) -> str:
        micros = (self.started_at - _EPOCH) // timedelta(microseconds=1)
        return base64.urlsafe_b64encode(f"{micros}:{self.pk}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, raw: str) -> TraceCursor:
        try:
            if len(raw) > 60:
                raise ValueError
            text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
            micros, _, pk = text.partition(":")
            return cls(_EPOCH + timedelta(microseconds=int(micros)), int(pk))
        except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
            raise ValueError(f"not a page cursor: {raw[:60]!r}") from None

    @classmethod
    def of(cls, trace: Trace) -> TraceCursor:
        return cls(trace.started_at, trace.pk)


@dataclass(frozen=True)
class TracePage:
    traces: list[Trace]
    older: TraceCursor | None  # the next (older) page starts after this row
    newer: TraceCursor | None  # the previous (newer) page ends before this row
    newest_id: int  # the store's highest trace id when the page was read: arrivals are counted above it

    @property
    def is_first(self) -> bool:
        return self.newer is None


def filter_traces(
    traces: QuerySet[Trace],
    *,
    team: Team | None = None,
    agent: Agent | None = None,
    agent_ref: str = "",
    status: str = "",
    has_error: bool = False,
    model: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    min_cost: Decimal | None = None,
    min_duration_ms: float | None = None,
    text: str = "",
) -> QuerySet[Trace]:
    """The list's filters. ``agent_ref`` is what the API receives: a fleet agent's slug, or the
    agent id or name as the spans sent it."""
    if team is not None:
        traces = traces.filter(team=team)
    if agent is not None:
        traces = traces.filter(agent=agent)
    if agent_ref:
        traces = traces.filter(Q(agent__slug=agent_ref) | Q(agent_key=agent_ref) | Q(agent_name=agent_ref))
    if status:
        traces = traces.filter(status=status)
    if has_error:
        traces = traces.filter(error_count__gt=0)
    if model:
        traces = traces.filter(_ILike(F("model_names"), f"%{_like_escaped(model.strip())}%"))
    if since is not None:
        traces = traces.filter(started_at__gte=since)
    if until is not None:
        traces = traces.filter(started_at__lt=until)
    if min_cost is not None:
        traces = traces.filter(cost__gte=min_cost)
    if min_duration_ms is not None:
        traces = traces.filter(duration_us__gte=int(min_duration_ms * 1000))
    text = text.strip().lower()
    if text and TRACE_ID.match(text):
        return traces.filter(trace_id=text)
    if text:
        # ``Trace.search`` is stored in lower case: a plain LIKE, which the trigram index serves.
        traces = traces.filter(search__contains=text)
    return traces


class _ILike(Lookup):
    """``column ILIKE pattern``. Django's ``icontains`` compares ``UPPER(column)``, for which
    PostgreSQL cannot estimate how many rows match and may scan the whole table; with ILIKE it
    reads the column's statistics and walks the (team, started_at) index instead."""

    lookup_name = "ilike"

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        operator = "ILIKE" if connection.vendor == "postgresql" else "LIKE"  # SQLite's LIKE ignores case
        escape = "" if connection.vendor == "postgresql" else " ESCAPE '\\'"
        return f"{lhs} {operator} {rhs}{escape}", (*lhs_params, *rhs_params)


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _older_than(cursor: TraceCursor) -> Q:
    # "started_at <= t" lets the index range start at the cursor; the rest breaks ties by id.
    return Q(started_at__lte=cursor.started_at) & (Q(started_at__lt=cursor.started_at) | Q(pk__lt=cursor.pk))


def _newer_than(cursor: TraceCursor) -> Q:
    return Q(started_at__gte=cursor.started_at) & (Q(started_at__gt=cursor.started_at) | Q(pk__gt=cursor.pk))


def traces_page(
    traces: QuerySet[Trace],
    *,
    after: TraceCursor | None = None,
    before: TraceCursor | None = None,
    size: int = PAGE_SIZE,
    with_newest_id: bool = True,
) -> TracePage:
    """One page of ``traces`` (already scoped and filtered), newest first: older than ``after``,
    newer than ``before``, or the newest. Two queries (one without ``with_newest_id``)."""
    traces = traces.select_related("team", "agent")
    newest_id = 0
    if with_newest_id and after is None and before is None:
        # The store's highest id, not the filtered one's: one step down the primary key, however
        # rare the filtered traces are. Traces above it arrived after the page was read.
        newest_id = Trace.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    if before is not None:
        rows = list(traces.filter(_newer_than(before)).order_by("started_at", "pk")[: size + 1])
        if len(rows) > size:
            rows = rows[:size][::-1]
            return TracePage(rows, TraceCursor.of(rows[-1]), TraceCursor.of(rows[0]), newest_id)
        # Fewer than a page is newer: that is the newest page.
        return traces_page(traces, size=size, with_newest_id=with_newest_id)
    if after is not None:
        traces = traces.filter(_older_than(after))
    rows = list(traces.order_by("-started_at", "-pk")[: size + 1])
    older = TraceCursor.of(rows[size - 1]) if len(rows) > size else None
    rows = rows[:size]
    newer = TraceCursor.of(rows[0]) if after is not None and rows else None
    if after is not None and not rows:
        newer = after
    return TracePage(rows, older, newer, newest_id)


def arrivals(traces: QuerySet[Trace], *, above_id: int, cap: int = ARRIVALS_CAP) -> int:
    """How many of ``traces`` (scoped and filtered) arrived after ``above_id``, up to ``cap + 1``
    (a range scan of the primary key, not a count of the table)."""
    return len(traces.filter(pk__gt=above_id).values_list("pk", flat=True)[: cap + 1])


def has_any_trace(principal: Any) -> bool:
    return visible_traces(principal).exists()


# --- One trace: the span rows the trace view draws --------------------------------------------

# Positions in a row of ``trace_view_data()["spans"]`` (static/traces/trace.js reads them).
ROW_FORMAT = ["id", "parent", "name", "type", "start", "duration", "status", "cost", "tokens", "model", "label"]
NO_PARENT, MISSING_PARENT = -1, -2
_MICROSECOND = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


class _EpochMicros(Func):
    """A timestamp as integer microseconds since 1970 (PostgreSQL): cheaper to send and to read
    than ten thousand timestamps."""

    template = "(EXTRACT(EPOCH FROM %(expressions)s) * 1000000)::bigint"
    output_field = BigIntegerField()


def _spans_of(trace: Trace) -> QuerySet[Span]:
    return Span.objects.filter(team_id=trace.team_id, trace_id=trace.trace_id)


def trace_spans(trace: Trace) -> list[Span]:
    """Every span of the trace with everything stored about it, in start order (API, export)."""
    return list(_spans_of(trace).order_by("start_time", "id"))


# What the read API gives of a span: every stored column but the ones the trace already says
# (team, trace id) and internal ones.
SPAN_VALUES = tuple(c for c in store.COLUMNS if c not in ("team_id", "trace_id", "agent_id", "received_at"))


def trace_span_values(trace: Trace) -> list[dict[str, Any]]:
    """Every span of the trace as a dict of ``SPAN_VALUES``, in start order (the read API)."""
    return list(_spans_of(trace).order_by("start_time", "id").values(*SPAN_VALUES))


def _compact_rows(trace: Trace) -> list[tuple[Any, ...]]:
    """(id, span_id, parent_span_id, name, type, start µs since 1970, duration µs, status, cost,
    tokens, model) per span, in start order. One query reading typed columns only; on PostgreSQL
    the database does the arithmetic, and the rows are sorted here (cheaper than sorting wide rows
    in the database)."""
    spans = _spans_of(trace)
    if connection.vendor == "postgresql":
        compact = spans.annotate(
            start_us=_EpochMicros("start_time"),
            cost_f=Cast("cost", FloatField()),
            tokens=Coalesce("input_tokens", 0) + Coalesce("output_tokens", 0),
        ).values_list(
            "id",
            "span_id",
            "parent_span_id",
            "name",
            "span_type",
            "start_us",
            "duration_us",
            "status_code",
            "cost_f",
            "tokens",
            "model",
        )
        # Plain values need no per-row converters: read them straight from the cursor.
        sql, params = compact.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    else:
        rows = [
            (
                pk,
                span_id,
                parent,
                name,
                kind,
                _micros(start),
                dur,
                status,
                None if cost is None else float(cost),
                (tin or 0) + (tout or 0),
                model,
            )
            for pk, span_id, parent, name, kind, start, dur, status, cost, tin, tout, model in spans.values_list(
                "id",
                "span_id",
                "parent_span_id",
                "name",
                "span_type",
                "start_time",
                "duration_us",
                "status_code",
                "cost",
                "input_tokens",
                "output_tokens",
                "model",
            )
        ]
    rows.sort(key=itemgetter(5, 0))
    return rows


def trace_view_data(trace: Trace, *, now: datetime | None = None) -> dict[str, Any]:
    """The trace as the trace view draws it: one compact row per span (``ROW_FORMAT``; times in
    microseconds from the trace's start, names interned in ``strings``), in start order, with
    parents as row indexes; approvals and operator actions labelled with who and how long; and
    what the run's journal adds (an approval still waited for, actions that left no span).

    Two to four queries whatever the number of spans."""
    now = now or timezone.now()
    rows = _compact_rows(trace)
    start = _micros(trace.started_at)
    if rows:
        start = min(start, rows[0][5])
    end = _micros(trace.ended_at)
    strings: list[str] = []
    interned: dict[str, int] = {}

    def intern(value: str) -> int:
        found = interned.get(value)
        if found is None:
            found = interned[value] = len(strings)
            strings.append(value)
        return found

    index = {r[1]: n for n, r in enumerate(rows)}
    human = (SpanType.APPROVAL, SpanType.OPERATOR)
    labels = _inline_labels(trace) if any(r[4] in human or _is_escalation(r[3]) for r in rows) else {}
    spans: list[list[Any]] = []
    append = spans.append
    root = -1
    for _, span_id, parent_id, name, span_type, started, duration, status, cost, tokens, model in rows:
        if parent_id:
            parent = index.get(parent_id, MISSING_PARENT)
        else:
            parent = NO_PARENT
            if root < 0:
                root = len(spans)
        if started + duration > end:
            end = started + duration
        if labels and span_type == SpanType.OTHER and _is_escalation(name) and span_id in labels:
            span_type = SpanType.APPROVAL  # an approval's escalation is drawn with the approval
        append(
            [
                span_id,
                parent,
                intern(name),
                span_type,
                started - start,
                duration,
                status,
                cost,
                tokens,
                intern(model) if model else -1,
                labels.get(span_id, "") if labels else "",
            ]
        )
    if trace.run_id is not None:
        operator_times = [r[5] for r in rows if r[4] == SpanType.OPERATOR or _is_escalation(r[3])]
        approval_spans = sum(1 for r in rows if r[4] == SpanType.APPROVAL)
        for entry in _journal_rows(trace, operator_times, approval_spans, now):
            at = _micros(entry["at"])
            end = max(end, at + entry["duration"])
            append(
                [
                    "",
                    root,
                    intern(entry["name"]),
                    entry["type"],
                    at - start,
                    entry["duration"],
                    0,
                    None,
                    0,
                    -1,
                    entry["label"],
                ]
            )
    return {
        "trace": trace.pk,
        "start": start,
        "duration": max(0, end - start),
        "cost": None if trace.cost is None else float(trace.cost),
        "format": ROW_FORMAT,
        "strings": strings,
        "spans": spans,
    }


def trace_view_json(trace: Trace) -> str:
    return json.dumps(trace_view_data(trace), separators=(",", ":"), ensure_ascii=False)


def _json_attribute(attributes: dict[str, Any], key: str) -> Any:
    value = attributes.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def approval_summary(attributes: dict[str, Any], duration_us: int) -> str:
    """ "approved by Dana after 4 min 2 s" from an approval span of Cockpit's runtime."""
    outcome = _json_attribute(attributes, "cockpit.approval.output")
    waited = seconds(duration_us / 1_000_000)
    if not isinstance(outcome, dict):
        return f"decided after {waited}" if duration_us else ""
    verdict = "approved" if outcome.get("approved") else "rejected"
    if outcome.get("approved") and outcome.get("edited_args"):
        verdict = "approved with edits"
    who = outcome.get("decided_by") or "someone"
    reason = f" — “{outcome['reason']}”" if outcome.get("reason") else ""
    return f"{verdict} by {who} after {waited}{reason}"


def operator_summary(attributes: dict[str, Any]) -> str:
    """ "pause by Oscar — “customer called”" from an operator-action span."""
    action = attributes.get("cockpit.operator.action") or "action"
    who = attributes.get("cockpit.operator.actor") or "an operator"
    reason = attributes.get("cockpit.reason")
    return f"{action} by {who}" + (f" — “{reason}”" if reason else "")


def escalation_summary(attributes: dict[str, Any]) -> str:
    """ "escalated to L2 — “no decision within the SLA of L1”" from the escalation sweeper's span."""
    reason = attributes.get("cockpit.reason")
    return f"escalated to L{attributes.get('cockpit.escalation.level')}" + (f" — “{reason}”" if reason else "")


ESCALATION_PREFIX = "escalation L"  # the escalation sweeper's spans (fleet.services.run_approval_escalated)


def _is_escalation(name: str) -> bool:
    return name.startswith(ESCALATION_PREFIX)


def _inline_labels(trace: Trace) -> dict[str, str]:
    """Who and how long, for the trace's approval, escalation and operator spans (their
    attributes only)."""
    labels = {}
    found = _spans_of(trace).filter(
        Q(span_type__in=[SpanType.APPROVAL, SpanType.OPERATOR]) | Q(name__startswith=ESCALATION_PREFIX)
    )
    for span_id, span_type, attributes, duration in found.values_list(
        "span_id", "span_type", "attributes", "duration_us"
    ):
        if "cockpit.escalation.level" in attributes:
            labels[span_id] = escalation_summary(attributes)
        elif span_type == SpanType.APPROVAL:
            labels[span_id] = approval_summary(attributes, duration)
        elif span_type == SpanType.OPERATOR:
            labels[span_id] = operator_summary(attributes)
    return labels


JOURNAL_KINDS = (RunEvent.Kind.DIRECTIVE, RunEvent.Kind.OVERRIDE, RunEvent.Kind.APPROVAL, RunEvent.Kind.NOTE)


def _journal_rows(trace: Trace, operator_times: list[int], approval_spans: int, now: datetime) -> list[dict]:
    """What the linked run's journal knows that its spans do not (yet): an approval still being
    waited for, and operator actions or notes that left no span (an exporter that lost them).
    ``operator_times`` are the operator spans' starts (µs since 1970)."""
    run_id = trace.run_id
    try:
        run = trace.run
    except Trace.run.RelatedObjectDoesNotExist:
        run = None
    if run is None or run_id is None:
        return []
    entries: list[dict[str, Any]] = []
    window = SAME_ACTION_SECONDS * 1_000_000
    events = RunEvent.objects.filter(run_id=run_id).filter(Q(kind__in=JOURNAL_KINDS) | Q(actor_user__isnull=False))
    approvals_seen = 0
    for event in events.order_by("at", "id"):
        if event.kind == RunEvent.Kind.STATUS and event.to_status not in (RunStatus.PAUSED, RunStatus.CANCELLED):
            continue  # a person's resume is an operator span; other status changes are the runtime's
        if event.kind == RunEvent.Kind.APPROVAL:
            approvals_seen += 1
            if approvals_seen <= approval_spans:
                continue  # its span is there, with the decision
        elif any(abs(_micros(event.at) - t) <= window for t in operator_times):
            continue
        entries.append(_journal_entry(event))
    if run.status == RunStatus.WAITING_APPROVAL:
        waiting = Step.objects.filter(run_id=run_id, kind=StepKind.APPROVAL, status=StepStatus.WAITING)
        for step in waiting.order_by("seq"):
            waited = max(timedelta(0), now - step.started_at)
            entries.append(
                {
                    "at": step.started_at,
                    "duration": waited // timedelta(microseconds=1),
                    "name": f"approval {step.name}",
                    "type": SpanType.APPROVAL,
                    "label": f"waiting for a decision — {seconds(waited)} so far",
                }
            )
    return entries


def _journal_entry(event: RunEvent) -> dict[str, Any]:
    data = event.data or {}
    if event.kind == RunEvent.Kind.DIRECTIVE:
        name = f"operator {data.get('directive', 'directive')}"
    elif event.kind == RunEvent.Kind.OVERRIDE:
        name = "operator override"
    elif event.kind == RunEvent.Kind.APPROVAL:
        name = "approval decided"
    elif event.kind == RunEvent.Kind.NOTE:
        name = "note"
    else:
        name = f"run {event.to_status}"
    if event.kind == RunEvent.Kind.APPROVAL:
        verdict = "approved" if data.get("approved") else "rejected"
        waited = data.get("waited_seconds")
        label = f"{verdict} by {event.actor_label}" + (f" after {seconds(waited)}" if waited is not None else "")
    else:
        label = f"by {event.actor_label}"
    if event.reason:
        label += f" — “{event.reason}”"
    return {
        "at": event.at,
        "duration": 0,
        "name": name,
        "type": SpanType.APPROVAL if event.kind == RunEvent.Kind.APPROVAL else SpanType.OPERATOR,
        "label": f"{label} (from the run's journal)",
    }


# --- One span in detail -----------------------------------------------------------------------


def span_for_trace(trace: Trace, span_id: str) -> Span:
    span = _spans_of(trace).filter(span_id=span_id).first() if SPAN_ID.match(span_id) else None
    if span is None:
        raise Http404("No such span in this trace.")
    return span


@dataclass(frozen=True)
class Attribute:
    key: str
    value: str
    long: bool


@dataclass(frozen=True)
class SpanEvent:
    name: str
    offset_ms: float | None
    attributes: list[Attribute]
    is_exception: bool


@dataclass(frozen=True)
class SpanDetail:
    span: Span
    offset_ms: float
    parent_name: str
    messages: conversation.Conversation
    tool: conversation.ToolIO
    step_kind: str
    step_input: str
    step_output: str
    approval: dict[str, Any] | None
    operator: dict[str, Any] | None
    summary: str
    cost_so_far: Decimal | None
    attributes: list[Attribute]
    resource: list[Attribute]
    events: list[SpanEvent]


def _attribute_rows(values: dict[str, Any]) -> list[Attribute]:
    rows = []
    for key in sorted(values):
        text = conversation.readable(values[key], ATTRIBUTE_VALUE_CHARS)
        rows.append(Attribute(key, text, len(text) > 160 or "\n" in text))
    return rows


def span_detail(trace: Trace, span: Span) -> SpanDetail:
    """Everything the detail pane shows about one span. Two queries (its parent's name, and
    the trace's cost up to the span's end)."""
    attributes = span.attributes if isinstance(span.attributes, dict) else {}
    parent_name = ""
    if span.parent_span_id:
        parent_name = _spans_of(trace).filter(span_id=span.parent_span_id).values_list("name", flat=True).first() or ""
    cost_so_far = None
    if trace.cost is not None:
        cost_so_far = _spans_of(trace).filter(end_time__lte=span.end_time).aggregate(total=Sum("cost"))["total"]
    step_kind = attributes.get("cockpit.step.kind")
    step_input = step_output = ""
    if isinstance(step_kind, str) and f"cockpit.{step_kind}.input" in attributes:
        step_input = conversation.readable(attributes.get(f"cockpit.{step_kind}.input"))
        step_output = conversation.readable(attributes.get(f"cockpit.{step_kind}.output"))
    approval = operator = None
    summary = ""
    if span.span_type == SpanType.APPROVAL:
        asked = _json_attribute(attributes, "cockpit.approval.input")
        outcome = _json_attribute(attributes, "cockpit.approval.output")
        approval = {
            "asked": asked if isinstance(asked, dict) else {},
            "outcome": outcome if isinstance(outcome, dict) else {},
        }
        summary = approval_summary(attributes, span.duration_us)
    elif "cockpit.escalation.level" in attributes:
        summary = escalation_summary(attributes)
    elif span.span_type == SpanType.OPERATOR:
        data = _json_attribute(attributes, "cockpit.operator.data")
        operator = {
            "action": attributes.get("cockpit.operator.action", ""),
            "actor": attributes.get("cockpit.operator.actor", ""),
            "reason": attributes.get("cockpit.reason", ""),
            "data": conversation.readable(data) if data else "",
        }
        summary = operator_summary(attributes)
    events = []
    for event in span.events if isinstance(span.events, list) else []:
        if not isinstance(event, dict):
            continue
        at = event.get("time")
        offset = None
        if isinstance(at, int):
            offset = (at / 1000 - (span.start_time - _EPOCH) / timedelta(microseconds=1)) / 1000
        name = str(event.get("name", ""))
        events.append(SpanEvent(name, offset, _attribute_rows(event.get("attributes") or {}), name == "exception"))
    return SpanDetail(
        span=span,
        offset_ms=(span.start_time - trace.started_at) / timedelta(milliseconds=1),
        parent_name=parent_name,
        messages=conversation.conversation(attributes, span.events if isinstance(span.events, list) else None)
        if span.span_type not in (SpanType.TOOL, SpanType.APPROVAL, SpanType.OPERATOR)
        else conversation.Conversation(),
        tool=conversation.tool_io(attributes) if span.span_type == SpanType.TOOL else conversation.ToolIO(),
        step_kind=step_kind if isinstance(step_kind, str) else "",
        step_input=step_input,
        step_output=step_output,
        approval=approval,
        operator=operator,
        summary=summary,
        cost_so_far=cost_so_far,
        attributes=_attribute_rows(attributes),
        resource=_attribute_rows(span.resource if isinstance(span.resource, dict) else {}),
        events=events,
    )


def narrative_spans(trace: Trace) -> list[Span]:
    """The spans ``traces.narrative.narrate`` reads (attributes loaded), in start order."""
    return trace_spans(trace)
