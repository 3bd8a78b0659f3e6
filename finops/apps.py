"""FinOps: prices, cost attribution, rollups, budgets and forecasts."""

from __future__ import annotations

from django.apps import AppConfig


class FinopsConfig(AppConfig):
    name = "finops"
    verbose_name = "FinOps"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from finops.budgets import FinopsBudgetGuard
        from finops.prices import CockpitPricer
        from finops.rollups import on_spans_stored
        from fleet import seams
        from traces.signals import spans_stored

        seams.register(budget_guard=FinopsBudgetGuard(), pricer=CockpitPricer())
        spans_stored.connect(on_spans_stored, dispatch_uid="finops.rollups")
