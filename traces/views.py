"""The trace explorer: the trace list, the trace view, and the small endpoints the trace view's
script reads (its span rows as JSON, one span's detail, the narrative).

Every view asks ``traces.selectors`` first: a trace of a team the user may not see is a 404,
whichever endpoint is asked. Live updates re-fetch through these same views (see
``static/traces/trace.js`` and the ``data-live-on`` elements of the templates).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.forms import FilterDateTimeField
from cockpit.lib.validation import is_id
from cockpit.models import Team
from fleet import selectors as fleet_selectors
from fleet.forms import AgentChoiceField
from fleet.models import Agent
from traces import narrative, selectors
from traces.models import TraceStatus
from traces.semconv import SpanType

if TYPE_CHECKING:
    from cockpit.views import HtmxHttpRequest

CURSOR_FIELDS = ("after", "before")


def _local_datetime() -> forms.DateTimeInput:
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class TraceFilterForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "span or tool name, trace id"}),
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", to_field_name="slug"
    )
    agent = AgentChoiceField(queryset=Agent.objects.none(), required=False, empty_label="All agents")
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *TraceStatus.choices])
    model = forms.CharField(
        required=False, max_length=200, widget=forms.TextInput(attrs={"placeholder": "e.g. gpt-4o"})
    )
    since = FilterDateTimeField(required=False, label="From", widget=_local_datetime())
    until = FilterDateTimeField(required=False, label="To", widget=_local_datetime())
    min_cost = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_digits=12,
        decimal_places=6,
        label="Min cost ($)",
        widget=forms.NumberInput(attrs={"step": "any", "placeholder": "0.10"}),
    )
    min_duration = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_digits=12,
        decimal_places=3,
        label="Min duration (s)",
        widget=forms.NumberInput(attrs={"step": "any", "placeholder": "30"}),
    )
    with_errors = forms.BooleanField(required=False, label="Has errors")
    after = forms.CharField(required=False, widget=forms.HiddenInput)
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, teams: QuerySet[Team], agents: QuerySet[Agent], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = agents

    def _cursor(self, name: str) -> selectors.TraceCursor | None:
        raw = self.cleaned_data[name]
        if not raw:
            return None
        try:
            return selectors.TraceCursor.decode(raw)
        except ValueError:
            raise forms.ValidationError("This page link is broken; start again from the newest traces.") from None

    def clean_after(self) -> selectors.TraceCursor | None:
        return self._cursor("after")

    def clean_before(self) -> selectors.TraceCursor | None:
        return self._cursor("before")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since: datetime | None = data.get("since")
        until: datetime | None = data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'From' must be before 'To'.")
        return data

    def filters(self) -> dict[str, Any]:
        """The cleaned filters as ``traces.selectors.filter_traces`` arguments."""
        data = self.cleaned_data
        duration = data["min_duration"]
        return {
            "team": data["team"],
            "agent": data["agent"],
            "status": data["status"],
            "has_error": data["with_errors"],
            "model": data["model"],
            "since": data["since"],
            "until": data["until"],
            "min_cost": data["min_cost"],
            "min_duration_ms": None if duration is None else float(duration) * 1000,
            "text": data["q"],
        }

    @property
    def is_filtered(self) -> bool:
        return any(self.cleaned_data.get(f) for f in self.fields if f not in (*CURSOR_FIELDS, "team"))


@login_required
@require_GET
def trace_list(request: HtmxHttpRequest) -> HttpResponse:
    data = request.GET.copy()
    team = cockpit_selectors.current_team(request)
    if "team" not in data and team is not None:
        data["team"] = team.slug
    form = TraceFilterForm(
        data,
        teams=access.teams_for_user(request.user).order_by("name"),
        agents=fleet_selectors.visible_agents(request.user).order_by("name"),
    )
    if not form.is_valid():
        return render(request, "traces/list.html", {"form": form, "page": None}, status=400)
    traces = selectors.filter_traces(selectors.visible_traces(request.user), **form.filters())
    target = request.htmx.target if request.htmx else None
    if target == "trace-arrivals":
        above = request.GET.get("above", "")
        above_id = int(above) if is_id(above) else 0
        arrivals = {"arrivals": selectors.arrivals(traces, above_id=above_id), "above": above_id}
        return render(request, "traces/list.html#arrivals", {**arrivals, **_links(data, None)})
    page = selectors.traces_page(traces, after=form.cleaned_data["after"], before=form.cleaned_data["before"])
    context: dict[str, Any] = {
        "form": form,
        "page": page,
        "arrivals": 0,
        "above": page.newest_id,
        "filter_team": form.cleaned_data["team"],
        **_links(data, page),
    }
    if not page.traces and not form.is_filtered and page.is_first:
        context["setup"] = _setup(request)
    template = "traces/list.html#rows" if target == "trace-rows" else "traces/list.html"
    return render(request, template, context)


def _links(data: Any, page: selectors.TracePage | None) -> dict[str, str]:
    newest = data.copy()
    for name in (*CURSOR_FIELDS, "above"):
        newest.pop(name, None)
    links = {"newest": newest.urlencode(), "older": "", "newer": ""}
    if page is not None and page.older is not None:
        older = newest.copy()
        older["after"] = page.older.encode()
        links["older"] = older.urlencode()
    if page is not None and page.newer is not None:
        newer = newest.copy()
        newer["before"] = page.newer.encode()
        links["newer"] = newer.urlencode()
    return links


def _setup(request: HtmxHttpRequest) -> dict[str, Any]:
    """What the empty list says: where to send spans, and with which key."""
    return {
        "endpoint": request.build_absolute_uri("/v1/traces"),
        "base": request.build_absolute_uri("/").rstrip("/"),
        "can_create_keys": access.for_user(request.user).manages_a_team,
    }


# --- The trace view ---------------------------------------------------------------------------


@login_required
@require_GET
def trace_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    trace = selectors.get_trace_for_user(request.user, pk)
    context: dict[str, Any] = {"trace": trace}
    if request.htmx and request.htmx.target == "trace-header":
        return render(request, "traces/detail.html#header", context)
    context["view_data"] = selectors.trace_view_data(trace)
    context["span_types"] = SpanType.ALL
    return render(request, "traces/detail.html", context)


@login_required
@require_GET
def trace_data(request: HtmxHttpRequest, pk: int) -> JsonResponse:
    """The trace view's span rows (``selectors.trace_view_data``), re-read when spans arrive."""
    trace = selectors.get_trace_for_user(request.user, pk)
    response = JsonResponse(selectors.trace_view_data(trace), json_dumps_params={"separators": (",", ":")})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def span_detail(request: HtmxHttpRequest, pk: int, span_id: str) -> HttpResponse:
    """The detail pane for one span: conversation, tool call, attributes, events."""
    trace = selectors.get_trace_for_user(request.user, pk)
    span = selectors.span_for_trace(trace, span_id)
    return render(request, "traces/_explorer_span.html", {"trace": trace, "d": selectors.span_detail(trace, span)})


@login_required
@require_GET
def trace_narrative(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The trace told in plain language (``traces.narrative``), read when its tab is opened."""
    trace = selectors.get_trace_for_user(request.user, pk)
    sentences = narrative.narrate(trace, selectors.narrative_spans(trace))
    return render(request, "traces/_explorer_narrative.html", {"trace": trace, "narrative": sentences})
