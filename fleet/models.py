"""Fleet: who the agents are (agents, immutable versions, tools, model providers) and what they
do (runs, their journaled steps, and the history of every run's state).

State machines live here (``Agent.transition_to``, ``Run.transition_to``): each refuses
illegal moves and returns the history row to save; services save it in their transaction.
Models do no I/O beyond their own rows.
"""

from __future__ import annotations

import re
import secrets
from decimal import Decimal
from typing import Any, ClassVar

import pgtrigger
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from cockpit.models import Team

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class IllegalTransition(ValidationError):
    pass


class AlreadyDecided(ValidationError):
    """A decision that can no longer be made: someone decided first, or the request expired, was
    withdrawn, or its run no longer waits for it. A conflict (409) wherever it surfaces."""


# --- Agents -----------------------------------------------------------------------------------


class Tier(models.IntegerChoices):
    FULL_AUTO = 1, "Full Auto"
    SUPERVISED = 2, "Supervised"
    ASSISTED = 3, "Assisted"
    MANUAL = 4, "Manual"


class AgentStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    QUARANTINED = "quarantined", "Quarantined"


class AgentKind(models.TextChoices):
    MANAGED = "managed", "Managed (runs on Cockpit's workers)"
    EXTERNAL = "external", "External (runs elsewhere, reports here)"


class DegradedMode(models.TextChoices):
    FALLBACK = "fallback", "Switch to the next model in the fallback chain"
    PAUSE = "pause", "Pause the run with the reason"


