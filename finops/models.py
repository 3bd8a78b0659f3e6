"""FinOps state: prices Cockpit uses instead of the library's, hourly cost rollups kept at
ingest, budgets with their running spend, the alerts they raised, and stored forecasts.

* ``PriceOverride`` — an admin's price for a model (self-hosted, negotiated), in force from its
  ``effective_from``; the newest override in force at a span's time wins over ``genai-prices``.
* ``CostRollup`` — one row per (hour, team, agent, agent version, workflow, model, provider,
  tag), upserted in the span store's transaction (``finops.rollups``), and ``CostRollupDay``,
  the same per day. Dashboards read these, never spans; ``finops_reconcile`` proves they equal
  the spans they summarise. Key columns are never NULL (``""`` / ``0`` stand for "none"), so
  one ``ON CONFLICT`` target fits every row.
* ``Budget`` — a spending limit on a scope (everything, a team, an agent, a workflow, a tag)
  per period (day, week, month, or each run), with soft thresholds and the action at the cap.
* ``BudgetSpend`` — the running spend of one budget in one period (the compact counter the
  budget guard reads before every step); ``BudgetReservation`` — the worst-case cost of an LLM
  call in flight against it, so that concurrent calls cannot together pass the cap.
* ``BudgetAlert`` — a threshold crossed (or projected to be) once per budget, period and
  threshold; ``BudgetNotification`` — its delivery through one channel, once.
* ``Forecast`` — the latest projection of a team's or agent's spend to the end of the period.

Models do no I/O beyond their own rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from cockpit.models import Team

DEFAULT_THRESHOLDS = [50, 80, 100]


def default_thresholds() -> list[int]:
    return list(DEFAULT_THRESHOLDS)


# --- Prices -----------------------------------------------------------------------------------


# The rates an override may leave empty (then the input or output price applies).
OPTIONAL_RATES = (
    "cache_read_per_mtok",
    "cache_write_per_mtok",
    "reasoning_per_mtok",
    "input_audio_per_mtok",
    "output_audio_per_mtok",
)


class PriceOverride(models.Model):
    """A price per million tokens for ``model`` (as spans name it), for one provider or any.

    Several rows for one model form its price history: at time *t* the row with the latest
    ``effective_from`` ≤ *t* applies (a provider-specific row beats a provider-less one).
    """

    model = models.CharField(max_length=200, help_text="model name as spans report it, e.g. llama-3.1-70b")
    provider = models.CharField(
        max_length=100, blank=True, help_text="gen_ai.provider.name (e.g. openai); empty = any provider"
    )
    effective_from = models.DateTimeField(default=timezone.now)
    input_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million input tokens")
    output_per_mtok = models.DecimalField(max_digits=14, decimal_places=6, help_text="USD per million output tokens")
    cache_read_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million cached input tokens read; empty = the input price",
    )
    cache_write_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million input tokens written to the cache; empty = the input price",
    )
    reasoning_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million reasoning tokens, where priced apart; empty = the output price",
    )
    input_audio_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million audio input tokens; empty = the input price",
    )
    output_audio_per_mtok = models.DecimalField(
        max_digits=14,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million audio output tokens; empty = the output price",
    )
    note = models.TextField(blank=True, help_text="why (contract, self-hosted estimate, …)")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "provider", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "provider", "effective_from"], name="priceoverride_unique"),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0, output_per_mtok__gte=0), name="priceoverride_not_negative"
            ),
            *(
                models.CheckConstraint(
                    condition=Q(**{f"{rate}__isnull": True}) | Q(**{f"{rate}__gte": 0}),
                    name=f"priceoverride_{rate}_not_negative",
                    violation_error_message="A price cannot be negative.",
                )
                for rate in OPTIONAL_RATES
            ),
        ]

    def __str__(self) -> str:
        where = f"{self.provider}/" if self.provider else ""
        return f"{where}{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


# --- Rollups ----------------------------------------------------------------------------------

ROLLUP_KEY = ("hour", "team_id", "agent_id", "agent_key", "agent_version", "workflow", "model", "provider", "tag")
ROLLUP_SUMS = (
    "cost",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "spans",
    "llm_spans",
    "errors",
    "priced",
    "unpriced",
    "error_cost",
    "retries",
    "retry_cost",
)


class RollupColumns(models.Model):
    """The dimensions and sums both rollup tables share."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_index=False, related_name="+")
    agent_id = models.BigIntegerField(default=0)
    agent_key = models.CharField(max_length=200, blank=True)
    agent_version = models.CharField(max_length=100, blank=True)
    workflow = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    tag = models.CharField(max_length=200, blank=True)
    cost = models.DecimalField(default=Decimal(0), max_digits=18, decimal_places=6)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    spans = models.BigIntegerField(default=0)
    llm_spans = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0, help_text="spans with status ERROR")
    priced = models.BigIntegerField(default=0, help_text="spans with a cost")
    unpriced = models.BigIntegerField(default=0, help_text="LLM spans with usage but no known price")
    error_cost = models.DecimalField(
        default=Decimal(0), help_text="cost of failed spans", max_digits=18, decimal_places=6
    )
    retries = models.BigIntegerField(default=0, help_text="extra attempts (cockpit.attempts − 1)")
    retry_cost = models.DecimalField(
        default=Decimal(0), help_text="cost of spans that needed retries", max_digits=18, decimal_places=6
    )

    class Meta:
        abstract = True


