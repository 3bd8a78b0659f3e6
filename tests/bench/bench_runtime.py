"""The durable runtime: what journaling costs per step, and how many runs progress at once."""

from __future__ import annotations

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
    from fleet.models import ModelProvider, Run
    from fleet.providers.base import ChatRequest
    from fleet.providers.simulated import SimulatedProvider
    from fleet.runtime import executor
    from fleet.services import run_create

    ModelProvider.objects.update_or_create(name="bench-instant", defaults={"kind": "simulated", "options": {}})
    # What the simulated model itself costs per call, to tell the journal's share from the work's.
    model = SimulatedProvider("bench-instant", {})
    started = time.perf_counter()
    for i in range(OVERHEAD_STEPS):
        model.chat(
            ChatRequest(model="sim-small", messages=[{"role": "user", "content": f"benchmark step {i}"}], seed=str(i))
        )
    model_ms = (time.perf_counter() - started) / OVERHEAD_STEPS * 1000

    lines = []
    for entrypoint, label, work_ms in (
        ("test-linear", "checkpoint step", 0.0),
        ("test-bench", "LLM step (simulated, 0 ms)", model_ms),
    ):
        agent = _agent(f"bench-{entrypoint}", "bench-instant", entrypoint)
        argument = "n" if entrypoint == "test-linear" else "steps"
        with transaction.atomic():
            run, _ = run_create(actor=Actor.system("bench"), agent=agent, input={argument: OVERHEAD_STEPS})
        started = time.perf_counter()
        executor.execute(run.pk)
        per_step = (time.perf_counter() - started) / OVERHEAD_STEPS * 1000
        run = Run.objects.get(pk=run.pk)
        assert run.status == "succeeded", run.error
        lines.append(
            f"{label:<28} {per_step - work_ms:5.2f} ms journal overhead per step "
            f"({per_step:.2f} ms end to end, {work_ms:.2f} ms of it the model's own work; n={OVERHEAD_STEPS}; "
            "target < 5 ms)"
        )
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
