"""Chaos: real worker processes are killed (SIGKILL) again and again while managed runs with
side effects are executing. Every run must still finish, no side effect may happen twice, and
every journal must be gap-free — and every run's trace complete, though workers store spans in
background batches and the killed ones took theirs with them."""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from cockpit.audit import Actor
from fleet import services
from fleet.models import FINAL_RUN_STATUSES, Run, RunEvent, RunStatus, Step, StepStatus
from fleet.sandbox.models import Refund
from fleet.tasks import run_execute, run_spans_sweep
from tests.support import processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

RUNS = 30
STEPS = 6
LEASE = 2  # seconds: a killed worker's runs are taken over this soon
DEADLINE = 420  # seconds: a bound for a loaded machine, not a measurement (alone it takes ~40 s)


def test_killed_workers_lose_nothing_and_repeat_nothing(make_agent, eager_off, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "RUN_LEASE_SECONDS": LEASE}
    agent = make_agent("test-chaos", tools=[])
    runs = [
        services.run_create(actor=Actor.system("chaos"), agent=agent, input={"steps": STEPS})[0] for _ in range(RUNS)
    ]
    env = {"COCKPIT_RUN_LEASE_SECONDS": str(LEASE)}
    workers = [
        processes.start_worker(name=f"chaos{i}", concurrency=2, queues="runs,maintenance", env=env) for i in range(2)
    ]
    rng = random.Random(42)
    kills = 0
    started = time.monotonic()
    try:
        next_kill = time.monotonic() + rng.uniform(1.0, 2.5)
        while time.monotonic() - started < DEADLINE:
            unfinished = Run.objects.filter(pk__in=[r.pk for r in runs]).exclude(status__in=FINAL_RUN_STATUSES).count()
            if unfinished == 0:
                break
            if kills < 4 and time.monotonic() > next_kill:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.kill()  # SIGKILL to the worker and its pool processes, mid-step
                kills += 1
                workers.append(
                    processes.start_worker(name=f"chaos-r{kills}", concurrency=2, queues="runs,maintenance", env=env)
                )
                next_kill = time.monotonic() + rng.uniform(1.5, 3.0)
            # What beat's sweeper does every few seconds in production.
            for run_id in services.runs_to_recover(grace_seconds=LEASE):
                run_execute.delay(run_id)
            time.sleep(0.5)
        # What beat's spans sweep does every ten seconds: complete the traces of ended runs.
        while time.monotonic() - started < DEADLINE + 30 and _incomplete_traces(runs):
            run_spans_sweep.delay()
            time.sleep(2)
    finally:
        for worker in workers:
            worker.stop()

    assert kills >= 3, "the workers finished before they could be killed often enough"
    finals = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("pk", "status"))
    assert set(finals.values()) == {RunStatus.SUCCEEDED}, finals
    for run in runs:
        journal = list(Step.objects.filter(run=run).order_by("seq").values_list("seq", "status", "idempotency_key"))
        assert [seq for seq, _, _ in journal] == list(range(1, STEPS + 1)), f"run {run.pk}: gaps in {journal}"
        assert all(status == StepStatus.SUCCEEDED for _, status, _ in journal)
        effects = Refund.objects.filter(ticket_ref__startswith=f"c{run.pk}-")
        # Exactly one effect per step, made under that step's key: none missing, none doubled.
        assert sorted(effects.values_list("idempotency_key", flat=True)) == sorted(k for _, _, k in journal)
        assert effects.values("ticket_ref").annotate(n=Count("id")).filter(n__gt=1).count() == 0
    taken_over = Run.objects.filter(pk__in=[r.pk for r in runs], executions__gt=1).count()
    assert taken_over > 0, "no run was ever taken over from a killed worker"
    assert _incomplete_traces(runs) == [], "spans lost with killed workers were never re-emitted"


def _incomplete_traces(runs: list[Run]) -> list[int]:
    """Runs whose trace lacks a step's span or the root span."""
    from traces.models import Span

    counts = dict(
        Span.objects.filter(trace_id__in=[r.trace_id for r in runs]).values_list("trace_id").annotate(n=Count("id"))
    )
    return [r.pk for r in runs if counts.get(r.trace_id, 0) < STEPS + 1]


def test_a_dead_workers_run_is_taken_over_as_its_lease_runs_out_without_a_sweep(make_agent, start, eager_off) -> None:
    """The message of a worker killed mid-run comes back at once (the task is acknowledged late)
    and finds the dead worker's lease still running: the run is taken over when that lease runs
    out, not at a later sweep (none runs here), and its history says so."""
    run = start(make_agent("test-linear"), n=2)
    worker = processes.start_worker(name="survivor", concurrency=1, queues="runs")
    try:
        Run.objects.filter(pk=run.pk).update(
            status=RunStatus.RUNNING,
            lease_owner="dead/1/x",
            lease_expires_at=timezone.now() + timedelta(seconds=LEASE),
        )
        run_execute.delay(run.pk)  # the redelivered message
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and Run.objects.get(pk=run.pk).status != RunStatus.SUCCEEDED:
            time.sleep(0.2)
    finally:
        worker.stop()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.lease_owner)
    (note,) = run.events.filter(kind=RunEvent.Kind.NOTE)
    assert note.reason.startswith("resumed after worker loss") and note.data["lost_worker"] == "dead/1/x"
