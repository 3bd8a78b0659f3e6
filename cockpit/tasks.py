"""Platform tasks: thin wrappers that load by id and call into the platform."""

from __future__ import annotations

import logging
import socket
import time
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from cockpit import live
from cockpit.audit import audit_anchor, audit_verify_snapshot
from cockpit.selectors import AUDIT_CACHE_KEY, PROBE_CACHE_KEY

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def live_probe(*, probe: str, sent_at: float, team_id: int | None = None) -> None:
    """Answer a liveness probe: the worker is up and can reach the live bus.

    Publishes ``system.probe`` to the team's group (or the organisation group). Used by the
    System page, the cross-process tests and the live-bus benchmark.
    """
    now = time.time()
    cache.set(
        PROBE_CACHE_KEY,
        {
            "probe": probe,
            "queued_ms": (now - sent_at) * 1000,
            "at": timezone.now(),
            "worker": socket.gethostname(),
        },
        timeout=None,
    )
    live.publish(
        {"type": "system.probe", "probe": probe, "sent_at": sent_at, "worker_at": now},
        team_id=team_id,
    )


@shared_task(acks_late=True, ignore_result=True)
def maintenance_audit_verify(*, requested_by: str = "schedule") -> None:
    report = audit_verify_snapshot()
    if report.intact:
        logger.info("audit chain %s", report)
    else:
        logger.error("audit chain %s", report)
    cache.set(
        AUDIT_CACHE_KEY,
        {
            "intact": report.intact,
            "text": str(report),
            "at": timezone.now(),
            "requested_by": requested_by,
        },
        timeout=None,
    )
    live.publish({"type": "system.audit_verified", "intact": report.intact}, team_id=None)


@shared_task(acks_late=True, ignore_result=True)
def maintenance_audit_anchor() -> None:
    """Check the audit rows appended since the last anchor, then write a new signed anchor
    (file, log, webhook); a failed check is logged as an error and shown on the System page."""
    report, _anchor = audit_anchor()
    if not report.intact:
        cache.set(
            AUDIT_CACHE_KEY,
            {"intact": False, "text": str(report), "at": timezone.now(), "requested_by": "anchor"},
            timeout=None,
        )
        live.publish({"type": "system.audit_verified", "intact": False}, team_id=None)


@shared_task(acks_late=True, ignore_result=True)
def maintenance_login_attempts_cleanup() -> None:
    from axes.models import AccessAttempt, AccessLog

    now = timezone.now()
    AccessAttempt.objects.filter(attempt_time__lt=now - settings.AXES_COOLOFF_TIME).delete()
    AccessLog.objects.filter(attempt_time__lt=now - timedelta(days=90)).delete()
