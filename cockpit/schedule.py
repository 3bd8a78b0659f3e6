"""Every periodic task, in one place (celery beat reads ``BEAT_SCHEDULE``).

Each entry is named, says why it exists, and carries ``expires`` so that a backlog after an
outage runs the newest copy instead of a pile of stale ones. Tasks are named by string, so this
module imports no app.
"""

from __future__ import annotations

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict] = {
    # Re-enqueues managed runs whose worker died (lease expired) or whose message was lost.
    # The durable state is the run's row; this makes recovery take seconds, not an hour.
    "runs-sweep": {
        "task": "fleet.tasks.run_sweep",
        "schedule": 10.0,
        "options": {"expires": 10},
    },
    # Completes the traces of ended runs whose worker died before storing its last spans.
    "runs-spans-sweep": {
        "task": "fleet.tasks.run_spans_sweep",
        "schedule": 10.0,
        "options": {"expires": 10},
    },
    # Approval deadlines: escalate to the next level, or expire as rejected. Every second, so a
    # deadline is acted on within about a second; the deadlines themselves are database columns.
    # One sweep runs at a time (the others return at once) and catches up by itself, so a copy
    # still queued after a second is dropped rather than piling up behind it.
    "approvals-escalation-sweep": {
        "task": "approvals.tasks.escalation_sweep",
        "schedule": 1.0,
        "options": {"expires": 1},
    },
    # Notifications whose worker died while sending them are tried again.
    "approvals-resend-stuck-notifications": {
        "task": "approvals.tasks.notifications_resend_stuck",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
    # Trace retention (COCKPIT_TRACE_RETENTION_DAYS): old traces are deleted a batch at a time.
    "traces-purge": {
        "task": "traces.tasks.traces_purge",
        "schedule": crontab(minute="*/10"),
        "options": {"expires": 540},
    },
    # `make demo` only (the task checks COCKPIT_DEMO): start a demo run now and then.
    "demo-start-runs": {
        "task": "fleet.tasks.demo_start_runs",
        "schedule": 5.0,
        "options": {"expires": 5},
    },
    # Walks the audit hash chain and logs an error at the first broken link; the result is also
    # shown on the Audit page.
    "audit-verify-nightly": {
        "task": "cockpit.tasks.maintenance_audit_verify",
        "schedule": crontab(hour=3, minute=17),
        "options": {"expires": 3600},
    },
    # Signs a checkpoint of every audit chain's head (to a file, the log and an optional webhook)
    # after checking the rows added since the last one: deleting the newest audit rows, or all of
    # them, is then caught by the next anchor or audit_verify. Rows written after the last anchor
    # are the only ones whose removal can go unnoticed.
    "audit-anchor": {
        "task": "cockpit.tasks.maintenance_audit_anchor",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
    # FinOps: team and agent forecasts to the end of the month, then the "projected to exceed"
    # budget alerts (each once per budget and period).
    "finops-forecasts-refresh": {
        "task": "finops.tasks.forecasts_refresh",
        "schedule": crontab(minute=7),
        "options": {"expires": 3000},
    },
    # Budget alerts whose worker died while sending them are tried again.
    "finops-resend-stuck-notifications": {
        "task": "finops.tasks.budget_notifications_resend_stuck",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 240},
    },
    # Budget holds of steps whose worker died before their cost was known (they also expire).
    "finops-holds-purge": {
        "task": "finops.tasks.budget_holds_purge",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 600},
    },
    # Forgets login attempts older than the lock-out window (django-axes keeps them otherwise).
    "login-attempts-cleanup": {
        "task": "cockpit.tasks.maintenance_login_attempts_cleanup",
        "schedule": crontab(minute=41),
        "options": {"expires": 1800},
    },
}
