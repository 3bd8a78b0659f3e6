"""Django admin for FinOps.

Price overrides are edited here (add, change, delete), each write through
``finops.services`` so it is audited like any other change. Budgets can be created and
changed here too (through ``budget_create`` / ``budget_update`` / ``budget_raise``); spend
counters, alerts and forecasts are read-only.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from cockpit.admin import ReadOnlyAdmin
from cockpit.audit import Actor
from finops import prices, services
from finops.models import Budget, BudgetAlert, BudgetSpend, Forecast, PriceOverride


@admin.register(PriceOverride)
class PriceOverrideAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "provider_or_any",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "created_by_label",
    ]
    list_filter = ["provider"]
    search_fields = ["model", "provider", "note"]
    date_hierarchy = "effective_from"
    fields = [
        "model",
        "provider",
        "effective_from",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "reasoning_per_mtok",
        "input_audio_per_mtok",
        "output_audio_per_mtok",
        "note",
        "library_price",
    ]
    readonly_fields = ["library_price"]

    @admin.display(description="provider")
    def provider_or_any(self, obj: PriceOverride) -> str:
        return obj.provider or "(any)"

    @admin.display(description="without this override")
    def library_price(self, obj: PriceOverride) -> str:
        if not obj.model:
            return "-"
        found = prices.source(provider=obj.provider, model=obj.model)
        return {
            "override": "an override applies now",
            "genai-prices": "priced by genai-prices",
            "simulated": "a simulated model's made-up price",
            "unpriced": "unpriced (no known price)",
        }[found]

    def save_model(self, request: HttpRequest, obj: PriceOverride, form: Any, change: bool) -> None:
        services.price_override_save(actor=Actor.from_request(request), override=obj, reason=obj.note)

    def delete_model(self, request: HttpRequest, obj: PriceOverride) -> None:
        services.price_override_delete(actor=Actor.from_request(request), override=obj, reason="deleted in admin")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PriceOverride]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


class BudgetAdminForm(forms.ModelForm):
    raise_reason = forms.CharField(
        required=False, help_text="when raising the limit: why (the runs it paused are resumed)"
    )

    class Meta:
        model = Budget
        fields = [
            "name",
            "scope",
            "team",
            "agent",
            "workflow",
            "tag",
            "period",
            "limit_usd",
            "thresholds",
            "action",
            "alert_emails",
            "webhook_url",
            "webhook_secret",
            "active",
        ]
        widgets = {"webhook_secret": forms.PasswordInput(render_value=True)}


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetAdminForm
    list_display = ["name", "scope", "team", "agent", "period", "limit_usd", "action", "active"]
    list_filter = ["scope", "period", "action", "active"]
    search_fields = ["name", "workflow", "tag"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["scope", "team", "agent"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        actor = Actor.from_request(request)
        data = form.cleaned_data
        try:
            if not change:
                created = services.budget_create(
                    actor=actor,
                    name=obj.name,
                    scope=obj.scope,
                    team=obj.team,
                    agent=obj.agent,
                    workflow=obj.workflow,
                    tag=obj.tag,
                    period=obj.period,
                    limit_usd=obj.limit_usd,
                    thresholds=obj.thresholds,
                    action=obj.action,
                    alert_emails=obj.alert_emails,
                    webhook_url=obj.webhook_url,
                    webhook_secret=obj.webhook_secret,
                )
                obj.pk = created.pk
                return
            current = Budget.objects.get(pk=obj.pk)
            changes = {
                key: data[key]
                for key in services.UPDATABLE
                if key in data and key != "limit_usd" and data[key] != getattr(current, key)
            }
            if changes:
                services.budget_update(actor=actor, budget=current, changes=changes)
            if obj.limit_usd != current.limit_usd:
                if obj.limit_usd > current.limit_usd:
                    services.budget_raise(
                        actor=actor,
                        budget=current,
                        limit_usd=obj.limit_usd,
                        reason=data.get("raise_reason") or "raised in admin",
                    )
                else:
                    services.budget_update(actor=actor, budget=current, changes={"limit_usd": obj.limit_usd})
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))


@admin.register(BudgetSpend)
class BudgetSpendAdmin(ReadOnlyAdmin):
    list_display = ["budget", "period", "spent", "updated_at"]
    list_filter = ["budget"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["budget", "period", "kind", "threshold", "spent", "limit_usd", "projected", "created_at"]
    list_filter = ["kind", "budget"]


@admin.register(Forecast)
class ForecastAdmin(ReadOnlyAdmin):
    list_display = ["team", "agent", "period", "spent_to_date", "projected_total", "low", "high", "computed_at"]
