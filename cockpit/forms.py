from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError

from cockpit.lib.validation import offset_problem
from cockpit.models import Scope, Team
from cockpit.roles import Role


def add_service_error(form: forms.Form, exc: ValidationError, rename: dict[str, str] | None = None) -> None:
    """A service's ``ValidationError`` on the form: on the field it names (``rename`` maps the
    service's argument names to the form's), else on the whole form."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, errors in exc.error_dict.items():
        field = (rename or {}).get(name, name)
        form.add_error(field if field in form.fields else None, errors)


def submit[T](
    form: forms.Form, action: Callable[[dict[str, Any]], T], rename: dict[str, str] | None = None
) -> T | None:
    """Validate the form and call the service with its cleaned data; ``None`` when anything was
    refused (the errors are on the form, and the service changed nothing). Every view that
    submits a form to a service goes through here."""
    if not form.is_valid():
        return None
    try:
        return action(form.cleaned_data)
    except ValidationError as exc:
        add_service_error(form, exc, rename)
        return None


class FilterDateTimeField(forms.DateTimeField):
    """A list filter's "from"/"to": what the browser's picker sends, or an ISO 8601 time with
    an offset PostgreSQL accepts (a larger one is a form error, not a database error)."""

    def to_python(self, value: Any) -> Any:
        moment = super().to_python(value)
        if moment is not None and (problem := offset_problem(moment)):
            raise ValidationError(f"This time {problem}.", code="offset")
        return moment


class AuditFilterForm(forms.Form):
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), required=False, empty_label="All teams", to_field_name="slug"
    )
    action = forms.ChoiceField(required=False)
    actor = forms.CharField(required=False, max_length=100)
    since = FilterDateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    until = FilterDateTimeField(required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, teams: Any, actions: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["team"]).queryset = teams
        cast(forms.ChoiceField, self.fields["action"]).choices = [
            ("", "All actions"),
            *((a, a) for a in actions),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("'From' must be before 'to'.")
        return data


class ApiKeyCreateForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), to_field_name="slug")
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. 'LangGraph prod collector'.")
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple)

    def __init__(self, *args: Any, teams: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        team = cast(forms.ModelChoiceField, self.fields["team"])
        team.queryset = teams
        team.empty_label = None


class RevokeForm(forms.Form):
    reason = forms.CharField(required=False, max_length=500)


class MembershipGrantForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices)

    def clean_username(self) -> Any:
        from django.contrib.auth import get_user_model

        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise forms.ValidationError(f"No active user named {username!r}.")
        return user