class CostRollup(RollupColumns):
    """Cost and usage of one team's spans in one hour (by their start time, UTC), per dimension.

    ``agent_id`` is the fleet agent's pk (0: the spans name no agent of the fleet — then
    ``agent_key`` carries the name they sent); ``workflow`` is ``gen_ai.workflow.name`` (the
    managed runtime sets it to the agent's entrypoint); ``tag`` is ``key=value`` of the tag
    attributes (``COCKPIT_FINOPS_TAG_KEYS``, default ``cockpit.cost_center``) found on the span or
    its resource, several joined with ``;``. Tokens count leaf spans only (LLM, tool, …), as
    the trace summary does; ``cost`` is the sum of priced spans, ``unpriced`` counts the LLM
    spans with usage but no price (their cost is unknown, not zero).
    """

    hour = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=list(ROLLUP_KEY), name="costrollup_key")]
        indexes = [
            models.Index(fields=["team", "hour"], name="costrollup_team_hour"),
            models.Index(fields=["hour"], name="costrollup_hour"),
            models.Index(fields=["agent_id", "hour"], name="costrollup_agent_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h team {self.team_id} {self.model or '-'}: ${self.cost}"


class CostRollupDay(RollupColumns):
    """The same per day: ``day`` is the start of a calendar day in ``TIME_ZONE``. Kept with the
    hourly rows (same batch, same transaction), so that ranges of weeks and months are read from
    24 times fewer rows; selectors read whole days here and the edges of a range from the hourly
    table. After a change of ``TIME_ZONE``, rebuild them (``finops_reprice`` over the range)."""

    day = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", *ROLLUP_KEY[1:]], name="costrollupday_key")]
        indexes = [
            models.Index(fields=["team", "day"], name="costrollupday_team_day"),
            models.Index(fields=["day"], name="costrollupday_day"),
        ]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} team {self.team_id} {self.model or '-'}: ${self.cost}"


# --- Budgets ----------------------------------------------------------------------------------


class BudgetScope(models.TextChoices):
    GLOBAL = "global", "Everything"
    TEAM = "team", "Team"
    AGENT = "agent", "Agent"
    WORKFLOW = "workflow", "Workflow"
    TAG = "tag", "Tag"


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day"
    WEEK = "week", "Week"
    MONTH = "month", "Month"
    RUN = "run", "Each run"


class BudgetAction(models.TextChoices):
    PAUSE = "pause", "Pause the affected runs"
    DEGRADE = "degrade", "Switch to the agent's cheaper fallback model"
    ALERT = "alert", "Alert only"


def period_bounds(period: str, at: datetime) -> tuple[str, datetime, datetime]:
    """The calendar period containing ``at`` (in ``TIME_ZONE``): its key, start and end."""
    local = timezone.localtime(at)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAY:
        return day.strftime("%Y-%m-%d"), day, day + timedelta(days=1)
    if period == BudgetPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}", start, start + timedelta(days=7)
    if period == BudgetPeriod.MONTH:
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
        return start.strftime("%Y-%m"), start, end
    raise ValueError(f"{period!r} is not a calendar period")


def run_period_key(run_id: int) -> str:
    return f"run:{run_id}"


