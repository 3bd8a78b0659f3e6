"""FinOps tasks: thin, idempotent wrappers around ``finops.services`` (queue: rollups)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def budget_evaluate(budget_id: int, period: str, run_ids: list[int] | None = None, capped: bool = False) -> int:
    """A budget's spend reached a threshold (or grew over its cap, or its cap refused a managed
    call: ``capped``): raise its alerts once and pause the external runs in scope. Running it
    again changes nothing."""
    from finops.models import Budget
    from finops.services import budget_alerts_raise

    budget = Budget.objects.select_related("team", "agent").filter(pk=budget_id).first()
    if budget is None:
        return 0
    return len(budget_alerts_raise(budget=budget, period=period, run_ids=run_ids or [], capped=capped))


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=8)
def budget_notification_deliver(self, notification_id: int) -> str:  # noqa: ANN001
    """Send one alert through one channel once; a failed delivery is retried with backoff."""
    from finops import notify
    from finops.services import notification_claim, notification_finish

    notification = notification_claim(notification_id)
    if notification is None:
        return "already sent or in flight"
    try:
        notify.deliver(notification)
    except notify.DeliveryError as exc:
        notification_finish(notification, error=str(exc))
        raise self.retry(countdown=min(600, 5 * 2**self.request.retries), exc=exc) from None
    except PermissionError as exc:
        notification_finish(notification, error=str(exc))
        return "refused"
    notification_finish(notification)
    return "sent"


@shared_task(ignore_result=True)
def budget_notifications_resend_stuck() -> int:
    """A worker killed while sending leaves a notification "sending": after ten minutes it is
    tried again."""
    from finops.models import BudgetNotification, NotificationStatus

    stale = timezone.now() - timedelta(minutes=10)
    stuck = list(
        BudgetNotification.objects.filter(
            status__in=[NotificationStatus.SENDING, NotificationStatus.PENDING], created_at__lt=stale
        ).values_list("pk", flat=True)[:500]
    )
    BudgetNotification.objects.filter(pk__in=stuck, status=NotificationStatus.SENDING).update(
        status=NotificationStatus.PENDING
    )
    for notification_id in stuck:
        budget_notification_deliver.delay(notification_id)
    return len(stuck)


@shared_task(ignore_result=True, time_limit=1800, soft_time_limit=1700)
def forecasts_refresh() -> int:
    """Recompute team and agent forecasts, then alert budgets projected to exceed their limit."""
    from finops import forecast
    from finops.services import forecasts_refresh as refresh

    stored = refresh()
    forecast.budgets_projection_check()
    return stored


@shared_task(ignore_result=True)
def budget_holds_purge() -> int:
    """Drop budget reservations that stopped counting an hour ago or more (their worker lost the
    run's lease before the call's cost was known)."""
    from finops.budgets import reservations_purge

    return reservations_purge(older_than=timedelta(hours=1))
