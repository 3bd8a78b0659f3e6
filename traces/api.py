"""REST API for traces: read what agents sent, as the trace list and the trace view show it.

    GET /api/v1/traces               trace summaries, newest first (keyset pages: ?cursor=)
    GET /api/v1/traces/{trace_id}    one trace: its summary and every span, attributes included

Spans are sent to ``POST /v1/traces`` (OTLP/HTTP), not here. An API key reads its own team's
traces and needs the ``read`` scope; a signed-in user reads the traces of every team they may
view.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from django.http import HttpRequest
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel

from cockpit.api import Input, Text, Timestamp, key_or_session
from cockpit.models import Scope
from traces import selectors
from traces.models import SpanKind, StatusCode, Trace

router = Router(tags=["traces"])

STATUS_NAMES = {StatusCode.UNSET.value: "unset", StatusCode.OK.value: "ok", StatusCode.ERROR.value: "error"}
KIND_NAMES = {k.value: k.label.lower() for k in SpanKind}


def _invalid(field: str, message: str) -> NinjaValidationError:
    """A 422 in the API's usual shape (``detail`` and ``errors``)."""
    return NinjaValidationError([{"loc": ("query", field), "msg": message}])


# --- Schemas ----------------------------------------------------------------------------------


class TraceOut(Schema):
    trace_id: str = Field(description="the OpenTelemetry trace id (32 hex digits)")
    team: str = Field(alias="team.slug")
    name: str = Field(alias="root_name", description="the root span's name; empty until the root span has arrived")
    status: Literal["open", "ok", "error"] = Field(
        description="the root span's outcome; open until it has arrived (the work may still be going on)"
    )
    agent: str | None = Field(None, description="the fleet agent's slug, when the spans could be linked to one")
    agent_name: str = Field(description="the agent as the spans named it (gen_ai.agent.name or id)")
    run: int | None = Field(None, alias="run_id", description="the Cockpit run, for managed or registered runs")
    service_name: str
    started_at: datetime
    ended_at: datetime
    duration_ms: float
    span_count: int
    error_count: int = Field(description="spans with an error status, anywhere in the trace")
    llm_count: int
    tool_count: int
    input_tokens: int
    output_tokens: int
    cost: Decimal | None = Field(description="USD; null when no span could be priced")
    models: list[str] = Field(alias="model_list")
    incident: bool
    url: str = Field(description="the trace view in the web interface")

    @staticmethod
    def resolve_agent(trace: Trace) -> str | None:
        return trace.agent.slug if trace.agent_id and trace.agent else None

    @staticmethod
    def resolve_url(trace: Trace) -> str:
        return reverse("trace-detail", args=[trace.pk])


class TracePageOut(Schema):
    items: list[TraceOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last page")


class SpanOut(BaseModel):
    """A plain pydantic model, validated from the dicts ``_span_rows`` makes: a trace may hold
    tens of thousands of spans, and reading them through model instances and ninja's attribute
    getter would cost seconds."""

    span_id: str
    parent_span_id: str = Field(description="empty for a root span")
    name: str
    kind: str = Field(description="internal, server, client, producer, consumer or unspecified")
    type: str = Field(
        description="agent, llm, tool, retrieval, embedding, chain, guardrail, approval, operator or other",
    )
    start_time: datetime
    end_time: datetime
    duration_us: int
    status: Literal["unset", "ok", "error"]
    status_message: str
    error_type: str
    service_name: str
    scope_name: str
    agent_key: str = Field(description="gen_ai.agent.id as sent")
    agent_name: str
    agent_version: str
    run: int | None = None
    conversation_id: str
    model: str
    provider: str
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    input_audio_tokens: int | None
    output_audio_tokens: int | None
    cost: Decimal | None = Field(description="USD, the span's own cost (leaf spans only); null: none, or unpriced")
    tool_name: str
    attributes: dict[str, Any]
    events: list[Any]
    links: list[Any]
    resource: dict[str, Any]
    truncated: bool = Field(description="some value was cut to the size limits when it was stored")


def _span_rows(trace: Trace) -> list[dict[str, Any]]:
    rows = selectors.trace_span_values(trace)
    for row in rows:
        row["type"] = row.pop("span_type")
        row["kind"] = KIND_NAMES.get(row["kind"], "unspecified")
        row["status"] = STATUS_NAMES.get(row.pop("status_code"), "unset")
        row["run"] = row.pop("run_id")
    return rows


class TraceDetailOut(TraceOut):
    spans: list[SpanOut] = Field(description="every span, in start order")


class TraceFilter(Input):
    agent: str | None = Field(None, description="a fleet agent's slug, or the agent id or name the spans carry")
    status: Literal["open", "ok", "error"] | None = None
    team: str | None = Field(None, description="team slug (signed-in users in several teams)")
    since: Timestamp | None = Field(None, description="traces started at or after this time")
    until: Timestamp | None = Field(None, description="traces started before this time")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(50, ge=1, le=200)


# --- Endpoints --------------------------------------------------------------------------------


@router.get(
    "/traces",
    response=TracePageOut,
    auth=key_or_session(Scope.READ),
    summary="Trace summaries, newest first",
    description=(
        "One row per trace, as the trace list shows it. Pages are keyset pages: follow "
        "`next_cursor` for older traces; a page never shifts while new traces arrive."
    ),
)
def trace_list(request: HttpRequest, filters: Query[TraceFilter]) -> dict[str, Any]:
    after = None
    if filters.cursor:
        try:
            after = selectors.TraceCursor.decode(filters.cursor)
        except ValueError:
            raise _invalid("cursor", "This cursor is not one this API gave out; start again without it.") from None
    if filters.since and filters.until and filters.since >= filters.until:
        raise _invalid("until", "'until' must be after 'since'.")
    traces = selectors.visible_traces(request.auth)  # type: ignore[attr-defined]
    if filters.team:
        traces = traces.filter(team__slug=filters.team)
    traces = selectors.filter_traces(
        traces,
        agent_ref=filters.agent or "",
        status=filters.status or "",
        since=filters.since,
        until=filters.until,
    )
    page = selectors.traces_page(traces, after=after, size=filters.limit, with_newest_id=False)
    return {"items": page.traces, "next_cursor": page.older.encode() if page.older else None}


@router.get(
    "/traces/{trace_id}",
    response=TraceDetailOut,
    auth=key_or_session(Scope.READ),
    summary="One trace with every span",
    description=(
        "The trace's summary and all its spans with their normalised fields, attributes, events, "
        "links and resource. Trace ids are chosen by the agents: if two of your teams hold the "
        "same one, the answer is 422 and `?team=` says which."
    ),
)
def trace_detail(request: HttpRequest, trace_id: Text, team: Text | None = None) -> Trace:
    trace_id = trace_id.lower()
    if not selectors.TRACE_ID.match(trace_id):
        raise NinjaValidationError([{"loc": ("path", "trace_id"), "msg": "A trace id is 32 hexadecimal digits."}])
    try:
        trace = selectors.trace_for_principal(request.auth, trace_id, team)  # type: ignore[attr-defined]
    except selectors.AmbiguousTrace as exc:
        raise _invalid("team", str(exc)) from None
    trace.spans = _span_rows(trace)  # type: ignore[attr-defined]
    return trace
