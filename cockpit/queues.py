"""The Celery queues, and which tasks go to which.

Separate queues keep a flood of one kind of work from starving the others: a burst of agent
runs must not delay an escalation. Production runs workers per queue (or with ``-Q`` lists);
``make demo`` runs one worker on all of them.
"""

from __future__ import annotations

from enum import StrEnum

from kombu import Queue as KombuQueue


class Queue(StrEnum):
    DEFAULT = "default"
    RUNS = "runs"  # managed agent runs (fleet)
    ESCALATIONS = "escalations"  # approval deadlines: the escalation sweeper (approvals)
    NOTIFICATIONS = "notifications"  # approval emails, webhooks and callbacks (approvals)
    INGEST = "ingest"  # span post-processing (traces)
    ROLLUPS = "rollups"  # cost rollups, budgets, forecasts (finops)
    MAINTENANCE = "maintenance"  # retention, audit verification, clean-ups


CELERY_TASK_QUEUES = [KombuQueue(q.value, routing_key=q.value) for q in Queue]

# Routed by module, so a new task lands on its app's queue without an entry here.
CELERY_TASK_ROUTES = {
    # Housekeeping first: a flood of runs must not delay the sweeper that rescues them.
    "fleet.tasks.run_sweep": {"queue": Queue.MAINTENANCE.value},
    "fleet.tasks.demo_start_runs": {"queue": Queue.MAINTENANCE.value},
    "fleet.tasks.run_spans_sweep": {"queue": Queue.MAINTENANCE.value},
    "fleet.tasks.*": {"queue": Queue.RUNS.value},
    # A storm of notifications must not delay the sweeper that escalates the next level.
    "approvals.tasks.notification*": {"queue": Queue.NOTIFICATIONS.value},
    "approvals.tasks.*": {"queue": Queue.ESCALATIONS.value},
    "traces.tasks.traces_purge": {"queue": Queue.MAINTENANCE.value},
    "traces.tasks.*": {"queue": Queue.INGEST.value},
    "finops.tasks.*": {"queue": Queue.ROLLUPS.value},
    "cockpit.tasks.maintenance_*": {"queue": Queue.MAINTENANCE.value},
}
