"""Incident pages (mark a trace, the incident list, one incident with its notes and related
traces), the OTLP JSON export of a trace, and the discovered-agents page.

Every view asks ``cockpit.access`` first: 404 when the user may not see the team, 403 when
they see it but may not act. Marking and editing incidents takes the team's *operate*
permission (operators and admins: the people who act on what agents did); adopting an agent
into the fleet takes *manage*. Writes go through ``traces.services``, which audit them and
announce them on the live bus, so everyone viewing an incident sees a new note appear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, QuerySet
from django.forms import Form
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import reswap, retarget, trigger_client_event

from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.audit import Actor
from cockpit.forms import submit
from cockpit.roles import TeamPerm
from traces import export, narrative, services
from traces.forms import (
    AdoptForm,
    IncidentEditForm,
    IncidentFilterForm,
    IncidentLinkForm,
    IncidentNoteForm,
    IncidentOpenForm,
    IncidentStatusForm,
)
from traces.models import DiscoveredAgent, Incident, IncidentNote, IncidentStatus, Span, Trace

if TYPE_CHECKING:
    from cockpit.views import HtmxHttpRequest

Builder = Callable[[], dict[str, Any]]
INCIDENTS_PER_PAGE = 50
NOTE_SPAN_CHOICES = 300
MARK_PERM = TeamPerm.OPERATE  # mark a trace as an incident, note, label, link, resolve
ADOPT_PERM = TeamPerm.MANAGE


# --- Reads ------------------------------------------------------------------------------------


def get_trace_for_user(request: HtmxHttpRequest, pk: int, perm: str = TeamPerm.VIEW) -> Trace:
    return access.get_for_user(request.user, Trace.objects.select_related("team", "agent"), perm, pk=pk)


def get_incident_for_user(request: HtmxHttpRequest, pk: int, perm: str = TeamPerm.VIEW) -> Incident:
    incidents = Incident.objects.select_related("team", "trace", "trace__agent", "trace__team")
    return access.get_for_user(request.user, incidents, perm, pk=pk)


def _trace_spans(trace: Trace) -> list[Span]:
    return list(Span.objects.filter(team_id=trace.team_id, trace_id=trace.trace_id).order_by("start_time", "id"))


def _notes(incident: Incident) -> list[IncidentNote]:
    notes = list(incident.notes.all())
    span_ids = {n.span_id for n in notes if n.span_id}
    names = dict(
        Span.objects.filter(team_id=incident.team_id, trace_id=incident.trace.trace_id, span_id__in=span_ids)
        .values_list("span_id", "name")
        .order_by()
    )
    for note in notes:
        note.span_name = names.get(note.span_id, "")  # type: ignore[attr-defined]
    return notes


def _related(incident: Incident) -> list[Trace]:
    return list(incident.related.select_related("agent").order_by("-started_at", "-id"))


def _find_trace(incident: Incident, ident: str) -> Trace:
    """The incident team's trace named by a link form: ``#<pk>``, a whole id, or a prefix."""
    traces = Trace.objects.filter(team_id=incident.team_id)
    if ident.startswith("#"):
        found = traces.filter(pk=int(ident[1:])).first()
    elif len(ident) == 32:
        found = traces.filter(trace_id=ident).first()
    else:
        matches = list(traces.filter(trace_id__startswith=ident)[:2])
        if len(matches) > 1:
            raise ValidationError({"trace": f"More than one trace starts with {ident}: paste more of the id."})
        found = matches[0] if matches else None
    if found is None:
        raise ValidationError({"trace": f"No trace of {incident.team.name} has the id {ident.lstrip('#')}."})
    return found


