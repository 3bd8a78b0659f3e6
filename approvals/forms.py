"""Forms of the approvals pages. They parse and type what the browser sends; the rules of the
domain (who may decide, what a policy may say, what a level needs) are the services' to enforce,
and their ``ValidationError``s land on the same field names."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms
from django.contrib.auth.models import Group
from django.db.models import QuerySet

from approvals.models import ApprovalKind, Channel, EscalationLevel, EscalationPolicy, OnExpiry, PromotionRule
from approvals.selectors import LEVELS, MAX_SHOWN, PAGE_SIZE
from cockpit.models import Team
from cockpit.roles import Role
from fleet.forms import AgentChoiceField
from fleet.models import Agent, Risk, Tool

REASON_MAX = 4000
MINE, ALL = "mine", "all"

# --- Queue ------------------------------------------------------------------------------------


class QueueFilterForm(forms.Form):
    view = forms.ChoiceField(
        required=False, choices=[(MINE, "My queue"), (ALL, "All pending in my teams")], widget=forms.HiddenInput
    )
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", to_field_name="slug"
    )
    agent = AgentChoiceField(queryset=Agent.objects.none(), required=False, empty_label="All agents")
    risk = forms.ChoiceField(required=False, choices=[("", "Any risk"), *Risk.choices])
    level = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=None, choices=[("", "Any level"), *((n, f"L{n}") for n in LEVELS)]
    )
    kind = forms.ChoiceField(
        required=False,
        choices=[("", "All kinds"), (ApprovalKind.APPROVAL, "Approvals"), (ApprovalKind.REVIEW, "Reviews")],
    )
    limit = forms.IntegerField(required=False, min_value=PAGE_SIZE, max_value=MAX_SHOWN, widget=forms.HiddenInput)
    selected = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(
        self, *args: Any, teams: QuerySet[Team], agents: QuerySet[Agent], default_view: str, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = agents
        self.default_view = default_view
        for name in ("team", "agent", "risk", "level", "kind"):
            self.fields[name].widget.attrs["data-autosubmit"] = ""

    @property
    def mine(self) -> bool:
        return (self.cleaned_data.get("view") or self.default_view) == MINE

    def queue_filters(self) -> dict[str, Any]:
        """The cleaned filters as ``approvals.selectors.queue`` arguments."""
        data = self.cleaned_data
        return {
            "mine": self.mine,
            "team": data["team"],
            "agent": data["agent"],
            "risk": data["risk"],
            "level": data["level"],
            "kind": data["kind"],
            "limit": data["limit"] or PAGE_SIZE,
        }


# --- Decisions --------------------------------------------------------------------------------


class ResultField(forms.CharField):
    """A manual (tier 4) request's result: what happened when the approver carried it out. JSON
    when it parses as JSON (``{"refund_id": "R-88"}``), else the text as written."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, max_length=20_000, widget=forms.Textarea(attrs={"rows": 3}), **kwargs)

    def clean(self, value: Any) -> Any:
        text = super().clean(value).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


class ApproveForm(forms.Form):
    note = forms.CharField(required=False, max_length=REASON_MAX)
    result = ResultField()


class EditForm(forms.Form):
    """Approve with edited arguments: the JSON object the action will run with instead."""

    arguments = forms.CharField(widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}))
    note = forms.CharField(required=False, max_length=REASON_MAX)
    result = ResultField()

    @classmethod
    def for_arguments(cls, arguments: dict[str, Any]) -> EditForm:
        return cls(initial={"arguments": json.dumps(arguments, indent=2, ensure_ascii=False)})

    def clean_arguments(self) -> dict[str, Any]:
        try:
            value = json.loads(self.cleaned_data["arguments"])
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"This is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError('The arguments are a JSON object: {"name": value, …}.')
        return value


class ExecuteForm(forms.Form):
    """A manual request carried out through Cockpit's tool, as proposed or with these arguments."""

    arguments = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}))
    note = forms.CharField(required=False, max_length=REASON_MAX)

    def clean_arguments(self) -> dict[str, Any] | None:
        if not self.cleaned_data["arguments"].strip():
            return None
        return EditForm.clean_arguments(self)  # type: ignore[arg-type]


class RejectForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        error_messages={"required": "Say why you reject it: the agent and the audit log will show it."},
    )


# --- Policies ---------------------------------------------------------------------------------


class PolicyForm(forms.Form):
    source = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false"}),
        strip=False,
        error_messages={"required": "Write the policy in Cedar (the global policy cannot be empty)."},
    )
    comment = forms.CharField(
        required=False, max_length=2000, help_text="What changes and why; kept with the version and in the audit log."
    )


