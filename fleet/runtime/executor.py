"""Executing a run on a worker: claim it, run (or replay) the agent function, and leave the run
in a state that says what happens next.

Outcomes of one execution:

* the function returns → ``succeeded``;
* it raises ``Suspend`` → ``paused`` or ``waiting_approval`` (the worker is freed);
* ``CancelRun`` → side effects are compensated in reverse order, then ``cancelled``;
* ``Reschedule`` (slice used up) → the run stays ``running`` and a fresh task carries on;
* ``LeaseLost`` → another worker owns the run now: stop without writing;
* any other exception → ``failed`` with the error.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from fleet import services
from fleet.models import Run, RunStatus, StepKind, StepStatus
from fleet.runtime import registry
from fleet.runtime.context import Reschedule, RunContext
from fleet.runtime.errors import (
    ActionRejected,
    CancelRun,
    LeaseLost,
    NonDeterminism,
    StepFailed,
    Suspend,
)

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews the leases of the runs this process is executing, from one background thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, str] = {}
        self._pid = 0

    def hold(self, run_id: int, owner: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (or after a fork)
                self._pid = os.getpid()
                self._held = {}
                threading.Thread(target=self._beat, name="run-heartbeat", daemon=True).start()
            self._held[run_id] = owner

    def release(self, run_id: int) -> None:
        with self._lock:
            self._held.pop(run_id, None)

    def _beat(self) -> None:
        while True:
            lease = services.lease_seconds()
            time.sleep(max(0.5, lease / 3))
            with self._lock:
                held = dict(self._held)
            try:
                until = timezone.now() + timedelta(seconds=lease)
                for run_id, owner in held.items():
                    Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_expires_at=until)
            except Exception:  # noqa: BLE001 - a missed beat is survivable; the next one retries
                logger.warning("could not renew run leases", exc_info=True)
            finally:
                connection.close()


heartbeat = Heartbeat()


def new_owner() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def execute(run_id: int) -> str:
    """Execute the run if it is free to take. Returns what happened (for logs and tests)."""
    owner = new_owner()
    run = services.run_claim(run_id=run_id, owner=owner)
    if run is None:
        return "not claimed"
    heartbeat.hold(run.pk, owner)
    try:
        if run.status != RunStatus.RUNNING:  # paused or waiting, with a cancellation to finish
            return _finish_cancel(run, owner, run.directive_reason or "cancelled")
        return _execute(run, owner)
    except LeaseLost:
        logger.warning("run %s: lease lost to another worker; stopping here", run_id)
        return "lease lost"
    except (OperationalError, InterfaceError):
        # Losing the database is the worker's trouble, not the run's: leave the run as it is
        # (its journal is intact) and let it be taken up again (the task retries; failing that,
        # the sweeper does once the lease runs out).
        heartbeat.release(run_id)
        with contextlib.suppress(OperationalError, InterfaceError):
            Run.objects.filter(pk=run_id, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
        raise
    finally:
        heartbeat.release(run_id)


def lease_left(run_id: int) -> float | None:
    """Seconds until the lease of the worker holding this running run runs out; ``None`` when no
    worker holds it (or the run is not running)."""
    row = (
        Run.objects.filter(pk=run_id, status=RunStatus.RUNNING, lease_expires_at__isnull=False)
        .exclude(lease_owner="")
        .exclude(lease_owner__startswith=services.REQUEUED)
        .values_list("lease_expires_at", flat=True)
        .first()
    )
    return None if row is None else max(0.0, (row - timezone.now()).total_seconds())


def _execute(run: Run, owner: str) -> str:
    try:
        spec = registry.get_agent(run.agent.entrypoint or run.agent.slug)
    except LookupError as exc:
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=str(exc), error=str(exc))
        return "failed"
    context = RunContext(run, owner=owner, slice_seconds=settings.COCKPIT["RUN_SLICE_SECONDS"])
    try:
        inspect.signature(spec.fn).bind(context, **context.input)
    except TypeError as exc:
        message = f"the input does not fit {spec.name}: {exc}"
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=message, error=message)
        return "failed"
    try:
        result = spec.fn(context, **context.input)
    except Suspend as suspend:
        if not suspend.parked:
            services.run_release(run=run, owner=owner, status=suspend.status, reason=suspend.reason)
        return suspend.status
    except CancelRun as cancel:
        return _finish_cancel(run, owner, cancel.reason)
    except Reschedule:
        services.run_release(run=run, owner=owner, requeue=True)
        return "rescheduled"
    except ActionRejected as exc:
        message = f"{exc.step_name} was rejected: {exc.message}"
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=message, error=message)
        return "failed"
    except StepFailed as exc:
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=str(exc), error=str(exc))
        return "failed"
    except NonDeterminism as exc:
        message = f"the agent's code does not replay its journal: {exc}"
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=message, error=message)
        return "failed"
    except (OperationalError, InterfaceError):
        raise  # the database is unreachable: not the agent's fault (see execute)
    except Exception as exc:  # noqa: BLE001 - the agent's own code failed
        logger.exception("run %s: the agent function raised", run.pk)
        message = f"{type(exc).__name__}: {exc}"
        services.run_release(run=run, owner=owner, status=RunStatus.FAILED, reason=message, error=message)
        return "failed"
    services.run_release(run=run, owner=owner, status=RunStatus.SUCCEEDED, reason="finished", result=result)
    return "succeeded"


def _finish_cancel(run: Run, owner: str, reason: str) -> str:
    """Undo what can be undone, newest first, each undo journaled as a step; then end the run."""
    failures = []
    for original in services.pending_compensations(run):
        spec = registry.get_tool(registry.get_tool(original.name).compensation)
        seq = (run.steps.order_by("-seq").values_list("seq", flat=True).first() or 0) + 1
        existing = (
            run.steps.filter(kind=StepKind.TOOL, compensates=original.seq).exclude(status=StepStatus.SUCCEEDED).first()
        )
        step = existing or services.compensation_begin(
            run=run, owner=owner, seq=seq, tool=spec.name, original=original
        )
        context = RunContext(run, owner=owner, slice_seconds=3600)
        undo = functools.partial(spec.fn, args=original.input, result=original.output)
        try:
            context.invoke_tool(step, spec, original.input, undo)
        except (StepFailed, Suspend) as exc:
            failures.append(f"{original.name} (step {original.seq}): {exc}")
    note = f"; could not undo: {'; '.join(failures)}" if failures else ""
    services.run_release(
        run=run,
        owner=owner,
        status=RunStatus.CANCELLED,
        reason=reason + note,
        error=note.removeprefix("; "),
    )
    return "cancelled"
