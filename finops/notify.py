"""Delivering budget alerts: an email to the budget's addresses and a Slack-compatible webhook
signed with the budget's secret (``cockpit.webhooks``: ``X-Cockpit-Signature: sha256=<hex
HMAC-SHA256 of "<timestamp>.<body>">``).

The webhook body::

    {"text": "...", "blocks": [...],
     "cockpit": {"type": "budget.alert", "alert": 7, "budget": 3, "name": "Claims monthly",
                 "scope": "team", "scope_label": "team Claims", "team": "claims",
                 "period": "2026-03", "kind": "threshold", "threshold": 80,
                 "spent_usd": "812.40", "limit_usd": "1000.00", "percent": 81.2,
                 "projected_usd": null, "action": "pause", "url": "https://…/finops/"}}
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from cockpit import webhooks
from finops.models import AlertKind, BudgetAlert, BudgetNotification, NotificationChannel

DeliveryError = webhooks.DeliveryError


def describe(alert: BudgetAlert) -> dict[str, Any]:
    budget = alert.budget
    return {
        "type": "budget.alert",
        "alert": alert.pk,
        "budget": budget.pk,
        "name": budget.name,
        "scope": budget.scope,
        "scope_label": budget.describe_scope(),
        "team": budget.team.slug if budget.team else None,
        "period": alert.period,
        "kind": alert.kind,
        "threshold": alert.threshold,
        "spent_usd": f"{alert.spent:.2f}",
        "limit_usd": f"{alert.limit_usd:.2f}",
        "percent": round(alert.percent, 1),
        "projected_usd": None if alert.projected is None else f"{alert.projected:.2f}",
        "action": budget.action,
        "url": settings.COCKPIT_BASE_URL.rstrip("/") + reverse("finops"),
    }


def usd(amount: Decimal) -> str:
    """Dollars with cents; small amounts with four places (a $0.05 budget is not "$0.05 of $0.05")."""
    return f"${amount:,.2f}" if abs(amount) >= 1 else f"${amount:,.4f}"


def headline(alert: BudgetAlert) -> str:
    budget = alert.budget
    if alert.kind == AlertKind.PROJECTED:
        return (
            f"{budget.name} is projected to reach {usd(alert.projected or Decimal(0))} this {budget.period} "
            f"({alert.period}), over its {usd(budget.limit_usd)} limit (spent so far {usd(alert.spent)})"
        )
    if alert.threshold >= 100:
        consequence = {
            "pause": "runs in its scope are paused",
            "degrade": "runs in its scope switch to a cheaper model",
            "alert": "no run is stopped (alert only)",
        }[budget.action]
        return (
            f"{budget.name} reached its limit: {usd(alert.spent)} of {usd(alert.limit_usd)} "
            f"({alert.period}); {consequence}"
        )
    return f"{budget.name} reached {alert.threshold}% of its limit: {usd(alert.spent)} of {usd(alert.limit_usd)}"


def deliver(notification: BudgetNotification) -> None:
    alert = notification.alert
    budget = alert.budget
    if notification.channel == NotificationChannel.EMAIL:
        if budget.alert_emails:
            data = describe(alert)
            body = (
                f"{headline(alert)}.\n\nBudget: {budget.name} on {budget.describe_scope()}, "
                f"{usd(budget.limit_usd)} per {budget.period}.\n\nSee: {data['url']}\n"
            )
            send_mail(f"[Cockpit] Budget: {headline(alert)}", body, settings.DEFAULT_FROM_EMAIL, budget.alert_emails)
    elif notification.channel == NotificationChannel.WEBHOOK and budget.webhook_url:
        text = f":money_with_wings: *{headline(alert)}*"
        webhooks.post(
            budget.webhook_url,
            budget.webhook_secret,
            {
                "text": text,
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                "cockpit": describe(alert),
            },
        )