class PolicyTestForm(forms.Form):
    """An imaginary action to put to the policies in force: what would they say?"""

    agent = AgentChoiceField(queryset=Agent.objects.none(), empty_label="Choose an agent")
    tool = forms.ModelChoiceField(
        queryset=Tool.objects.order_by("name"), required=False, empty_label="Another action…", to_field_name="name"
    )
    action = forms.CharField(
        required=False, max_length=160, label="Action name", help_text="When it is not a known tool."
    )
    risk = forms.ChoiceField(
        required=False, choices=Risk.choices, initial=Risk.MEDIUM, help_text="Known tools use their own."
    )
    side_effect = forms.BooleanField(required=False, initial=True, label="Changes something (side effect)")
    confidence = forms.DecimalField(required=False, min_value=0, max_value=1, decimal_places=2, help_text="0 to 1")
    amount = forms.DecimalField(required=False, max_digits=14, decimal_places=2, min_value=0)
    currency = forms.CharField(required=False, max_length=3)
    customer_segment = forms.CharField(required=False, max_length=60)

    def __init__(self, *args: Any, agents: QuerySet[Agent], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = agents

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        tool: Tool | None = data.get("tool")
        data["risk"] = data.get("risk") or Risk.MEDIUM
        if tool is not None:
            data.update(action=tool.name, risk=tool.risk, side_effect=tool.side_effect)
        elif not data.get("action") and "tool" not in self.errors:
            self.add_error("action", "Choose a tool, or name the action.")
        return data

    def subject(self) -> dict[str, Any]:
        """What ``approvals.cedar.context_for`` and ``services.judge`` are asked about."""
        data = self.cleaned_data
        args: dict[str, Any] = {}
        if data["amount"] is not None:
            args["amount"] = str(data["amount"])
        if data["currency"]:
            args["currency"] = data["currency"].upper()
        extra = {"customer_segment": data["customer_segment"]} if data["customer_segment"] else {}
        confidence = float(data["confidence"]) if data["confidence"] is not None else None
        return {"args": args, "extra": extra, "confidence": confidence}


# --- Escalation -------------------------------------------------------------------------------

SECONDS, MINUTES = "s", "min"


class GroupChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return obj.name


def level_groups() -> QuerySet[Group]:
    """Groups a level may name: every group but the organisation-wide role groups (membership
    of those is a role, not an approver rota)."""
    return Group.objects.exclude(name__in=Role.values).order_by("name")


class LevelForm(forms.Form):
    """One level of an escalation path; a level with no SLA ends the path."""

    group = GroupChoiceField(
        queryset=Group.objects.none(), required=False, empty_label="Any approver of the team", label="Who decides"
    )
    sla = forms.IntegerField(required=False, min_value=1, max_value=7 * 24 * 3600, label="SLA")
    sla_unit = forms.ChoiceField(choices=[(MINUTES, "minutes"), (SECONDS, "seconds")], initial=MINUTES, label="Unit")
    channels = forms.MultipleChoiceField(
        required=False,
        choices=[(Channel.EMAIL, "Email"), (Channel.WEBHOOK, "Webhook")],
        widget=forms.CheckboxSelectMultiple,
        label="Also tell them by",
    )
    webhook_url = forms.URLField(required=False, label="Webhook URL", assume_scheme="https")
    webhook_secret = forms.CharField(
        required=False,
        max_length=128,
        label="Webhook secret",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: Any, has_secret: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["group"]).queryset = level_groups()
        self.has_secret = has_secret
        self.fields["webhook_secret"].help_text = (
            "A secret is set; leave empty to keep it." if has_secret else "Signs each webhook (HMAC-SHA256)."
        )

    @property
    def is_used(self) -> bool:
        return self.is_valid() and self.cleaned_data["sla"] is not None

    def sla_seconds(self) -> int:
        data = self.cleaned_data
        return data["sla"] * (60 if data["sla_unit"] == MINUTES else 1)


class EscalationPolicyForm(forms.Form):
    name = forms.CharField(max_length=120)
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.none(), required=False, empty_label="Every agent of the team", label="For agent"
    )
    risk = forms.ChoiceField(required=False, choices=[("", "Any risk"), *Risk.choices], label="For risk")
    on_expiry = forms.ChoiceField(
        choices=OnExpiry.choices, label="When the last level's SLA passes", widget=forms.RadioSelect
    )
    separation_of_duties = forms.BooleanField(
        required=False, label="Separation of duties: whoever started a run may not approve its actions"
    )

    def __init__(self, *args: Any, team: Team, policy: EscalationPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.team = team
        self.policy = policy
        cast(forms.ModelChoiceField, self.fields["agent"]).queryset = team.agents.order_by("name")
        if policy is not None:
            # What a policy applies to is what identifies it: editing keeps it.
            self.initial.update(agent=policy.agent_id, risk=policy.risk)
            for name in ("agent", "risk"):
                self.fields[name].disabled = True
        secrets = {lv.level for lv in policy.levels.all() if lv.webhook_secret} if policy else set()
        data = args[0] if args else kwargs.get("data")
        self.levels = [
            LevelForm(data, prefix=f"l{n}", has_secret=n in secrets, initial=self._level_initial(n)) for n in LEVELS
        ]

    @classmethod
    def for_policy(cls, policy: EscalationPolicy) -> EscalationPolicyForm:
        initial = {
            "name": policy.name,
            "agent": policy.agent_id,
            "risk": policy.risk,
            "on_expiry": policy.on_expiry,
            "separation_of_duties": policy.separation_of_duties,
        }
        return cls(initial=initial, team=policy.team, policy=policy)

    @classmethod
    def blank(cls, team: Team) -> EscalationPolicyForm:
        initial = {"name": f"{team.name} approvals", "on_expiry": OnExpiry.REJECT, "separation_of_duties": True}
        return cls(initial=initial, team=team)

    def _level_initial(self, number: int) -> dict[str, Any]:
        level: EscalationLevel | None = (
            next((lv for lv in self.policy.levels.all() if lv.level == number), None) if self.policy else None
        )
        if level is None:
            return {"sla_unit": MINUTES}
        minutes = level.sla_seconds % 60 == 0
        return {
            "group": level.group_id,
            "sla": level.sla_seconds // 60 if minutes else level.sla_seconds,
            "sla_unit": MINUTES if minutes else SECONDS,
            "channels": level.channels,
            "webhook_url": level.webhook_url,
        }

    def is_valid(self) -> bool:
        valid = super().is_valid()  # clean() validates every level, and may add errors to them
        return valid and not any(level.errors for level in self.levels)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        used = [level.is_used for level in self.levels]
        if not used[0]:
            self.levels[0].add_error("sla", "Level 1 needs an SLA: how long its approvers have to decide.")
        for number, (before, this) in enumerate(zip(used, used[1:], strict=False), start=2):
            if this and not before:
                self.levels[number - 1].add_error("sla", f"L{number - 1} is empty: a path has no gaps.")
        if self.policy is None and not self.errors:
            taken = EscalationPolicy.objects.filter(team=self.team, agent=data.get("agent"), risk=data.get("risk", ""))
            if taken.exists():
                raise forms.ValidationError("There is a policy for this agent and risk already: edit it instead.")
        return data

    def level_specs(self) -> list[dict[str, Any]]:
        """The levels as ``approvals.services.escalation_policy_save`` takes them; an empty secret
        keeps the level's current one."""
        current = {lv.level: lv for lv in self.policy.levels.all()} if self.policy else {}
        specs = []
        for number, level in enumerate(self.levels, start=1):
            if not level.is_used:
                break
            data = level.cleaned_data
            kept = current[number].webhook_secret if number in current else ""
            specs.append(
                {
                    "group": data["group"],
                    "sla_seconds": level.sla_seconds(),
                    "channels": data["channels"],
                    "webhook_url": data["webhook_url"],
                    "webhook_secret": data["webhook_secret"] or kept,
                }
            )
        return specs


# --- Calibration ------------------------------------------------------------------------------

WINDOWS = {"30": 30, "90": 90, "365": 365, "all": None}


class CalibrationWindowForm(forms.Form):
    window = forms.ChoiceField(
        required=False,
        choices=[("30", "Last 30 days"), ("90", "Last 90 days"), ("365", "Last 12 months"), ("all", "All time")],
        label="Decisions",
    )

    def days(self) -> int | None:
        return WINDOWS[self.cleaned_data.get("window") or "90"]


class PromotionRuleForm(forms.Form):
    min_decisions = forms.IntegerField(min_value=1, label="At least this many decisions")
    min_unchanged_rate = forms.DecimalField(
        min_value=0, max_value=100, max_digits=5, decimal_places=2, label="Approved unchanged (%), at least"
    )
    max_violations = forms.IntegerField(min_value=0, label="At most this many rejections")

    @classmethod
    def for_rule(cls, rule: PromotionRule) -> PromotionRuleForm:
        return cls(
            initial={
                "min_decisions": rule.min_decisions,
                "min_unchanged_rate": rule.min_unchanged_rate,
                "max_violations": rule.max_violations,
            }
        )


class PromoteForm(forms.Form):
    tier = forms.TypedChoiceField(coerce=int, choices=[(n, n) for n in LEVELS], widget=forms.HiddenInput)
    reason = forms.CharField(
        max_length=2000, error_messages={"required": "Say why; the tier change is kept in the audit log."}
    )
