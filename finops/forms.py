"""Forms of the FinOps pages: the dashboard's filters (time range, dimensions, grouping), the
chargeback export's choices, and the budget forms. They parse and type what the browser sends;
the rules of budgets are the services' to enforce (their ``ValidationError``s land on the same
field names)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import QuerySet
from django.utils import timezone

from cockpit.models import Team
from finops.models import DEFAULT_THRESHOLDS, Budget, BudgetAction, BudgetPeriod, BudgetScope
from finops.selectors import DIMENSIONS, Bucket, CostFilter
from fleet.forms import AgentChoiceField
from fleet.models import Agent

MAX_RANGE_DAYS = 400
RANGES = [
    ("today", "Today"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("month", "This month"),
    ("last-month", "Last month"),
    ("90d", "Last 90 days"),
    ("custom", "Custom dates"),
]
DEFAULT_RANGE = "30d"
GROUPINGS = [
    ("team", "Team"),
    ("agent", "Agent"),
    ("model", "Model"),
    ("workflow", "Workflow"),
    ("provider", "Provider"),
    ("tag", "Tag"),
]
# The dimension filters a URL may carry (query parameter = dimension name); all optional.
FILTER_FIELDS = ("team", "agent", "agent_version", "workflow", "model", "provider", "tag")


def _date_input() -> forms.DateInput:
    return forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


def _midnight(day: date) -> datetime:
    return timezone.make_aware(datetime(day.year, day.month, day.day))


@dataclass(frozen=True)
class Window:
    """A resolved time range: ``[since, until)`` in local midnights, its days and how to bucket."""

    key: str
    label: str
    since: datetime
    until: datetime
    first_day: date
    last_day: date  # inclusive

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def bucket(self) -> Bucket:
        if self.days <= 2:
            return "hour"
        if self.days <= 62:
            return "day"
        if self.days <= 200:
            return "week"
        return "month"

    @property
    def slug(self) -> str:
        """For file names: ``2026-11-01_2026-11-21``."""
        return f"{self.first_day:%Y-%m-%d}_{self.last_day:%Y-%m-%d}"


def resolve_window(key: str, *, today: date, since: date | None = None, until: date | None = None) -> Window:
    """The days a range choice covers, ending today (custom: the given days, both inclusive)."""
    label = dict(RANGES).get(key, key)
    if key == "today":
        first, last = today, today
    elif key in ("7d", "30d", "90d"):
        first, last = today - timedelta(days=int(key[:-1]) - 1), today
    elif key == "month":
        first, last = today.replace(day=1), today
    elif key == "last-month":
        last = today.replace(day=1) - timedelta(days=1)
        first = last.replace(day=1)
        label = f"{first:%B %Y}"
    else:
        first, last = since or today, until or today
        label = f"{first:%b %-d, %Y} – {last:%b %-d, %Y}" if first != last else f"{first:%b %-d, %Y}"
    return Window(key, label, _midnight(first), _midnight(last + timedelta(days=1)), first, last)


class CostFilterForm(forms.Form):
    """The dashboard's and the export's filters, all from the query string."""

    range = forms.ChoiceField(choices=RANGES, required=False, label="Period")
    since = forms.DateField(required=False, label="From", widget=_date_input())
    until = forms.DateField(required=False, label="To", widget=_date_input())
    team = forms.CharField(required=False, max_length=100)
    agent = forms.CharField(required=False, max_length=210)
    agent_version = forms.CharField(required=False, max_length=320, label="Agent version")
    workflow = forms.CharField(required=False, max_length=200)
    model = forms.CharField(required=False, max_length=200)
    provider = forms.CharField(required=False, max_length=100)
    tag = forms.CharField(required=False, max_length=200)
    group = forms.ChoiceField(choices=GROUPINGS, required=False, label="Group by")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("range"):
            data["range"] = "custom" if data.get("since") or data.get("until") else DEFAULT_RANGE
        if data["range"] == "custom":
            since: date | None = data.get("since")
            until: date | None = data.get("until")
            if since is None:
                raise ValidationError("Custom dates need a start day ('From').")
            if until is not None and until < since:
                raise ValidationError("'From' must not be after 'To'.")
            if ((until or timezone.localdate()) - since).days >= MAX_RANGE_DAYS:
                raise ValidationError(f"Choose at most {MAX_RANGE_DAYS} days.")
        return data

    def window(self, *, today: date | None = None) -> Window:
        data = self.cleaned_data
        return resolve_window(
            data["range"], today=today or timezone.localdate(), since=data.get("since"), until=data.get("until")
        )

    def dimension_filters(self) -> dict[str, str]:
        """The dimension filters given (name → key), in a stable order."""
        return {name: self.cleaned_data[name] for name in FILTER_FIELDS if self.cleaned_data.get(name)}

    def cost_filter(self, window: Window, teams_by_slug: dict[str, Team]) -> CostFilter:
        """``CostFilter`` for the selectors. A team that is not among the visible ones (unknown,
        or without cost access) matches nothing, exactly like a team without spend."""
        given = self.dimension_filters()
        teams: frozenset[int] = frozenset()
        if "team" in given:
            team = teams_by_slug.get(given["team"])
            teams = frozenset({team.pk if team else 0})

        def one(name: str) -> frozenset[str]:
            return frozenset({given[name]}) if name in given else frozenset()

        return CostFilter(
            since=window.since,
            until=window.until,
            teams=teams,
            agents=one("agent"),
            agent_versions=one("agent_version"),
            workflows=one("workflow"),
            models=one("model"),
            providers=one("provider"),
            tags=one("tag"),
        )


class ChargebackForm(CostFilterForm):
    """The CSV: which dimensions make a row, and the period of a row."""

    by = forms.MultipleChoiceField(
        choices=[(d, d.replace("_", " ")) for d in DIMENSIONS], required=False, label="One row per"
    )
    bucket = forms.ChoiceField(
        choices=[("month", "Month"), ("week", "Week"), ("day", "Day")], required=False, label="Period of a row"
    )

    def clean_by(self) -> list[str]:
        return self.cleaned_data.get("by") or ["team"]

    def clean_bucket(self) -> str:
        return self.cleaned_data.get("bucket") or "month"


# --- Budgets ----------------------------------------------------------------------------------

_SPLIT = re.compile(r"[\s,;]+")


class ThresholdsField(forms.CharField):
    """``"50, 80, 100"`` ⇄ ``[50, 80, 100]``."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return value

    def to_python(self, value: Any) -> list[int]:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return list(DEFAULT_THRESHOLDS)
        try:
            found = sorted({int(part.rstrip("%")) for part in _SPLIT.split(text) if part})
        except ValueError:
            raise ValidationError("Whole percentages separated by commas, e.g. 50, 80, 100.") from None
        if not found or any(t <= 0 or t > 1000 for t in found):
            raise ValidationError("Each threshold is between 1 and 1000 %.")
        return found


