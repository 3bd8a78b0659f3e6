"""Fleet tasks: thin, idempotent wrappers around the runtime and services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)


@shared_task(
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=8,
)
def run_execute(run_id: int, *, follow_lease: bool = True) -> str:
    """Execute (or resume, or finish cancelling) a managed run. Safe to deliver twice: only one
    worker can hold the run's lease, and completed steps are replayed, not repeated. If the
    database is unreachable the task retries with backoff (and the sweeper is the safety net).

    Redelivered because its worker died, the task finds the dead worker's lease still running:
    it comes back once, when that lease runs out, so that the run is taken over within one
    lease rather than at the sweep after it (the sweeper stays the safety net)."""
    from fleet.runtime import executor

    outcome = executor.execute(run_id)
    if outcome == "not claimed" and follow_lease:
        left = executor.lease_left(run_id)
        if left is not None:
            run_execute.apply_async((run_id,), {"follow_lease": False}, countdown=left + 0.5)
    return outcome


@shared_task(acks_late=True, ignore_result=True)
def run_sweep() -> int:
    """Re-enqueue runs no worker is executing (their worker died, or their message was lost)."""
    from fleet.services import runs_to_recover

    recovered = runs_to_recover()
    for run_id in recovered:
        run_execute.delay(run_id)
    if recovered:
        logger.warning("re-enqueued %d orphaned run(s): %s", len(recovered), recovered)
    return len(recovered)


@shared_task(ignore_result=True)
def demo_start_runs() -> int:
    """The demo keeps its agents busy (only when COCKPIT_DEMO is set)."""
    if not settings.COCKPIT_DEMO or not settings.COCKPIT["DEMO_RUN_INTERVAL_SECONDS"]:
        return 0
    from fleet.demo import start_random_run

    return 1 if start_random_run() else 0


@shared_task(acks_late=True, ignore_result=True)
def run_spans_sweep() -> int:
    """Complete the traces of recently ended runs: spans are stored in background batches, and a
    worker killed before its batch went out took those spans with it (the journal did not).
    Runs are marked once their trace is complete, so each is looked at until it is."""
    from fleet.services import runs_spans_reconcile

    return runs_spans_reconcile()
