"""The span store: spans as agents sent them (with typed columns read from their attributes),
one summary row per trace kept up to date at ingest, agents seen in spans but not (yet) in the
fleet, and incidents.

Spans are written in bulk and never updated, except to link them to an agent adopted later. Their
foreign keys carry no database constraint: a span may name a run or agent that is deleted later,
and checking a constraint per row would slow bulk writes down for nothing (the link is checked
when the span is stored). Old traces are deleted by the retention sweep (``traces.services``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from cockpit.models import Team
from traces.semconv import SpanType

SPAN_TYPE_CHOICES = [(t, t) for t in SpanType.ALL]


class StatusCode(models.IntegerChoices):
    UNSET = 0, "Unset"
    OK = 1, "OK"
    ERROR = 2, "Error"


class SpanKind(models.IntegerChoices):
    UNSPECIFIED = 0, "Unspecified"
    INTERNAL = 1, "Internal"
    SERVER = 2, "Server"
    CLIENT = 3, "Client"
    PRODUCER = 4, "Producer"
    CONSUMER = 5, "Consumer"


class Span(models.Model):
    id = models.BigAutoField(primary_key=True)
    team = models.ForeignKey(Team, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+")
    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True)
    name = models.CharField(max_length=300)
    kind = models.PositiveSmallIntegerField(choices=SpanKind.choices, default=SpanKind.INTERNAL)
    span_type = models.CharField(max_length=12, choices=SPAN_TYPE_CHOICES, default=SpanType.OTHER)
    start_time = models.DateTimeField()
    end_time = models.DateTimeField()
    duration_us = models.BigIntegerField()
    status_code = models.PositiveSmallIntegerField(choices=StatusCode.choices, default=StatusCode.UNSET)
    status_message = models.TextField(blank=True)
    error_type = models.CharField(max_length=200, blank=True)
    service_name = models.CharField(max_length=200, blank=True)
    scope_name = models.CharField(max_length=200, blank=True)
    agent = models.ForeignKey(
        "fleet.Agent",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    agent_key = models.CharField(max_length=200, blank=True, help_text="gen_ai.agent.id as sent")
    agent_name = models.CharField(max_length=200, blank=True)
    agent_version = models.CharField(max_length=100, blank=True)
    run = models.ForeignKey(
        "fleet.Run",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    conversation_id = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cache_read_tokens = models.BigIntegerField(null=True, blank=True)
    cache_write_tokens = models.BigIntegerField(null=True, blank=True)
    reasoning_tokens = models.BigIntegerField(null=True, blank=True)
    input_audio_tokens = models.BigIntegerField(null=True, blank=True)
    output_audio_tokens = models.BigIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    tool_name = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict)
    events = models.JSONField(default=list)
    links = models.JSONField(default=list)
    resource = models.JSONField(default=dict)
    truncated = models.BooleanField(default=False, help_text="some value was cut to the size limits")
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "trace_id", "span_id"], name="traces_span_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.span_id})"

    @property
    def is_error(self) -> bool:
        return self.status_code == StatusCode.ERROR

    @property
    def duration_ms(self) -> float:
        return self.duration_us / 1000

    @property
    def unpriced(self) -> bool:
        """A model call with usage and no known price: its cost is unknown, not zero."""
        return (
            self.cost is None
            and self.span_type in ("llm", "embedding")
            and bool(self.model)
            and bool(self.input_tokens or self.output_tokens)
        )


class TraceStatus(models.TextChoices):
    """The outcome of the trace's root span; ``open`` until the root span has arrived (the
    work may still be going on). Errors further down, retried or not, are ``error_count``."""

    OPEN = "open", "Open"
    OK = "ok", "OK"
    ERROR = "error", "Error"


class Trace(models.Model):
    """One row per trace, maintained as its spans arrive: what the trace list shows and filters."""

    id = models.BigAutoField(primary_key=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_index=False, related_name="+")
    trace_id = models.CharField(max_length=32)
    root_name = models.CharField(max_length=300, blank=True, help_text="empty until the root span arrives")
    root_span_id = models.CharField(max_length=16, blank=True)
    root_type = models.CharField(max_length=12, blank=True)
    service_name = models.CharField(max_length=200, blank=True)
    agent = models.ForeignKey(
        "fleet.Agent",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    agent_name = models.CharField(max_length=200, blank=True)
    agent_key = models.CharField(max_length=200, blank=True)
    run = models.ForeignKey(
        "fleet.Run", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False, related_name="+"
    )
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    duration_us = models.BigIntegerField(default=0)
    span_count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    llm_count = models.PositiveIntegerField(default=0)
    tool_count = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    status = models.CharField(max_length=8, choices=TraceStatus.choices, default=TraceStatus.OPEN)
    model_names = models.TextField(blank=True, help_text='models used, as "|model|model|"')
    search = models.TextField(blank=True, help_text="span and tool names, lower case, one per line")
    incident = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "trace_id"], name="traces_trace_unique"),
        ]
        indexes = [
            models.Index(fields=["team", "-started_at", "-id"], name="traces_trace_team_started"),
            models.Index(fields=["-started_at", "-id"], name="traces_trace_started"),
            models.Index(fields=["agent", "-started_at"], name="traces_trace_agent_started"),
            models.Index(fields=["ended_at"], name="traces_trace_ended"),
        ]

    def __str__(self) -> str:
        return self.root_name or self.trace_id

    @property
    def duration_ms(self) -> float:
        return self.duration_us / 1000

    @property
    def title(self) -> str:
        if self.root_name:
            return self.root_name
        if self.run_id is not None:  # a run's root span is sent when the run ends
            return f"run #{self.run_id} (in progress)"
        return f"trace {self.trace_id[:8]}… (root span not received)"

    @property
    def model_list(self) -> list[str]:
        return [m for m in self.model_names.split("|") if m]

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class DiscoveredAgent(models.Model):
    """An agent that sends spans but is not in the fleet: a shadow agent, until adopted."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200, help_text="gen_ai.agent.id, or the name when there is no id")
    name = models.CharField(max_length=200, blank=True)
    service_name = models.CharField(max_length=200, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    span_count = models.BigIntegerField(default=0)
    adopted_as = models.ForeignKey(
        "fleet.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="discovered_as"
    )
    adopted_at = models.DateTimeField(null=True, blank=True)
    adopted_by_label = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "key"], name="traces_discovered_unique"),
        ]

    def __str__(self) -> str:
        return self.name or self.key

    @property
    def label(self) -> str:
        return self.name or self.key


class IncidentStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Severity(models.TextChoices):
    SEV1 = "sev1", "SEV1 — critical"
    SEV2 = "sev2", "SEV2 — major"
    SEV3 = "sev3", "SEV3 — minor"


class Incident(models.Model):
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="incidents")
    trace = models.ForeignKey(Trace, on_delete=models.PROTECT, related_name="incidents")
    title = models.CharField(max_length=200)
    severity = models.CharField(max_length=4, choices=Severity.choices, default=Severity.SEV3)
    status = models.CharField(max_length=10, choices=IncidentStatus.choices, default=IncidentStatus.OPEN)
    labels = models.JSONField(default=list, blank=True)
    related = models.ManyToManyField(Trace, blank=True, related_name="related_incidents")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_label = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["team", "status", "-created_at"], name="traces_incident_team")]

    def __str__(self) -> str:
        return self.title


class IncidentNote(models.Model):
    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    author_label = models.CharField(max_length=200)
    text = models.TextField()
    span_id = models.CharField(max_length=16, blank=True, help_text="the span the note is about, if any")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text[:60]
