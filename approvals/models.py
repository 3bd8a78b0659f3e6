"""Approvals: Cedar policies (immutable versions), approval requests with their state machine,
escalation policies (levels L1–L4 with SLAs and approver groups) and notifications."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pgtrigger
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone

from cockpit.models import Team
from fleet.models import Agent, IllegalTransition, Risk, Run

GLOBAL_SCOPE = "global"


def team_scope(team: Team | int) -> str:
    return f"team:{team.pk if isinstance(team, Team) else team}"


# --- Policies ---------------------------------------------------------------------------------


class Policy(models.Model):
    """One immutable version of a policy set, in Cedar: the global set, or a team's own.

    A team's requests are judged by the active global set and the team's active set together
    (any ``forbid`` wins; something must ``permit``). Editing means saving a new version."""

    scope = models.CharField(max_length=40, help_text='"global" or "team:<id>"')
    team = models.ForeignKey(Team, on_delete=models.PROTECT, null=True, blank=True, related_name="policies")
    version = models.PositiveIntegerField()
    source = models.TextField()
    comment = models.TextField(blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    author_label = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["scope", "-version"]
        constraints = [models.UniqueConstraint(fields=["scope", "version"], name="policy_version_per_scope")]
        triggers = [pgtrigger.Protect(name="policy_immutable", operation=pgtrigger.Update | pgtrigger.Delete)]

    def __str__(self) -> str:
        return f"{self.scope_label} policy v{self.version}"

    @property
    def scope_label(self) -> str:
        return "Global" if self.team_id is None else str(self.team)

    @property
    def ref(self) -> str:
        """How decisions cite it: "global v3" or "support v2"."""
        return f"{self.team.slug if self.team is not None else 'global'} v{self.version}"


class ActivePolicy(models.Model):
    """Which version of each scope is in force (saving a version activates it; an older one can
    be made active again)."""

    scope = models.CharField(max_length=40, unique=True)
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, related_name="+")
    activated_at = models.DateTimeField(default=timezone.now)
    activated_by_label = models.CharField(max_length=200)


# --- Escalation -------------------------------------------------------------------------------


class OnExpiry(models.TextChoices):
    REJECT = "reject", "Reject the action (the agent takes its rejection path)"
    CANCEL_RUN = "cancel_run", "Cancel the whole run"


class EscalationPolicy(models.Model):
    """Who decides a team's approval requests, and how fast. The most specific policy applies:
    agent and risk, then agent, then risk, then the team's default (neither)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="escalation_policies")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    risk = models.CharField(max_length=10, choices=Risk.choices, blank=True)
    name = models.CharField(max_length=120)
    on_expiry = models.CharField(max_length=12, choices=OnExpiry.choices, default=OnExpiry.REJECT)
    # Separation of duties: whoever started a run may not approve its actions.
    separation_of_duties = models.BooleanField(default=True)

    class Meta:
        ordering = ["team__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["team", "agent", "risk"],
                condition=Q(agent__isnull=False),
                name="escalation_policy_unique_agent",
            ),
            models.UniqueConstraint(
                fields=["team", "risk"], condition=Q(agent__isnull=True), name="escalation_policy_unique_team"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def specificity(self) -> int:
        return (2 if self.agent_id else 0) + (1 if self.risk else 0)


class EscalationLevel(models.Model):
    """Level N of a policy: who may decide (a group; empty: any approver of the team), how long
    they have (the SLA), and how they are told (email, a webhook, always the in-app toast)."""

    policy = models.ForeignKey(EscalationPolicy, on_delete=models.CASCADE, related_name="levels")
    level = models.PositiveSmallIntegerField()
    group = models.ForeignKey(Group, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    sla_seconds = models.PositiveIntegerField(default=900)
    channels = models.JSONField(default=list, blank=True, help_text='["email", "webhook"]')
    webhook_url = models.URLField(blank=True)
    webhook_secret = models.CharField(max_length=128, blank=True, help_text="HMAC-SHA256 key signing the webhook")

    class Meta:
        ordering = ["policy", "level"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "level"], name="escalation_level_unique"),
            models.CheckConstraint(condition=Q(level__gte=1, level__lte=4), name="escalation_level_1_4"),
        ]
        permissions = [("decide_at_level", "Decide approval requests at this escalation level")]

    def __str__(self) -> str:
        return f"L{self.level} of {self.policy}"

    @property
    def who(self) -> str:
        return self.group.name if self.group is not None else "any approver of the team"


# --- Requests ---------------------------------------------------------------------------------


class ApprovalKind(models.TextChoices):
    APPROVAL = "approval", "Approval (the action waits)"
    REVIEW = "review", "Review (the action was taken; a sample is checked afterwards)"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    APPROVED_WITH_EDITS = "approved_with_edits", "Approved with edits"
    REJECTED = "rejected", "Rejected"
    EXPIRED = "expired", "Expired"
    CANCELLED = "cancelled", "Cancelled"


DECIDED = (ApprovalStatus.APPROVED, ApprovalStatus.APPROVED_WITH_EDITS, ApprovalStatus.REJECTED)