class Agent(models.Model):
    TRANSITIONS: ClassVar[dict[str, set[str]]] = {
        AgentStatus.ACTIVE: {AgentStatus.PAUSED, AgentStatus.QUARANTINED},
        AgentStatus.PAUSED: {AgentStatus.ACTIVE, AgentStatus.QUARANTINED},
        AgentStatus.QUARANTINED: {AgentStatus.ACTIVE, AgentStatus.PAUSED},
    }

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    slug = models.SlugField(max_length=80)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=10, choices=AgentKind.choices, default=AgentKind.MANAGED)
    entrypoint = models.CharField(
        max_length=120,
        blank=True,
        help_text="name of the registered agent function (managed agents)",
    )
    tier = models.PositiveSmallIntegerField(choices=Tier.choices, default=Tier.SUPERVISED)
    status = models.CharField(max_length=12, choices=AgentStatus.choices, default=AgentStatus.ACTIVE)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    degraded_mode = models.CharField(max_length=10, choices=DegradedMode.choices, default=DegradedMode.FALLBACK)
    current_version = models.ForeignKey(
        "AgentVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # Service-level objectives (admins edit them); the agent page compares actuals against them.
    slo_success_rate = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("95.00"))
    slo_p95_llm_seconds = models.FloatField(default=20.0)
    slo_p95_tool_seconds = models.FloatField(default=5.0)
    slo_cost_per_success = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    # Below this confidence an action needs a human (used by approval policy).
    confidence_threshold = models.FloatField(default=0.8)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "slug"], name="agent_slug_per_team"),
            models.CheckConstraint(condition=Q(tier__gte=1, tier__lte=4), name="agent_tier_1_4"),
            models.CheckConstraint(condition=Q(status__in=AgentStatus.values), name="agent_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=AgentKind.values), name="agent_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def accepts_runs(self) -> bool:
        return self.status == AgentStatus.ACTIVE

    def transition_to(self, new: str, *, actor_label: str, reason: str = "") -> AgentEvent:
        if new == self.status or new not in self.TRANSITIONS.get(self.status, set()):
            raise IllegalTransition(f"An agent cannot go from {self.status} to {new}.")
        event = AgentEvent(
            agent=self,
            kind=AgentEvent.Kind.STATUS,
            old=self.status,
            new=new,
            actor_label=actor_label,
            reason=reason,
        )
        self.status = new
        self.status_reason = reason
        self.status_changed_at = timezone.now()
        return event


class AgentEvent(models.Model):
    """Immutable history of an agent's status and tier."""

    class Kind(models.TextChoices):
        STATUS = "status", "Status"
        TIER = "tier", "Tier"
        VERSION = "version", "Version"
        SLO = "slo", "SLO targets"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    old = models.CharField(max_length=40, blank=True)
    new = models.CharField(max_length=40, blank=True)
    actor_label = models.CharField(max_length=200)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        triggers = [pgtrigger.Protect(name="agentevent_append_only", operation=pgtrigger.Update | pgtrigger.Delete)]


class AgentVersion(models.Model):
    """An immutable snapshot of how an agent runs. A change is a new version."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="versions")
    version = models.CharField(max_length=40)
    primary_model = models.CharField(max_length=160, help_text='"provider/model", e.g. "sim/sim-large"')
    fallback_models = models.JSONField(default=list, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_steps = models.PositiveIntegerField(default=50)
    run_budget = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="USD per run; empty = none"
    )
    prompts = models.JSONField(default=dict, blank=True)
    tools = models.JSONField(default=list, blank=True, help_text="names of the tools this version may call")
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["agent", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["agent", "version"], name="agentversion_unique")]
        triggers = [
            # Versions are immutable; deleting the agent's history is not an option either.
            pgtrigger.Protect(name="agentversion_immutable", operation=pgtrigger.Update | pgtrigger.Delete)
        ]

    def __str__(self) -> str:
        return f"{self.agent.name} {self.version}"

    def clean(self) -> None:
        if not SEMVER.match(self.version):
            raise ValidationError({"version": f"{self.version!r} is not a semantic version (like 1.4.0)."})
        for ref in [self.primary_model, *self.fallback_models]:
            if "/" not in ref:
                raise ValidationError({"primary_model": f'{ref!r} must be "provider/model".'})

    DIFF_FIELDS: ClassVar[list[str]] = [
        "primary_model",
        "fallback_models",
        "temperature",
        "max_steps",
        "run_budget",
        "prompts",
        "tools",
        "notes",
    ]

    def as_config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.DIFF_FIELDS}


# --- Tools and providers ----------------------------------------------------------------------


class Risk(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class Tool(models.Model):
    """A tool agents may call. Registered in code (``fleet.runtime.tool``) and mirrored here so
    policies, pages and the API can see it."""

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    side_effect = models.BooleanField(default=False, help_text="changes something outside Cockpit")
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.LOW)
    idempotent = models.BooleanField(default=True)
    timeout_seconds = models.FloatField(default=30.0)
    args_schema = models.JSONField(default=dict, blank=True)
    compensation = models.CharField(max_length=120, blank=True, help_text="tool that undoes this one")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=Q(risk__in=Risk.values), name="tool_risk_valid")]

    def __str__(self) -> str:
        return self.name


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, …)"
    ANTHROPIC = "anthropic", "Anthropic"
    SIMULATED = "simulated", "Simulated (no real model)"


class ModelProvider(models.Model):
    """Where model calls go. A model is named "<provider name>/<model>" in agent versions.

    The API key is never stored: ``api_key_env`` names the environment variable that holds it.
    """

    name = models.SlugField(max_length=60, unique=True)
    kind = models.CharField(max_length=12, choices=ProviderKind.choices)
    base_url = models.URLField(blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    timeout_seconds = models.FloatField(default=60.0)
    options = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def simulated(self) -> bool:
        return self.kind == ProviderKind.SIMULATED


def split_model_ref(ref: str) -> tuple[str, str]:
    """ "sim/sim-large" → ("sim", "sim-large"); the model part may itself contain "/"."""
    provider, _, model = ref.partition("/")
    return provider, model


# --- Runs -------------------------------------------------------------------------------------


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_RUN_STATUSES = (
    RunStatus.QUEUED,
    RunStatus.RUNNING,
    RunStatus.PAUSED,
    RunStatus.WAITING_APPROVAL,
)
FINAL_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class RunKind(models.TextChoices):
    MANAGED = "managed", "Managed"
    EXTERNAL = "external", "External"


def new_trace_id() -> str:
    return secrets.token_hex(16)


class Run(models.Model):
    TRANSITIONS: ClassVar[dict[str, set[str]]] = {
        RunStatus.QUEUED: {
            RunStatus.RUNNING,
            RunStatus.PAUSED,
            RunStatus.CANCELLED,
            RunStatus.FAILED,
        },
        RunStatus.RUNNING: {
            RunStatus.PAUSED,
            RunStatus.WAITING_APPROVAL,
            RunStatus.SUCCEEDED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        },
        RunStatus.PAUSED: {RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED},
        RunStatus.WAITING_APPROVAL: {
            RunStatus.RUNNING,
            RunStatus.PAUSED,
            RunStatus.FAILED,
            RunStatus.CANCELLED,
        },
        RunStatus.SUCCEEDED: set(),
        RunStatus.FAILED: set(),
        RunStatus.CANCELLED: set(),
    }

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="runs")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="runs")
    kind = models.CharField(max_length=10, choices=RunKind.choices)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_reason = models.TextField(blank=True)
    # Directives wait here until the runtime honours them at the next step boundary.
    pause_requested = models.BooleanField(default=False)
    cancel_requested = models.BooleanField(default=False)
    directive_reason = models.TextField(blank=True)
    input = models.JSONField(default=dict, blank=True)
    input_summary = models.TextField(blank=True)
    # Operator overrides applied from the next step: model, temperature, max_steps, budget, input.
    overrides = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal(0))
    unpriced_steps = models.PositiveIntegerField(default=0)
    step_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True)
    trace_id = models.CharField(max_length=32, default=new_trace_id, db_index=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    external_ref = models.CharField(max_length=200, blank=True)
    # Crash recovery: the worker executing the run holds a lease it keeps extending; the
    # sweeper re-enqueues running runs whose lease expired.
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    executions = models.PositiveIntegerField(default=0)
    # Set once the trace store is known to hold every span of the ended run (see
    # fleet.telemetry.reconcile); until then the spans sweep looks at it.
    spans_complete_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="run_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=RunKind.values), name="run_kind_valid"),
            models.UniqueConstraint(
                fields=["team", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="run_idempotency_per_team",
            ),
        ]
        indexes = [
            models.Index(fields=["team", "-created_at"], name="run_team_recent"),
            # Spans name an external run by its own id (gen_ai.conversation.id): traces.store.
            models.Index(fields=["team", "external_ref"], name="run_external_ref"),
            models.Index(fields=["agent", "-created_at"], name="run_agent_recent"),
            models.Index(fields=["status", "-created_at"], name="run_status_recent"),
            # What the sweeper looks at: running runs by lease, queued runs by age.
            models.Index(fields=["lease_expires_at"], condition=Q(status="running"), name="run_running_lease"),
            models.Index(fields=["created_at"], condition=Q(status="queued"), name="run_queued_age"),
            models.Index(
                fields=["ended_at"],
                condition=Q(kind="managed", ended_at__isnull=False, spans_complete_at__isnull=True),
                name="run_spans_incomplete",
            ),
        ]

    def __str__(self) -> str:
        return f"Run #{self.pk} of {self.agent.name}" if self.agent_id else f"Run #{self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_RUN_STATUSES

    @property
    def step_limit(self) -> int | None:
        """The most steps it may take: an operator's override, else its version's (an external
        run has no version, and no limit)."""
        override = (self.overrides or {}).get("max_steps")
        return override or (self.version.max_steps if self.version_id and self.version else None)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def effective_budget(self) -> Decimal | None:
        override = self.overrides.get("budget")
        if override is not None:
            return Decimal(str(override))
        return self.version.run_budget if self.version_id and self.version else None

    @property
    def budget_used_percent(self) -> float | None:
        budget = self.effective_budget
        if not budget:
            return None
        return float(min(Decimal(100), self.cost / budget * 100))

    @property
    def pending_directive(self) -> str | None:
        if self.cancel_requested and not self.is_final:
            return "cancel"
        if self.pause_requested and self.status in (
            RunStatus.RUNNING,
            RunStatus.QUEUED,
            RunStatus.WAITING_APPROVAL,
        ):
            return "pause"
        return None

    def can_transition_to(self, new: str) -> bool:
        return new in self.TRANSITIONS.get(self.status, set())

    def transition_to(
        self,
        new: str,
        *,
        actor_label: str,
        reason: str = "",
        actor_user: Any = None,
        data: dict | None = None,
    ) -> RunEvent:
        """Move to ``new`` or raise ``IllegalTransition``; returns the history row to save."""
        if not self.can_transition_to(new):
            raise IllegalTransition(f"A {self.get_status_display().lower()} run cannot become {new}.")
        old = self.status
        now = timezone.now()
        self.status = new
        self.status_reason = reason
        self.updated_at = now
        if new == RunStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new in FINAL_RUN_STATUSES:
            self.ended_at = now
            self.lease_owner, self.lease_expires_at = "", None
            self.pause_requested = False
        if new == RunStatus.PAUSED:
            self.pause_requested = False
        return RunEvent(
            run=self,
            kind=RunEvent.Kind.STATUS,
            from_status=old,
            to_status=new,
            actor_label=actor_label,
            actor_user=actor_user,
            reason=reason,
            data=data or {},
        )


class RunEvent(models.Model):
    """Immutable history of a run: status changes, directives, overrides, approvals, notes."""

    class Kind(models.TextChoices):
        STATUS = "status", "Status"
        DIRECTIVE = "directive", "Directive"
        OVERRIDE = "override", "Override"
        APPROVAL = "approval", "Approval"
        NOTE = "note", "Note"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    actor_label = models.CharField(max_length=200)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["run", "at"], name="runevent_run_at")]
        triggers = [pgtrigger.Protect(name="runevent_append_only", operation=pgtrigger.Update | pgtrigger.Delete)]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_status}→{self.to_status}" if self.kind == self.Kind.STATUS else self.kind


class StepKind(models.TextChoices):
    LLM = "llm", "LLM call"
    TOOL = "tool", "Tool call"
    APPROVAL = "approval", "Approval"
    DECISION = "decision", "Decision"
    CHECKPOINT = "checkpoint", "Checkpoint"


class StepStatus(models.TextChoices):
    STARTED = "started", "Started"
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Step(models.Model):
    """One journaled call of a run. ``(run, seq)`` is unique: a replay finds the step it is about
    to make already done and uses its output instead of making it again."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=10, choices=StepKind.choices)
    name = models.CharField(max_length=160)
    status = models.CharField(max_length=10, choices=StepStatus.choices, default=StepStatus.STARTED)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=60, blank=True)
    model = models.CharField(max_length=160, blank=True)
    simulated = models.BooleanField(default=False)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    input_audio_tokens = models.PositiveIntegerField(default=0)
    output_audio_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True
    )  # null: no price known ("unpriced")
    idempotency_key = models.CharField(max_length=80)
    compensates = models.PositiveIntegerField(null=True, blank=True, help_text="seq of the step this undoes")
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="step_seq_per_run"),
            models.CheckConstraint(condition=Q(kind__in=StepKind.values), name="step_kind_valid"),
            models.CheckConstraint(condition=Q(status__in=StepStatus.values), name="step_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.seq}. {self.kind} {self.name}"

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()