class Budget(models.Model):
    """A limit on spend. ``team`` is required for team and agent scopes and optional for
    workflow and tag scopes (empty: across every team); a global budget has none. Thresholds
    are percentages of the limit; at 100 % the ``action`` applies (a hard cap, unless
    "alert only")."""

    name = models.CharField(max_length=120)
    scope = models.CharField(max_length=10, choices=BudgetScope.choices)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    agent = models.ForeignKey("fleet.Agent", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    workflow = models.CharField(max_length=200, blank=True, help_text="gen_ai.workflow.name")
    tag = models.CharField(max_length=200, blank=True, help_text="key=value, e.g. cockpit.cost_center=claims")
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    thresholds = models.JSONField(default=default_thresholds, help_text="percentages of the limit")
    action = models.CharField(max_length=8, choices=BudgetAction.choices, default=BudgetAction.PAUSE)
    alert_emails = models.JSONField(default=list, blank=True)
    webhook_url = models.URLField(blank=True)
    webhook_secret = models.CharField(max_length=200, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_label = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(scope__in=BudgetScope.values), name="budget_scope_valid"),
            models.CheckConstraint(condition=Q(period__in=BudgetPeriod.values), name="budget_period_valid"),
            models.CheckConstraint(condition=Q(action__in=BudgetAction.values), name="budget_action_valid"),
            models.CheckConstraint(condition=Q(limit_usd__gt=0), name="budget_limit_positive"),
            models.CheckConstraint(
                condition=~Q(scope__in=["team", "agent"]) | Q(team__isnull=False), name="budget_team_needs_team"
            ),
            models.CheckConstraint(
                condition=~Q(scope="agent") | Q(agent__isnull=False), name="budget_agent_needs_agent"
            ),
            models.CheckConstraint(condition=~Q(scope="workflow") | ~Q(workflow=""), name="budget_workflow_named"),
            models.CheckConstraint(condition=~Q(scope="tag") | ~Q(tag=""), name="budget_tag_named"),
            models.CheckConstraint(condition=~Q(scope="global") | Q(team__isnull=True), name="budget_global_no_team"),
        ]
        indexes = [
            models.Index(fields=["team"], condition=Q(active=True), name="budget_active_team"),
            models.Index(fields=["scope"], condition=Q(active=True, team__isnull=True), name="budget_active_org"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.scope in (BudgetScope.TEAM, BudgetScope.AGENT) and self.team_id is None:
            errors["team"] = "A team or agent budget names its team."
        if self.scope == BudgetScope.AGENT and self.agent_id is None:
            errors["agent"] = "An agent budget names its agent."
        if self.agent is not None and self.team_id is not None and self.agent.team_id != self.team_id:
            errors["agent"] = "This agent belongs to another team."
        if self.scope == BudgetScope.WORKFLOW and not self.workflow.strip():
            errors["workflow"] = "Name the workflow (gen_ai.workflow.name)."
        if self.scope == BudgetScope.TAG and "=" not in self.tag:
            errors["tag"] = "A tag is key=value, e.g. cockpit.cost_center=claims."
        if self.scope == BudgetScope.GLOBAL and self.team_id is not None:
            errors["team"] = "A global budget covers every team: leave the team empty."
        if self.limit_usd is not None and self.limit_usd <= 0:
            errors["limit_usd"] = "The limit must be more than zero."
        thresholds = self.thresholds
        if (
            not isinstance(thresholds, list)
            or not thresholds
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds)
        ):
            errors["thresholds"] = "Thresholds are whole percentages between 1 and 1000, e.g. 50, 80, 100."
        if not isinstance(self.alert_emails, list) or not all(isinstance(e, str) for e in self.alert_emails):
            errors["alert_emails"] = "A list of addresses."
        if errors:
            raise ValidationError(errors)

    @property
    def enforces(self) -> bool:
        """At the cap, runs are stopped (paused) or switched to a cheaper model."""
        return self.action != BudgetAction.ALERT

    @property
    def sorted_thresholds(self) -> list[int]:
        return sorted({int(t) for t in self.thresholds})

    def period_for(self, at: datetime, run_id: int | None = None) -> tuple[str, datetime | None, datetime | None]:
        if self.period == BudgetPeriod.RUN:
            if run_id is None:
                raise ValueError("a per-run budget needs the run")
            return run_period_key(run_id), None, None
        return period_bounds(self.period, at)

    def describe_scope(self) -> str:
        if self.scope == BudgetScope.GLOBAL:
            return "everything"
        if self.scope == BudgetScope.TEAM:
            return f"team {self.team}"
        if self.scope == BudgetScope.AGENT:
            return f"agent {self.agent}"
        where = f" in team {self.team}" if self.team_id else ""
        if self.scope == BudgetScope.WORKFLOW:
            return f"workflow {self.workflow}{where}"
        return f"tag {self.tag}{where}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "team": self.team_id,
            "agent": self.agent_id,
            "workflow": self.workflow,
            "tag": self.tag,
            "period": self.period,
            "limit_usd": str(self.limit_usd),
            "thresholds": self.thresholds,
            "action": self.action,
            "alert_emails": self.alert_emails,
            "webhook_url": self.webhook_url,
            "webhook_secret": "(set)" if self.webhook_secret else "",
            "active": self.active,
        }


