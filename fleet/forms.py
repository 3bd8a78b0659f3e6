"""Forms of the fleet pages. They parse and type what the browser sends; the rules of the domain
(which transitions are legal, which models exist) are the services' to enforce, and their
``ValidationError``s land on the same field names."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from django import forms
from django.db.models import QuerySet

from cockpit.forms import FilterDateTimeField
from cockpit.models import Team
from fleet.models import (
    ACTIVE_RUN_STATUSES,
    Agent,
    AgentStatus,
    AgentVersion,
    RunKind,
    RunStatus,
    Tier,
)
from fleet.selectors import RunCursor
from fleet.services import OVERRIDABLE

ANY_ACTIVE = "active"  # a status filter: every run that has not ended
STATUS_FILTERS = {ANY_ACTIVE: list(ACTIVE_RUN_STATUSES), **{s: [s] for s in RunStatus.values}}
REASON_MAX = 2000


def _local_datetime() -> forms.DateTimeInput:
    return forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class AgentChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} · {obj.team.name}"


class RunFilterForm(forms.Form):
    agent = AgentChoiceField(queryset=Agent.objects.none(), required=False, empty_label="All agents")
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", to_field_name="slug"
    )
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status"), (ANY_ACTIVE, "Active (not ended)"), *RunStatus.choices],
    )
    kind = forms.ChoiceField(required=False, choices=[("", "Any kind"), *RunKind.choices])
    since = FilterDateTimeField(required=False, label="From", widget=_local_datetime())
    until = FilterDateTimeField(required=False, label="To", widget=_local_datetime())
    after = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, teams: QuerySet[Team], agents: QuerySet[Agent], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = agents

    def clean_after(self) -> RunCursor | None:
        raw = self.cleaned_data["after"]
        if not raw:
            return None
        try:
            return RunCursor.decode(raw)
        except ValueError:
            raise forms.ValidationError("This page link is broken; start again from the newest runs.") from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since: datetime | None = data.get("since")
        until: datetime | None = data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'From' must be before 'To'.")
        return data

    def page_filters(self) -> dict[str, Any]:
        """The cleaned filters as ``fleet.selectors.runs_page`` arguments."""
        data = self.cleaned_data
        return {
            "team": data["team"],
            "agent": data["agent"],
            "statuses": STATUS_FILTERS.get(data["status"], []),
            "kind": data["kind"],
            "since": data["since"],
            "until": data["until"],
            "after": data["after"],
        }


class ReasonForm(forms.Form):
    """Pause and resume: the reason is optional (the service words a default one)."""

    reason = forms.CharField(required=False, max_length=REASON_MAX)


class CancelForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": "Say why the run is cancelled."},
    )


class AgentStatusForm(forms.Form):
    status = forms.ChoiceField(choices=AgentStatus.choices, widget=forms.HiddenInput)
    reason = forms.CharField(required=False, max_length=REASON_MAX, widget=forms.Textarea(attrs={"rows": 3}))


class AgentTierForm(forms.Form):
    tier = forms.TypedChoiceField(
        coerce=int, choices=[(tier.value, f"Tier {tier.value} · {tier.label}") for tier in Tier]
    )
    reason = forms.CharField(
        max_length=REASON_MAX,
        error_messages={"required": "Say why the tier changes; it is kept in the audit log."},
    )


class AgentSloForm(forms.Form):
    success_rate = forms.DecimalField(
        label="Success rate (%)", max_digits=5, decimal_places=2, min_value=0, max_value=100
    )
    p95_llm_seconds = forms.FloatField(label="p95 LLM call (seconds)")
    p95_tool_seconds = forms.FloatField(label="p95 tool call (seconds)")
    cost_per_success = forms.DecimalField(
        label="Cost per successful run (USD)",
        required=False,
        max_digits=14,
        decimal_places=6,
        help_text="Leave empty for no cost target.",
    )

    @classmethod
    def for_agent(cls, agent: Agent) -> AgentSloForm:
        return cls(
            initial={
                "success_rate": agent.slo_success_rate,
                "p95_llm_seconds": agent.slo_p95_llm_seconds,
                "p95_tool_seconds": agent.slo_p95_tool_seconds,
                "cost_per_success": agent.slo_cost_per_success,
            }
        )


class RunOverrideForm(forms.Form):
    """What to change from the run's next step; empty fields are left as they are."""

    model = forms.CharField(required=False, max_length=160, help_text='"provider/model"')
    temperature = forms.FloatField(required=False)
    max_steps = forms.IntegerField(required=False, label="Max steps")
    budget = forms.DecimalField(required=False, max_digits=14, decimal_places=6, label="Budget (USD)")
    input = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text="A JSON object that replaces the run's input. Leave empty to keep it.",
    )
    reason = forms.CharField(required=False, max_length=REASON_MAX)
    remove = forms.MultipleChoiceField(
        required=False,
        choices=[(key, key.replace("_", " ")) for key in OVERRIDABLE],
        label="Remove overrides",
        help_text="Back to the agent version's setting from the next step.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        both = [key for key in data.get("remove") or () if data.get(key) not in (None, "")]
        if both:
            raise forms.ValidationError(f"Either set or remove {', '.join(both)}, not both.")
        if not self.changes():
            raise forms.ValidationError("Fill in at least one setting to change, or one override to remove.")
        return data

    def changes(self) -> dict[str, Any]:
        changed = {key: self.cleaned_data[key] for key in OVERRIDABLE if self.cleaned_data.get(key) not in (None, "")}
        return changed | dict.fromkeys(self.cleaned_data.get("remove") or ())


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.version} · {obj.created_at:%Y-%m-%d}"


class VersionDiffForm(forms.Form):
    a = VersionChoiceField(queryset=AgentVersion.objects.none(), label="From")
    b = VersionChoiceField(queryset=AgentVersion.objects.none(), label="To")

    def __init__(self, *args: Any, agent: Agent, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        versions = agent.versions.order_by("-created_at", "-pk")
        for name in ("a", "b"):
            cast(forms.ModelChoiceField, self.fields[name]).queryset = versions

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("a") and data.get("a") == data.get("b"):
            raise forms.ValidationError("Pick two different versions to compare.")
        return data
