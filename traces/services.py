"""Every write of the traces app: storing spans, adopting a discovered agent, incidents, and
the retention sweep.

Storing spans is not audited row by row (spans are telemetry, not decisions; each span keeps
when it was received); adopting an agent and every incident change are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone
from django.utils.text import slugify

from cockpit import live
from cockpit.audit import Actor, audit_record
from cockpit.models import Team
from traces import normalise, store
from traces.models import DiscoveredAgent, Incident, IncidentNote, IncidentStatus, Severity, Span, Trace

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from fleet.models import Agent

logger = logging.getLogger(__name__)


@dataclass
class IngestResult:
    accepted: int
    rejected: int
    duplicates: int
    message: str


def limits() -> normalise.Limits:
    return normalise.Limits(value_chars=int(settings.COCKPIT["OTLP_MAX_VALUE_CHARS"]))


def spans_ingest(*, team: Team, request: ExportTraceServiceRequest) -> IngestResult:
    """Store the spans of one OTLP export request for ``team``: all of them or none (one
    transaction); spans that cannot be stored as sent are counted as rejected, with why."""
    now = timezone.now()
    batch = normalise.rows_from(request, limits=limits(), received_at=now)
    stored = store.write(team, batch.rows, now=now)
    return IngestResult(
        accepted=stored.spans, rejected=batch.rejected, duplicates=stored.duplicates, message=batch.message
    )


# --- Discovered agents ------------------------------------------------------------------------


@transaction.atomic
def discovered_agent_adopt(*, actor: Actor, discovered: DiscoveredAgent, slug: str = "", name: str = "") -> Agent:
    """Make a discovered agent a fleet agent (external: it runs elsewhere and reports here), and
    link the spans and traces it has already sent."""
    from fleet.models import Agent, AgentKind
    from fleet.services import agent_create

    locked = DiscoveredAgent.objects.select_for_update().get(pk=discovered.pk)
    if locked.adopted_as_id is not None:
        raise ValidationError(f"{locked.label} was adopted already, as {locked.adopted_as}.")
    name = (name or locked.name or locked.key).strip()[:120]
    slug = slugify(slug or locked.name or locked.key.rpartition("/")[2])[:80] or "agent"
    if Agent.objects.filter(team_id=locked.team_id, slug=slug).exists():
        raise ValidationError({"slug": f"The team already has an agent {slug!r}: choose another slug."})
    agent = agent_create(
        actor=actor,
        team=locked.team,
        slug=slug,
        name=name,
        description=f"Adopted from spans sent by {locked.service_name or 'an OpenTelemetry exporter'}.",
        kind=AgentKind.EXTERNAL,
    )
    locked.adopted_as = agent
    locked.adopted_at = timezone.now()
    locked.adopted_by_label = actor.label
    locked.save(update_fields=["adopted_as", "adopted_at", "adopted_by_label"])
    theirs = Q(agent_key=locked.key) | Q(agent_key="", agent_name=locked.key)
    Trace.objects.filter(theirs, team_id=locked.team_id, agent__isnull=True).update(agent=agent)
    audit_record(
        actor=actor,
        action="agent.adopt",
        obj=agent,
        team=locked.team,
        after={"discovered": locked.key, "slug": slug, "name": name},
    )
    transaction.on_commit(lambda: _link_spans(locked.pk))
    live.publish({"type": "agents.changed"}, team_id=locked.team_id)
    live.publish({"type": "discovered.changed", "discovered": locked.pk}, team_id=locked.team_id)
    return agent


LINK_CHUNK = 50_000  # span ids looked at per linking task (an index range scan)
PROGRESS_SECONDS = 24 * 3600


@dataclass
class LinkProgress:
    """How far linking an adopted agent's past spans has come (kept in the cache: it is only
    ever shown, and the linking itself is idempotent)."""

    scanned_to: int
    last_id: int
    linked: int
    done: bool

    @property
    def percent(self) -> int:
        if self.done or self.last_id <= 0:
            return 100
        return min(99, int(100 * self.scanned_to / self.last_id))


def _progress_key(discovered_id: int) -> str:
    return f"traces:adopt-link:{discovered_id}"


def link_progress(discovered_id: int) -> LinkProgress | None:
    try:
        raw = cache.get(_progress_key(discovered_id))
    except Exception:  # noqa: BLE001 - progress is decoration; the cache may be down
        logger.warning("adoption progress could not be read", exc_info=True)
        return None
    return LinkProgress(**raw) if isinstance(raw, dict) else None


def _progress_save(discovered_id: int, progress: LinkProgress) -> None:
    try:
        cache.set(_progress_key(discovered_id), progress.__dict__, PROGRESS_SECONDS)
    except Exception:  # noqa: BLE001 - see link_progress
        logger.warning("adoption progress could not be saved", exc_info=True)


def _link_spans(discovered_id: int) -> None:
    from traces.tasks import discovered_spans_link

    last_id = Span.objects.aggregate(last=Max("id"))["last"] or 0
    _progress_save(discovered_id, LinkProgress(scanned_to=0, last_id=last_id, linked=0, done=last_id == 0))
    discovered_spans_link.delay(discovered_id)


def discovered_spans_link_batch(discovered_id: int, after_id: int = 0, chunk: int = LINK_CHUNK) -> int | None:
    """Link the adopted agent's already-stored spans whose id is in ``(after_id, after_id +
    chunk]`` (an index range scan, however large the table); the id to go on from, or None when
    the whole table has been looked at. Running a chunk twice links nothing twice."""
    found = DiscoveredAgent.objects.filter(pk=discovered_id, adopted_as__isnull=False).first()
    if found is None:
        return None
    upper = after_id + chunk
    theirs = Q(agent_key=found.key) | Q(agent_key="", agent_name=found.key)
    linked = Span.objects.filter(
        theirs, team_id=found.team_id, agent__isnull=True, id__gt=after_id, id__lte=upper
    ).update(agent=found.adopted_as_id)
    following = Span.objects.filter(id__gt=upper).order_by("id").values_list("id", flat=True).first()
    progress = link_progress(discovered_id) or LinkProgress(scanned_to=0, last_id=0, linked=0, done=False)
    progress.linked += linked
    progress.scanned_to = upper
    progress.last_id = Span.objects.aggregate(last=Max("id"))["last"] or 0  # the table grows meanwhile
    progress.done = following is None
    _progress_save(discovered_id, progress)
    live.publish(
        {"type": "discovered.changed", "discovered": discovered_id},
        team_id=found.team_id,
        coalesce=f"discovered.changed:{discovered_id}",
    )
    return None if following is None else following - 1


# --- Incidents --------------------------------------------------------------------------------


def _labels(raw: Any) -> list[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw or [])
    labels = sorted({slugify(str(item))[:40] for item in items if str(item).strip()})
    if len(labels) > 20:
        raise ValidationError({"labels": "At most 20 labels."})
    return labels


@transaction.atomic
def incident_open(
    *, actor: Actor, trace: Trace, title: str, severity: str = Severity.SEV3, labels: Any = (), note: str = ""
) -> Incident:
    title = title.strip()
    if not title:
        raise ValidationError({"title": "Say in a few words what went wrong."})
    if severity not in Severity.values:
        raise ValidationError({"severity": f"Severity must be one of {', '.join(Severity.values)}."})
    Trace.objects.select_for_update().filter(pk=trace.pk).first()  # one incident opened at a time per trace
    already = Incident.objects.filter(trace=trace, status=IncidentStatus.OPEN).first()
    if already is not None:
        raise ValidationError(f"This trace is already part of an open incident: #{already.pk} “{already.title}”.")
    incident = Incident.objects.create(
        team_id=trace.team_id,
        trace=trace,
        title=title[:200],
        severity=severity,
        labels=_labels(labels),
        created_by=actor.user,
        created_by_label=actor.label,
    )
    Trace.objects.filter(pk=trace.pk).update(incident=True)
    if note.strip():
        IncidentNote.objects.create(incident=incident, author=actor.user, author_label=actor.label, text=note.strip())
    audit_record(
        actor=actor,
        action="incident.open",
        obj=incident,
        team=trace.team,
        after={"trace": trace.trace_id, "title": incident.title, "severity": severity, "labels": incident.labels},
    )
    _publish(incident)
    return incident


@transaction.atomic
def incident_note_add(*, actor: Actor, incident: Incident, text: str, span_id: str = "") -> IncidentNote:
    text = text.strip()
    if not text:
        raise ValidationError({"text": "A note needs some text."})
    if len(text) > 20_000:
        raise ValidationError({"text": "Notes are limited to 20,000 characters."})
    span_id = span_id.strip().lower()
    if (
        span_id
        and not Span.objects.filter(
            team_id=incident.team_id, trace_id=incident.trace.trace_id, span_id=span_id
        ).exists()
    ):
        raise ValidationError({"span_id": "That step is not part of the incident's trace."})
    note = IncidentNote.objects.create(
        incident=incident, author=actor.user, author_label=actor.label, text=text, span_id=span_id
    )
    audit_record(
        actor=actor,
        action="incident.note",
        obj=incident,
        team=incident.team,
        after={"note": text[:500], **({"span": span_id} if span_id else {})},
    )
    _publish(incident)
    return note


@transaction.atomic
def incident_update(
    *,
    actor: Actor,
    incident: Incident,
    title: str | None = None,
    severity: str | None = None,
    labels: Any = None,
    status: str | None = None,
) -> Incident:
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    before = {"title": locked.title, "severity": locked.severity, "labels": locked.labels, "status": locked.status}
    if title is not None:
        if not title.strip():
            raise ValidationError({"title": "The title cannot be empty."})
        locked.title = title.strip()[:200]
    if severity is not None:
        if severity not in Severity.values:
            raise ValidationError({"severity": f"Severity must be one of {', '.join(Severity.values)}."})
        locked.severity = severity
    if labels is not None:
        locked.labels = _labels(labels)
    if status is not None:
        if status not in IncidentStatus.values:
            raise ValidationError({"status": "Status must be open or resolved."})
        locked.status = status
        locked.resolved_at = timezone.now() if status == IncidentStatus.RESOLVED else None
    locked.save()
    after = {"title": locked.title, "severity": locked.severity, "labels": locked.labels, "status": locked.status}
    if after != before:
        audit_record(actor=actor, action="incident.update", obj=locked, team=locked.team, before=before, after=after)
        _publish(locked)
    return locked


@transaction.atomic
def incident_link(*, actor: Actor, incident: Incident, trace: Trace, unlink: bool = False) -> Incident:
    if trace.team_id != incident.team_id:
        raise ValidationError("Only traces of the incident's team can be linked.")
    if trace.pk == incident.trace_id:
        raise ValidationError("That is the incident's own trace.")
    linked = incident.related.filter(pk=trace.pk).exists()
    if unlink:
        if not linked:
            raise ValidationError("That trace is not linked to this incident.")
        incident.related.remove(trace)
    else:
        if linked:
            raise ValidationError(f"Trace {trace.trace_id} is already linked to this incident.")
        incident.related.add(trace)
    _flag_traces([trace.pk])
    audit_record(
        actor=actor,
        action="incident.unlink" if unlink else "incident.link",
        obj=incident,
        team=incident.team,
        after={"trace": trace.trace_id},
    )
    _publish(incident)
    return incident


def _flag_traces(trace_ids: list[int]) -> None:
    """A trace that is an incident's, or linked to one, is flagged (and kept past retention)."""
    involved = Q(incidents__isnull=False) | Q(related_incidents__isnull=False)
    flagged = set(Trace.objects.filter(involved, pk__in=trace_ids).values_list("pk", flat=True))
    Trace.objects.filter(pk__in=flagged).update(incident=True)
    Trace.objects.filter(pk__in=set(trace_ids) - flagged).update(incident=False)


def _publish(incident: Incident) -> None:
    live.publish(
        {"type": "incident.changed", "incident": incident.pk},
        team_id=incident.team_id,
        topics=[f"trace.{incident.trace_id}"],
    )


# --- Retention --------------------------------------------------------------------------------


def traces_purge_batch(*, batch: int = 200, now: Any = None) -> int:
    """Delete up to ``batch`` traces (spans and summary) that ended before the retention
    window; traces of incidents are kept. Returns how many traces were deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.COCKPIT["TRACE_RETENTION_DAYS"])
    with transaction.atomic():
        old = list(
            Trace.objects.select_for_update(skip_locked=True)
            .filter(ended_at__lt=cutoff, incident=False)
            .order_by("ended_at")
            .values_list("id", "team_id", "trace_id")[:batch]
        )
        if not old:
            return 0
        by_team: dict[int, list[str]] = {}
        for _, team_id, trace_id in old:
            by_team.setdefault(team_id, []).append(trace_id)
        for team_id, trace_ids in by_team.items():
            Span.objects.filter(team_id=team_id, trace_id__in=trace_ids).delete()
        Trace.objects.filter(id__in=[pk for pk, _, _ in old]).delete()
    return len(old)