def _sentence_choices(sentences: list[narrative.Sentence]) -> list[tuple[str, str]]:
    """The steps a note can be about, as the narrative tells them."""
    choices: dict[str, str] = {}
    for sentence in sentences:
        if sentence.span_id and sentence.span_id not in choices and sentence.kind not in ("start", "outcome"):
            offset = f"+{sentence.offset:.1f} s" if sentence.offset is not None else ""
            choices[sentence.span_id] = f"{offset} · {sentence.text}"[:120]
        if len(choices) >= NOTE_SPAN_CHOICES:
            break
    return list(choices.items())


# --- Helpers ----------------------------------------------------------------------------------


def _errors(form: Form) -> list[str]:
    return [str(error) for errors in form.errors.values() for error in errors]


def _render_page(
    request: HtmxHttpRequest,
    template: str,
    context: dict[str, Any],
    fragments: dict[str, tuple[str, Builder]],
    status: int = 200,
) -> HttpResponse:
    """The whole page, or (a live re-fetch names its element in ``HX-Target``) one partial."""
    target = request.htmx.target if request.htmx else None
    if target in fragments:
        partial, build = fragments[target]
        return render(request, f"{template}#{partial}", {**context, **build()})
    page = dict(context)
    for _, build in fragments.values():
        page.update(build())
    return render(request, template, page, status=status)


# --- Incidents --------------------------------------------------------------------------------


@login_required
@require_GET
def incident_list(request: HtmxHttpRequest) -> HttpResponse:
    data = request.GET.copy()
    team = cockpit_selectors.current_team(request)
    if "team" not in data and team is not None:
        data["team"] = team.slug
    teams = access.teams_for_user(request.user).order_by("name")
    form = IncidentFilterForm(data, teams=teams)
    incidents: QuerySet[Incident] = access.scope_to_user(
        Incident.objects.select_related("team", "trace", "trace__agent").annotate(note_count=Count("notes")),
        request.user,
    )
    valid = form.is_valid()
    if valid:
        filters = form.cleaned_data
        if filters["status"]:
            incidents = incidents.filter(status=filters["status"])
        if filters["severity"]:
            incidents = incidents.filter(severity=filters["severity"])
        if filters["team"]:
            incidents = incidents.filter(team=filters["team"])
        if filters["label"]:
            incidents = _with_label(incidents, slugify(filters["label"]))
    else:
        incidents = incidents.none()
    paginator = Paginator(incidents.order_by("-created_at", "-id"), INCIDENTS_PER_PAGE)
    page = paginator.get_page(form.cleaned_data.get("page") if valid else 1)
    open_count = access.scope_to_user(Incident.objects.filter(status=IncidentStatus.OPEN), request.user)
    if valid and form.cleaned_data["team"]:
        open_count = open_count.filter(team=form.cleaned_data["team"])
    query = data.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "open_count": open_count.count(),
        "filtered": any(data.get(k) for k in ("status", "severity", "label")),
        "can_mark": access.for_user(request.user).holds_anywhere(MARK_PERM),
    }
    template = "traces/incident_list.html#rows" if request.htmx else "traces/incident_list.html"
    return render(request, template, context, status=200 if valid else 400)