class BudgetSpend(models.Model):
    """What a budget's scope has spent in one period: ``period`` is the key of the calendar
    period (``2026-03-14``, ``2026-W11``, ``2026-03``) or ``run:<id>`` for per-run budgets.

    Managed runs add each LLM call's cost as the call ends (settling its reservation); other
    spans add theirs as they are stored.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="spends")
    period = models.CharField(max_length=32)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    spent = models.DecimalField(default=Decimal(0), max_digits=18, decimal_places=6)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period"], name="budgetspend_once_per_period")]

    def __str__(self) -> str:
        return f"{self.budget} {self.period}: ${self.spent}"


class BudgetReservation(models.Model):
    """The worst-case cost (``amount``) of one LLM call of a managed run (step ``seq``), taken
    against a budget's spend before the call is made and settled to the real cost when it ends.

    A reservation counts while the worker that took it (``owner``) still holds the run's lease:
    a worker that dies stops renewing the lease, and its reservations stop counting when the
    lease runs out (the row itself is purged later; settling a stale row still charges the call,
    once)."""

    spend = models.ForeignKey(BudgetSpend, on_delete=models.CASCADE, related_name="reservations")
    run_id = models.BigIntegerField()
    seq = models.PositiveIntegerField()
    owner = models.CharField(max_length=200)
    amount = models.DecimalField(max_digits=18, decimal_places=6)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="budgetreservation_created")]
        constraints = [models.CheckConstraint(condition=Q(amount__gte=0), name="budgetreservation_amount_gte_0")]


class AlertKind(models.TextChoices):
    THRESHOLD = "threshold", "Threshold reached"
    PROJECTED = "projected", "Projected to exceed"


class BudgetAlert(models.Model):
    """A budget reached ``threshold`` % of its limit in ``period`` (or is projected to exceed
    it): raised once — the unique constraint holds under retries and concurrent ingest."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period = models.CharField(max_length=32)
    kind = models.CharField(max_length=10, choices=AlertKind.choices, default=AlertKind.THRESHOLD)
    threshold = models.PositiveIntegerField()
    spent = models.DecimalField(max_digits=18, decimal_places=6)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    projected = models.DecimalField(null=True, blank=True, max_digits=18, decimal_places=6)
    run_id = models.BigIntegerField(null=True, blank=True, help_text="per-run budgets: the run")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period", "kind", "threshold"], name="budgetalert_once"),
            models.CheckConstraint(condition=Q(kind__in=AlertKind.values), name="budgetalert_kind_valid"),
        ]
        indexes = [models.Index(fields=["budget", "-created_at"], name="budgetalert_recent")]

    def __str__(self) -> str:
        return f"{self.budget} {self.period} {self.kind} {self.threshold}%"

    @property
    def percent(self) -> float:
        return float(self.spent / self.limit_usd * 100) if self.limit_usd else 0.0


class NotificationChannel(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class BudgetNotification(models.Model):
    """One alert through one channel, delivered once (claimed by conditional update)."""

    alert = models.ForeignKey(BudgetAlert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.CharField(max_length=10, choices=NotificationChannel.choices)
    status = models.CharField(max_length=10, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "channel"], name="budgetnotification_once")]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(status__in=["pending", "sending"]), name="budgetnotification_unsent"
            )
        ]


# --- Forecasts --------------------------------------------------------------------------------


class Forecast(models.Model):
    """The latest projection of spend to the end of the current ``period`` for a team (``agent``
    empty) or one of its agents, recomputed hourly from the rollups. ``low``/``high`` bound the
    projected total (80 % interval); ``points`` are the hourly path ``[iso hour, mean, low,
    high]`` for charts."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey("fleet.Agent", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    computed_at = models.DateTimeField(default=timezone.now)
    spent_to_date = models.DecimalField(max_digits=18, decimal_places=6)
    projected_total = models.DecimalField(max_digits=18, decimal_places=6)
    low = models.DecimalField(max_digits=18, decimal_places=6)
    high = models.DecimalField(max_digits=18, decimal_places=6)
    method = models.CharField(max_length=60)
    points = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["team", "period"], condition=Q(agent__isnull=True), name="forecast_one_per_team"
            ),
            models.UniqueConstraint(
                fields=["team", "agent", "period"], condition=Q(agent__isnull=False), name="forecast_one_per_agent"
            ),
        ]

    def __str__(self) -> str:
        who = self.agent or self.team
        return f"{who} {self.period}: ${self.projected_total} (${self.low}–${self.high})"