class EmailsField(forms.CharField):
    widget = forms.TextInput(attrs={"placeholder": "finance@example.com, owner@example.com"})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        emails = [part for part in _SPLIT.split(text or "") if part]
        for email in emails:
            try:
                validate_email(email)
            except ValidationError:
                raise ValidationError(f"{email} is not an email address.") from None
        return emails


class BudgetForm(forms.Form):
    """Create a budget (``scope`` and whom it covers are fixed afterwards) or change one."""

    name = forms.CharField(
        max_length=120, help_text="What finance and operators will see, e.g. “Claims team, monthly”."
    )
    scope = forms.ChoiceField(choices=BudgetScope.choices, initial=BudgetScope.TEAM, label="Applies to")
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(),
        required=False,
        to_field_name="slug",
        empty_label="—",
        help_text="Team and agent budgets name their team; workflow and tag budgets may leave it empty to "
        "cover every team.",
    )
    agent = AgentChoiceField(queryset=Agent.objects.none(), required=False, empty_label="—")
    workflow = forms.CharField(
        max_length=200, required=False, help_text="gen_ai.workflow.name as the spans carry it (workflow budgets)."
    )
    tag = forms.CharField(
        max_length=200, required=False, help_text="key=value, e.g. cockpit.cost_center=claims (tag budgets)."
    )
    period = forms.ChoiceField(choices=BudgetPeriod.choices, initial=BudgetPeriod.MONTH)
    limit_usd = forms.DecimalField(
        label="Limit (USD)",
        min_value=Decimal("0.01"),
        max_digits=14,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01", "placeholder": "1000.00"}),
    )
    thresholds = ThresholdsField(
        required=False,
        max_length=100,
        initial="50, 80, 100",
        label="Alert at (% of the limit)",
        help_text="One alert per threshold and period. At 100 % the action below applies.",
    )
    action = forms.ChoiceField(
        choices=BudgetAction.choices, initial=BudgetAction.PAUSE, label="At the limit", widget=forms.RadioSelect
    )
    alert_emails = EmailsField(required=False, label="Alert emails", help_text="Separate addresses with commas.")
    webhook_url = forms.URLField(required=False, label="Alert webhook URL", assume_scheme="https")
    webhook_secret = forms.CharField(
        required=False,
        max_length=200,
        label="Webhook signing secret",
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the current one.",
    )
    active = forms.BooleanField(required=False, initial=True, label="Active (enforced and alerting)")

    # Fields a budget keeps once created.
    FIXED = ("scope", "team", "agent")

    def __init__(
        self,
        *args: Any,
        teams: QuerySet[Team],
        agents: QuerySet[Agent],
        budget: Budget | None = None,
        **kwargs: Any,
    ) -> None:
        if budget is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                "name": budget.name,
                "scope": budget.scope,
                "team": budget.team.slug if budget.team else "",
                "agent": budget.agent_id,
                "workflow": budget.workflow,
                "tag": budget.tag,
                "period": budget.period,
                "limit_usd": budget.limit_usd.quantize(Decimal("0.01")),
                "thresholds": budget.sorted_thresholds,
                "action": budget.action,
                "alert_emails": budget.alert_emails,
                "webhook_url": budget.webhook_url,
                "active": budget.active,
            }
        super().__init__(*args, **kwargs)
        self.budget = budget
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = agents
        if budget is not None:
            for name in self.FIXED:
                self.fields[name].disabled = True
                self.fields[name].required = False
            self.fields["scope"].help_text = "Fixed once created: make another budget for another scope."
        else:
            del self.fields["active"]
            self.fields["webhook_secret"].help_text = "Signs each webhook call (HMAC-SHA256)."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.budget is not None:
            return data
        scope = data.get("scope")
        if scope in (BudgetScope.TEAM, BudgetScope.AGENT) and not data.get("team") and not data.get("agent"):
            self.add_error("team", "Choose the team this budget covers.")
        if scope == BudgetScope.AGENT and not data.get("agent"):
            self.add_error("agent", "Choose the agent this budget covers.")
        agent = data.get("agent")
        if scope == BudgetScope.AGENT and agent is not None and data.get("team") is None:
            data["team"] = agent.team
        return data

    def create_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "scope": data["scope"],
            "team": data.get("team"),
            "agent": data.get("agent") if data["scope"] == BudgetScope.AGENT else None,
            "workflow": data.get("workflow", ""),
            "tag": data.get("tag", ""),
            "period": data["period"],
            "limit_usd": data["limit_usd"],
            "thresholds": data["thresholds"],
            "action": data["action"],
            "alert_emails": data["alert_emails"],
            "webhook_url": data["webhook_url"],
            "webhook_secret": data["webhook_secret"],
        }

    def changes(self) -> dict[str, Any]:
        """What an edit changes (the secret only when a new one is typed)."""
        assert self.budget is not None
        data = self.cleaned_data
        wanted = {
            "name": data["name"],
            "period": data["period"],
            "limit_usd": data["limit_usd"],
            "thresholds": data["thresholds"],
            "action": data["action"],
            "alert_emails": data["alert_emails"],
            "webhook_url": data["webhook_url"],
            "active": data["active"],
        }
        if self.budget.scope == BudgetScope.WORKFLOW:
            wanted["workflow"] = data["workflow"]
        if self.budget.scope == BudgetScope.TAG:
            wanted["tag"] = data["tag"]
        if data["webhook_secret"]:
            wanted["webhook_secret"] = data["webhook_secret"]
        current = self.budget
        changed = {}
        for key, value in wanted.items():
            before = getattr(current, key)
            if key == "limit_usd":
                if Decimal(value) != before:
                    changed[key] = value
            elif key == "thresholds":
                if sorted(value) != current.sorted_thresholds:
                    changed[key] = value
            elif value != before:
                changed[key] = value
        return changed


class BudgetRaiseForm(forms.Form):
    limit_usd = forms.DecimalField(
        label="New limit (USD)",
        min_value=Decimal("0.01"),
        max_digits=14,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01"}),
    )
    reason = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say why the budget is raised."},
        help_text="Kept in the audit log and shown to operators of the resumed runs.",
    )
    resume_runs = forms.BooleanField(required=False, initial=True, label="Resume the runs this budget paused")

    def __init__(self, *args: Any, budget: Budget, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["limit_usd"].widget.attrs["placeholder"] = f"more than {budget.limit_usd:,.2f}"