def _with_label(incidents: QuerySet[Incident], label: str) -> QuerySet[Incident]:
    """Incidents carrying ``label`` (labels are a JSON list of slugs)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return incidents.filter(labels__contains=[label])
    # SQLite has no JSON containment: match the quoted slug in the list's text.
    return incidents.filter(labels__icontains=f'"{label}"')


@login_required
@require_http_methods(["GET", "POST"])
def incident_open(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    trace = get_trace_for_user(request, pk, MARK_PERM)
    existing = Incident.objects.filter(trace=trace, status=IncidentStatus.OPEN).first()
    if request.method == "GET":
        form = IncidentOpenForm(initial={"title": "" if trace.status != "error" else f"{trace.title} failed"})
        return render(request, "traces/incident_open.html", {"trace": trace, "form": form, "existing": existing})
    form = IncidentOpenForm(request.POST)
    incident = submit(
        form,
        lambda data: services.incident_open(
            actor=Actor.from_request(request),
            trace=trace,
            title=data["title"],
            severity=data["severity"],
            labels=data["labels"],
            note=data["note"],
        ),
    )
    if incident is None:
        context = {"trace": trace, "form": form, "existing": existing}
        return render(request, "traces/incident_open.html", context, status=400)
    messages.success(request, f"Incident #{incident.pk} opened: {incident.title}.")
    return redirect("incident-detail", incident.pk)


@login_required
@require_GET
def incident_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk)
    return _detail(request, incident)


def _detail(request: HtmxHttpRequest, incident: Incident, status: int = 200, **forms: Form) -> HttpResponse:
    can_edit = access.for_user(request.user).can(MARK_PERM, incident.team_id)
    context: dict[str, Any] = {"incident": incident, "trace": incident.trace, "can_edit": can_edit}

    def head() -> dict[str, Any]:
        return {}

    def notes() -> dict[str, Any]:
        return {"notes": _notes(incident)}

    def related() -> dict[str, Any]:
        return {"related": _related(incident)}

    fragments = {"incident-head": ("head", head), "incident-notes": ("notes", notes)}
    fragments["incident-related"] = ("related", related)
    target = request.htmx.target if request.htmx else None
    if target not in fragments:
        sentences = narrative.narrate(incident.trace, _trace_spans(incident.trace))
        context["narrative"] = sentences
        if can_edit:
            choices = _sentence_choices(sentences)
            context["note_form"] = forms.get("note_form") or IncidentNoteForm(spans=choices)
            context["edit_form"] = forms.get("edit_form") or IncidentEditForm(
                initial={"title": incident.title, "severity": incident.severity, "labels": incident.labels}
            )
            context["link_form"] = forms.get("link_form") or IncidentLinkForm()
            context["edit_open"] = "edit_form" in forms
    return _render_page(request, "traces/incident_detail.html", context, fragments, status=status)


@login_required
@require_POST
def incident_note(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk, MARK_PERM)
    form = IncidentNoteForm(request.POST)
    note = submit(
        form,
        lambda data: services.incident_note_add(
            actor=Actor.from_request(request), incident=incident, text=data["text"], span_id=data["span_id"]
        ),
    )
    if request.htmx:
        if note is None:
            choices = _sentence_choices(narrative.narrate(incident.trace, _trace_spans(incident.trace)))
            form.offer(choices)
            context = {"incident": incident, "note_form": form, "can_edit": True}
            return render(request, "traces/incident_detail.html#note-form", context, status=422)
        response = render(
            request, "traces/incident_detail.html#notes", {"incident": incident, "notes": _notes(incident)}
        )
        response = reswap(retarget(response, "#incident-notes"), "outerHTML")
        return trigger_client_event(
            trigger_client_event(response, "incident:noted"), "fleet:done", {"message": "Note added."}
        )
    if note is None:
        for error in _errors(form):
            messages.error(request, error)
    else:
        messages.success(request, "Note added.")
    return redirect(reverse("incident-detail", args=[incident.pk]) + "#notes")


@login_required
@require_POST
def incident_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk, MARK_PERM)
    form = IncidentEditForm(request.POST)
    updated = submit(
        form,
        lambda data: services.incident_update(
            actor=Actor.from_request(request),
            incident=incident,
            title=data["title"],
            severity=data["severity"],
            labels=data["labels"],
        ),
    )
    if updated is None:
        return _detail(request, incident, status=400, edit_form=form)
    messages.success(request, "Incident updated.")
    return redirect("incident-detail", incident.pk)


@login_required
@require_POST
def incident_status(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk, MARK_PERM)
    form = IncidentStatusForm(request.POST)
    updated = submit(
        form,
        lambda data: services.incident_update(
            actor=Actor.from_request(request), incident=incident, status=data["status"]
        ),
    )
    if updated is None:
        for error in _errors(form):
            messages.error(request, error)
    elif updated.status == IncidentStatus.RESOLVED:
        messages.success(request, f"Incident #{updated.pk} is resolved. Its traces are kept.")
    else:
        messages.success(request, f"Incident #{updated.pk} is open again.")
    return redirect("incident-detail", incident.pk)


@login_required
@require_POST
def incident_link(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk, MARK_PERM)
    form = IncidentLinkForm(request.POST)
    updated = submit(
        form,
        lambda data: services.incident_link(
            actor=Actor.from_request(request), incident=incident, trace=_find_trace(incident, data["trace"])
        ),
    )
    if updated is None:
        return _detail(request, incident, status=400, link_form=form)
    messages.success(request, "Trace linked.")
    return redirect(reverse("incident-detail", args=[incident.pk]) + "#related")


@login_required
@require_POST
def incident_unlink(request: HtmxHttpRequest, pk: int, trace_pk: int) -> HttpResponse:
    incident = get_incident_for_user(request, pk, MARK_PERM)
    trace = incident.related.filter(pk=trace_pk).first()
    if trace is None:
        raise Http404("That trace is not linked to this incident.")
    services.incident_link(actor=Actor.from_request(request), incident=incident, trace=trace, unlink=True)
    messages.success(request, f"Trace {trace.trace_id[:8]}… is no longer linked.")
    return redirect(reverse("incident-detail", args=[incident.pk]) + "#related")


# --- Export -----------------------------------------------------------------------------------


@login_required
@require_GET
def trace_export(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    trace = get_trace_for_user(request, pk)
    response = HttpResponse(export.trace_as_otlp_json(trace), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{export.filename(trace)}"'
    return response


# --- Discovered agents ------------------------------------------------------------------------


@dataclass
class DiscoveredRow:
    found: DiscoveredAgent
    can_adopt: bool
    progress: services.LinkProgress | None = None
    form: AdoptForm | None = None


def _discovered_rows(request: HtmxHttpRequest, failed: tuple[int, AdoptForm] | None = None) -> dict[str, Any]:
    team = cockpit_selectors.current_team(request)
    found = access.scope_to_user(DiscoveredAgent.objects.select_related("team", "adopted_as"), request.user)
    if team is not None:
        found = found.filter(team=team)
    user_access = access.for_user(request.user)
    waiting: list[DiscoveredRow] = []
    adopted: list[DiscoveredRow] = []
    for item in found.order_by("-last_seen", "-id")[:500]:
        row = DiscoveredRow(found=item, can_adopt=user_access.can(ADOPT_PERM, item.team_id))
        if failed is not None and failed[0] == item.pk:
            row.form = failed[1]
        if item.adopted_as_id is None:
            waiting.append(row)
        else:
            row.progress = services.link_progress(item.pk)
            adopted.append(row)
    return {"team": team, "waiting": waiting, "adopted": adopted}


@login_required
@require_GET
def discovered_list(request: HtmxHttpRequest) -> HttpResponse:
    template = "traces/discovered.html#rows" if request.htmx else "traces/discovered.html"
    return render(request, template, _discovered_rows(request))


@login_required
@require_POST
def discovered_adopt(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    found = access.get_for_user(request.user, DiscoveredAgent.objects.select_related("team"), ADOPT_PERM, pk=pk)
    form = AdoptForm(request.POST)
    agent = submit(
        form,
        lambda data: services.discovered_agent_adopt(
            actor=Actor.from_request(request), discovered=found, slug=data["slug"], name=data["name"]
        ),
    )
    if agent is None:
        for error in form.non_field_errors():
            messages.error(request, str(error))
        return render(request, "traces/discovered.html", _discovered_rows(request, (found.pk, form)), status=400)
    messages.success(
        request,
        f"{agent.name} is now an agent of {found.team.name}. Its past spans are being linked in the background.",
    )
    return redirect("discovered")
