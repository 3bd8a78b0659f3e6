"""The Celery application. Settings come from Django's (``CELERY_*``); tasks from each app's
``tasks.py``; queues from ``cockpit.queues``; the beat schedule from ``cockpit.schedule``."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cockpit.settings")

app = Celery("cockpit")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _configure_tracing_in_child(**_kwargs: object) -> None:
    # Prefork pool: in each child, after the fork (an exporter's thread does not survive one).
    from cockpit.telemetry import configure_tracing

    configure_tracing("cockpit-worker")


@worker_init.connect
def _configure_tracing_in_worker(sender: object = None, **_kwargs: object) -> None:
    # Thread and solo pools execute tasks in this very process.
    pool = getattr(sender, "pool_cls", "")
    if "prefork" not in getattr(pool, "__module__", str(pool)):
        from cockpit.telemetry import configure_tracing

        configure_tracing("cockpit-worker")
