"""Traces tasks: linking an adopted agent's old spans, and the retention sweep (thin, idempotent)."""

from __future__ import annotations

import time

from celery import shared_task

PURGE_SECONDS = 50


@shared_task(acks_late=True, ignore_result=True)
def discovered_spans_link(discovered_id: int) -> int:
    """Link an adopted agent's already-stored spans, a batch at a time, handing on to a fresh
    task while there are more (running it twice links nothing twice)."""
    from traces.services import discovered_spans_link_batch

    linked = discovered_spans_link_batch(discovered_id)
    if linked:
        discovered_spans_link.delay(discovered_id)
    return linked


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