class ApprovalRequest(models.Model):
    TRANSITIONS: ClassVar[dict[str, set[str]]] = {
        ApprovalStatus.PENDING: {
            ApprovalStatus.APPROVED,
            ApprovalStatus.APPROVED_WITH_EDITS,
            ApprovalStatus.REJECTED,
            ApprovalStatus.EXPIRED,
            ApprovalStatus.CANCELLED,
        },
    }

    kind = models.CharField(max_length=10, choices=ApprovalKind.choices, default=ApprovalKind.APPROVAL)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="approval_requests")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="approval_requests")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, null=True, blank=True, related_name="approval_requests")
    step_seq = models.PositiveIntegerField(null=True, blank=True)
    external_ref = models.CharField(max_length=200, blank=True)
    # What exactly would happen.
    action = models.CharField(max_length=160, help_text="the tool (or action) name")
    arguments = models.JSONField(default=dict, blank=True)
    edited_arguments = models.JSONField(null=True, blank=True)
    # Why the agent wants it, and how sure it is.
    reasoning = models.TextField(blank=True)
    reasoning_step = models.PositiveIntegerField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    risk = models.CharField(max_length=10, choices=Risk.choices, default=Risk.MEDIUM)
    # Why a human must decide.
    policy = models.ForeignKey(Policy, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    policy_decision = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    escalation_policy = models.ForeignKey(
        EscalationPolicy, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    level = models.PositiveSmallIntegerField(default=1)
    deadline = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    requested_by_label = models.CharField(max_length=200)
    # Who started the run (separation of duties).
    run_started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_by_label = models.CharField(max_length=200, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    callback_url = models.URLField(blank=True)
    # What an approval binds: SHA-256 of the canonical JSON of the action and the arguments that
    # will run (``cockpit.lib.actionhash``); checked again just before the action is carried out.
    action_hash = models.CharField(max_length=64, blank=True)
    # Tier 4 (Manual): the agent only proposes; the approver carries the action out and records
    # its result, which the run receives as the step's result.
    manual = models.BooleanField(default=False)
    result = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["deadline", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ApprovalStatus.values), name="approval_status_valid"),
            models.CheckConstraint(condition=Q(level__gte=1, level__lte=4), name="approval_level_1_4"),
            models.UniqueConstraint(
                fields=["team", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="approval_idempotency_per_team",
            ),
            models.UniqueConstraint(
                fields=["run", "step_seq"],
                condition=Q(run__isnull=False, kind="approval"),
                name="approval_one_per_step",
            ),
        ]
        indexes = [
            # The sweeper's query: pending requests by deadline.
            models.Index(fields=["deadline"], condition=Q(status="pending"), name="approval_pending_deadline"),
            # The queue: a team's pending requests by deadline.
            models.Index(fields=["team", "deadline"], condition=Q(status="pending"), name="approval_team_pending"),
            models.Index(fields=["agent", "action", "-created_at"], name="approval_agent_action"),
            # An external agent's execution report names the approval by its hash.
            models.Index(fields=["team", "action_hash"], condition=~Q(action_hash=""), name="approval_action_hash"),
        ]

    def __str__(self) -> str:
        return f"Approval #{self.pk}: {self.action}"

    @property
    def is_pending(self) -> bool:
        return self.status == ApprovalStatus.PENDING

    @property
    def final_arguments(self) -> dict[str, Any]:
        return self.edited_arguments if self.edited_arguments is not None else self.arguments

    @property
    def waited(self) -> timedelta:
        return (self.decided_at or timezone.now()) - self.created_at

    def transition_to(
        self, new: str, *, actor_label: str, reason: str = "", data: dict | None = None
    ) -> ApprovalEvent:
        if new not in self.TRANSITIONS.get(self.status, set()):
            raise IllegalTransition(f"This request is already {self.get_status_display().lower()}.")
        old = self.status
        self.status = new
        return ApprovalEvent(
            request=self,
            kind=ApprovalEvent.Kind.STATUS,
            old=old,
            new=new,
            actor_label=actor_label,
            reason=reason,
            data=data or {},
        )


class ApprovalEvent(models.Model):
    """Immutable history of a request: created, escalated, decided, expired, notified."""

    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        STATUS = "status", "Status"
        ESCALATED = "escalated", "Escalated"
        NOTIFIED = "notified", "Notified"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    old = models.CharField(max_length=40, blank=True)
    new = models.CharField(max_length=40, blank=True)
    actor_label = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        triggers = [pgtrigger.Protect(name="approvalevent_append_only", operation=pgtrigger.Update | pgtrigger.Delete)]


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook (Slack-compatible)"
    CALLBACK = "callback", "Callback to the requesting agent"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    """One message about one request at one level through one channel: the unique constraint is
    what makes "exactly one" hold when tasks are retried or the sweeper runs twice."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="notifications")
    level = models.PositiveSmallIntegerField()
    channel = models.CharField(max_length=10, choices=Channel.choices)
    status = models.CharField(max_length=10, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request", "level", "channel"], name="notification_once_per_level"),
        ]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(status__in=["pending", "sending"]), name="notification_unsent"
            )
        ]


class PromotionRule(models.Model):
    """When an agent has earned a higher tier: set by a team's admins, checked on its calibration
    page. Applying a suggested promotion is an audited admin action."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="promotion_rule")
    min_decisions = models.PositiveIntegerField(default=1000)
    min_unchanged_rate = models.DecimalField(max_digits=5, decimal_places=2, default=99)
    max_violations = models.PositiveIntegerField(default=0)
