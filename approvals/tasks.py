"""Approvals tasks: the escalation sweeper and notification delivery (thin, idempotent)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def escalation_sweep() -> int | None:
    """Escalate or expire the requests whose deadline has passed. Beat sends this every second
    with a short ``expires``; while one sweep runs, the others return at once (``None``), and
    the running one catches up with whatever falls due meanwhile. Running it twice, or in two
    workers, changes nothing twice."""
    from approvals.services import approvals_sweep

    return approvals_sweep()


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=8)
def notification_deliver(self, notification_id: int) -> str:  # noqa: ANN001
    """Send one notification once. A retried or duplicated task finds it sent (or being sent)
    and does nothing; a failed delivery is retried with backoff."""
    from approvals import notify
    from approvals.services import notification_claim, notification_finish

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


@shared_task(acks_late=True, ignore_result=True)
def notifications_deliver_many(notification_ids: list[int]) -> int:
    """Hand each notification of a batch (an escalation sweep's) its own delivery task, so each
    is claimed, sent and retried on its own while the sweeper goes on with the next batch."""
    for notification_id in notification_ids:
        notification_deliver.delay(notification_id)
    return len(notification_ids)


@shared_task(ignore_result=True)
def notifications_resend_stuck() -> int:
    """A worker killed while sending leaves a notification "sending": after ten minutes it is
    tried again (at-least-once for that rare case; retries never duplicate)."""
    from approvals.models import Notification, NotificationStatus

    stale = timezone.now() - timedelta(minutes=10)
    stuck = list(
        Notification.objects.filter(
            status__in=[NotificationStatus.SENDING, NotificationStatus.PENDING], created_at__lt=stale
        ).values_list("pk", flat=True)[:500]
    )
    Notification.objects.filter(pk__in=stuck, status=NotificationStatus.SENDING).update(
        status=NotificationStatus.PENDING
    )
    for notification_id in stuck:
        notification_deliver.delay(notification_id)
    return len(stuck)
