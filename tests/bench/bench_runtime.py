"""The durable runtime: what journaling costs per step, and how many runs progress at once."""

from __future__ import annotations

import statistics
import time
from decimal import Decimal

TITLE = "Runtime: journal overhead per step, and concurrent runs"
OVERHEAD_STEPS = 200
CONCURRENT_RUNS = 200
STEPS_PER_RUN = 5
MODEL_LATENCY_MS = 300
WORKERS = 2
THREADS_PER_WORKER = 100


def _agent(slug: str, provider: str, entrypoint: str):  # noqa: ANN202
    from cockpit.audit import Actor
    from cockpit.models import Team
    from fleet.models import Agent
    from fleet.services import agent_create, agent_version_create

    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    agent = Agent.objects.filter(team=team, slug=slug).first()
    if agent is None:
        actor = Actor.system("bench")
        agent = agent_create(actor=actor, team=team, slug=slug, name=slug, entrypoint=entrypoint, tier=1)
        agent_version_create(
            actor=actor,
            agent=agent,
            version="1.0.0",
            primary_model=f"{provider}/sim-small",
            max_steps=10_000,
            run_budget=Decimal("1000"),
        )
    return Agent.objects.get(pk=agent.pk)


def _overhead() -> list[str]:
    from django.db import transaction

    from cockpit.audit import Actor
    from fleet.models import ModelProvider, Run, Step
    from fleet.runtime import executor
    from fleet.services import run_create

    ModelProvider.objects.update_or_create(name="bench-instant", defaults={"kind": "simulated", "options": {}})
    lines = []
    for entrypoint, label in (
        ("test-linear", "checkpoint step"),
        ("test-bench", "LLM step (simulated, 0 ms)"),
    ):
        agent = _agent(f"bench-{entrypoint}", "bench-instant", entrypoint)
        argument = "n" if entrypoint == "test-linear" else "steps"
        with transaction.atomic():
            run, _ = run_create(actor=Actor.system("bench"), agent=agent, input={argument: OVERHEAD_STEPS})
        started = time.perf_counter()
        executor.execute(run.pk)
        elapsed = time.perf_counter() - started
        run = Run.objects.get(pk=run.pk)
        assert run.status == "succeeded", run.error
        durations = [s.duration_seconds or 0 for s in Step.objects.filter(run=run)]
        lines.append(
            f"{label:<28} {elapsed / OVERHEAD_STEPS * 1000:6.2f} ms per step end to end "
            f"(journal in, work, journal out, span; n={OVERHEAD_STEPS}; target < 5 ms)"
        )
        lines.append(f"{'':<28} {statistics.median(durations) * 1000:6.2f} ms median inside the step")
    return lines


def _concurrency() -> list[str]:
    from django.db import transaction

    from cockpit.audit import Actor
    from cockpit.celery import app
    from fleet.models import ModelProvider, Run, Step
    from fleet.services import run_create
    from tests.support import processes

    app.conf.task_always_eager = False
    ModelProvider.objects.update_or_create(
        name="bench-latency",
        defaults={
            "kind": "simulated",
            "options": {"latency_ms": MODEL_LATENCY_MS, "jitter_ms": 50},
        },
    )
    agent = _agent("bench-concurrency", "bench-latency", "test-bench")
    workers = [
        processes.start_worker(
            name=f"bench{i}",
            queues="runs",
            extra=["--pool", "threads"],
            concurrency=THREADS_PER_WORKER,
        )
        for i in range(WORKERS)
    ]
    try:
        with transaction.atomic():
            ids = [
                run_create(actor=Actor.system("bench"), agent=agent, input={"steps": STEPS_PER_RUN})[0].pk
                for _ in range(CONCURRENT_RUNS)
            ]
        started = time.monotonic()
        peak_executing = 0
        progressing_at: float | None = None
        while time.monotonic() - started < 300:
            runs = Run.objects.filter(pk__in=ids)
            executing = runs.filter(status="running").exclude(lease_owner="").count()
            peak_executing = max(peak_executing, executing)
            if progressing_at is None and runs.filter(step_count__gt=0).count() == CONCURRENT_RUNS:
                progressing_at = time.monotonic() - started
            if not runs.exclude(status__in=["succeeded", "failed", "cancelled"]).exists():
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        done = Run.objects.filter(pk__in=ids, status="succeeded").count()
        steps = Step.objects.filter(run_id__in=ids).count()
    finally:
        for worker in workers:
            worker.stop()
    ideal = STEPS_PER_RUN * MODEL_LATENCY_MS / 1000
    return [
        f"{CONCURRENT_RUNS} runs × {STEPS_PER_RUN} LLM steps of ~{MODEL_LATENCY_MS} ms, "
        f"{WORKERS} workers × {THREADS_PER_WORKER} threads:",
        f"  {done}/{CONCURRENT_RUNS} succeeded in {elapsed:.1f} s ({steps / elapsed:.0f} steps/s; "
        f"one run alone takes ≥ {ideal:.1f} s)",
        f"  peak runs executing at once: {peak_executing}; all {CONCURRENT_RUNS} had progressed after "
        f"{progressing_at:.1f} s"
        if progressing_at is not None
        else "  not every run progressed",
    ]


def run() -> list[str]:
    return _overhead() + _concurrency()
