"""Traces tasks: linking an adopted agent's old spans, and the retention sweep (thin, idempotent)."""

from __future__ import annotations

import time

from celery import shared_task

PURGE_SECONDS = 50


@shared_task(acks_late=True, ignore_result=True)
def discovered_spans_link(discovered_id: int, after_id: int = 0) -> int | None:
    """Link an adopted agent's already-stored spans, one range of span ids at a time, handing
    on to a fresh task for the next range (running a range twice links nothing twice)."""
    from traces.services import discovered_spans_link_batch

    following = discovered_spans_link_batch(discovered_id, after_id)
    if following is not None:
        discovered_spans_link.delay(discovered_id, following)
    return following


@shared_task(acks_late=True, ignore_result=True)
def traces_purge() -> int:
    """Delete traces older than the retention window, in batches, for at most about a minute
    per run (beat runs it every few minutes, so a backlog drains without a long transaction)."""
    from traces.services import traces_purge_batch

    deleted = 0
    started = time.monotonic()
    while time.monotonic() - started < PURGE_SECONDS:
        done = traces_purge_batch()
        deleted += done
        if not done:
            break
    return deleted
