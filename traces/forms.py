"""Forms of the incident and discovered-agent pages. They parse what the browser sends; the
rules (a title is required, labels are slugs, a linked trace is the team's) are the services'
to enforce, and their ``ValidationError``s land on the same field names."""

from __future__ import annotations

import re
from typing import Any, cast

from django import forms
from django.db.models import QuerySet

from cockpit.models import Team
from traces.models import IncidentStatus, Severity

TITLE_MAX = 200
MAX_LABELS = 20
LABEL_CHARS = 40
NOTE_MAX = 20_000
LABELS_HELP = "Comma-separated, e.g. refund, policy-gap. Letters, digits and dashes."
HEX = re.compile(r"[0-9a-f]+")


class LabelsField(forms.CharField):
    """Labels typed as "refund, policy gap" → ["policy-gap", "refund"] (the service slugifies)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("max_length", 1000)
        kwargs.setdefault("help_text", LABELS_HELP)
        super().__init__(**kwargs)

    def clean(self, value: Any) -> str:
        text = super().clean(value)
        labels = {item.strip().lower() for item in text.split(",") if item.strip()}
        if len(labels) > MAX_LABELS:
            raise forms.ValidationError(f"At most {MAX_LABELS} labels.")
        long = sorted(label for label in labels if len(label) > LABEL_CHARS)
        if long:
            raise forms.ValidationError(f"Labels are at most {LABEL_CHARS} characters: {long[0][:60]}")
        return text

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(v) for v in value)
        return value


class IncidentOpenForm(forms.Form):
    title = forms.CharField(
        max_length=TITLE_MAX,
        error_messages={"required": "Say in a few words what went wrong."},
        widget=forms.TextInput(attrs={"placeholder": "Refund issued without a ticket", "autofocus": True}),
    )
    severity = forms.ChoiceField(choices=Severity.choices, initial=Severity.SEV3)
    labels = LabelsField()
    note = forms.CharField(
        required=False,
        max_length=NOTE_MAX,
        label="First note (optional)",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "What did you notice? What should reviewers look at?"}),
    )


class IncidentEditForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX, error_messages={"required": "The title cannot be empty."})
    severity = forms.ChoiceField(choices=Severity.choices)
    labels = LabelsField()


class IncidentStatusForm(forms.Form):
    status = forms.ChoiceField(choices=IncidentStatus.choices)


class IncidentNoteForm(forms.Form):
    text = forms.CharField(
        label="Add a note",
        max_length=NOTE_MAX,
        error_messages={"required": "A note needs some text."},
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "What you found, what you ruled out, what happens next"}
        ),
    )
    # Any span of the trace may be named (the service checks it is one); the menu offers the
    # steps the narrative tells.
    span_id = forms.CharField(required=False, max_length=16, label="About the step", widget=forms.Select)

    def __init__(self, *args: Any, spans: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offer(spans or [])

    def offer(self, spans: list[tuple[str, str]]) -> None:
        widget = cast(forms.Select, self.fields["span_id"].widget)
        widget.choices = [("", "The whole trace"), *spans]


class IncidentLinkForm(forms.Form):
    trace = forms.CharField(
        label="Link a related trace",
        max_length=400,
        error_messages={"required": "Paste the id of the trace to link (at least its first 8 characters)."},
        widget=forms.TextInput(attrs={"placeholder": "4bf92f3577b34da6a3ce929d0e0e4736", "spellcheck": "false"}),
    )

    def clean_trace(self) -> str:
        """A trace id (32 hex characters or a prefix of at least 8), or the address of a trace
        page (``…/traces/<pk>/``) → the id or ``"#<pk>"``."""
        raw = self.cleaned_data["trace"].strip().lower()
        page = re.search(r"/traces/(\d+)/?", raw)
        if page:
            return f"#{page.group(1)}"
        raw = raw.replace("-", "")
        if not HEX.fullmatch(raw) or not 8 <= len(raw) <= 32:
            raise forms.ValidationError(
                "A trace id is 32 hexadecimal characters (0-9, a-f); paste it whole, or its first 8 or more."
            )
        return raw


class IncidentFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *IncidentStatus.choices])
    severity = forms.ChoiceField(required=False, choices=[("", "Any severity"), *Severity.choices])
    label = forms.CharField(required=False, max_length=40, widget=forms.TextInput(attrs={"placeholder": "label"}))
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", to_field_name="slug"
    )
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, teams: QuerySet[Team], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams


class AdoptForm(forms.Form):
    """Adopting takes the agent's name and slug from its spans unless the operator says otherwise."""

    name = forms.CharField(required=False, max_length=120)
    slug = forms.SlugField(required=False, max_length=80)
