from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cockpit.audit import Actor
from finops.models import Budget, BudgetPeriod
from finops.services import budget_spend_rebuild


class Command(BaseCommand):
    help = (
        "Recount the current period's spend of active calendar budgets from the hourly rollups (after a "
        "database crash, a reprice, or to count a budget created mid-period from the period's start)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--budget", type=int, action="append", default=[], help="budget id (repeat); default all")

    def handle(self, *args: Any, **options: Any) -> None:
        budgets = Budget.objects.filter(active=True).exclude(period=BudgetPeriod.RUN).select_related("team", "agent")
        if options["budget"]:
            budgets = budgets.filter(pk__in=options["budget"])
        actor = Actor.system("finops_budget_rebuild")
        for budget in budgets.order_by("pk"):
            spend = budget_spend_rebuild(actor=actor, budget=budget)
            if spend is not None:
                self.stdout.write(f"#{budget.pk} {budget.name}: {spend.period} spent ${spend.spent:,.6f}")
