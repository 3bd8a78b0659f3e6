"""FinOps: what budget checking costs per LLM step (target < 2 ms), and what the cost rollups
and budget charging add to each ingest batch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

from tests.bench.util import percentile

TITLE = "FinOps: budget check per LLM step, rollup upsert per ingest batch"
CHECKS = 2000
OTHER_TEAMS = 50


def _setup():  # noqa: ANN202
    from cockpit.audit import Actor
    from cockpit.models import Team
    from finops.models import Budget, BudgetScope
    from finops.services import budget_create
    from fleet.models import Agent, AgentKind, AgentVersion, Run, RunKind, RunStatus

    actor = Actor.system("bench")
    team, _ = Team.objects.get_or_create(slug="bench-budgets", defaults={"name": "Bench budgets"})
    agent, _ = Agent.objects.get_or_create(
        team=team,
        slug="bench-spender",
        defaults={"name": "Bench spender", "kind": AgentKind.MANAGED, "entrypoint": "bench-spender"},
    )
    version = AgentVersion.objects.filter(agent=agent).first() or AgentVersion.objects.create(
        agent=agent, version="1.0.0", primary_model="sim/sim-large", fallback_models=["sim/sim-small"]
    )
    Budget.objects.filter(name__startswith="bench ").delete()
    # Budgets that cover the run: its team (monthly, pause), its agent (daily, degrade), its
    # workflow, everything (alert only) and a per-run cap; plus budgets of 50 other teams.
    big = Decimal("1000000")
    budget_create(actor=actor, name="bench team", scope=BudgetScope.TEAM, team=team, limit_usd=big)
    budget_create(actor=actor, name="bench agent", scope=BudgetScope.AGENT, agent=agent, limit_usd=big, period="day")
    budget_create(actor=actor, name="bench flow", scope=BudgetScope.WORKFLOW, workflow="bench-spender", limit_usd=big)
    budget_create(actor=actor, name="bench all", scope=BudgetScope.GLOBAL, limit_usd=big, action="alert")
    budget_create(actor=actor, name="bench run", scope=BudgetScope.TEAM, team=team, limit_usd=big, period="run")
    for n in range(OTHER_TEAMS):
        other, _ = Team.objects.get_or_create(slug=f"bench-budgets-{n}", defaults={"name": f"Bench budgets {n}"})
        budget_create(actor=actor, name=f"bench other {n}", scope=BudgetScope.TEAM, team=other, limit_usd=big)
    run = Run.objects.create(team=team, agent=agent, version=version, kind=RunKind.MANAGED, status=RunStatus.RUNNING)
    return team, agent, Run.objects.select_related("agent", "team", "version").get(pk=run.pk)


def _checks(run, guard, pricer, *, settle: bool) -> list[float]:  # noqa: ANN001
    from fleet.providers.base import Usage

    usage = Usage(input_tokens=1200, output_tokens=300)
    timings = []
    for _ in range(CHECKS):
        started = time.perf_counter()
        verdict = guard.check(run=run, step_kind="llm")
        timings.append(time.perf_counter() - started)
        assert verdict.verdict == "ok", verdict
        if settle:
            pricer.price(provider_system="simulated", model="sim-large", usage=usage)
    return timings


def _line(label: str, timings: list[float]) -> str:
    ms = [t * 1000 for t in timings]
    return f"{label:<52} p50 {percentile(ms, 50):.3f} ms  p95 {percentile(ms, 95):.3f} ms  max {max(ms):.2f} ms"


def _budget_check() -> Iterator[str]:
    from finops import budgets
    from finops.prices import CockpitPricer
    from fleet import seams

    team, agent, run = _setup()
    guard, pricer = budgets.FinopsBudgetGuard(), CockpitPricer()
    baseline = seams.RunBudgetGuard()
    timings = []
    for _ in range(CHECKS):
        started = time.perf_counter()
        baseline.check(run=run, step_kind="llm")
        timings.append(time.perf_counter() - started)
    yield _line("run's own budget only (the default guard)", timings)
    _checks(run, guard, pricer, settle=True)  # warm: spend rows exist, caches filled
    yield _line(
        f"5 budgets cover the run, {OTHER_TEAMS} others exist: check", _checks(run, guard, pricer, settle=True)
    )
    settle_timings = []
    from fleet.providers.base import Usage

    usage = Usage(input_tokens=1200, output_tokens=300)
    for _ in range(CHECKS):
        guard.check(run=run, step_kind="llm")
        started = time.perf_counter()
        pricer.price(provider_system="simulated", model="sim-large", usage=usage)
        settle_timings.append(time.perf_counter() - started)
    yield _line("the step's cost charged to those budgets (pricer)", settle_timings)
    yield _line("a tool step (no hold taken)", [_tool(guard, run) for _ in range(CHECKS)])
    budgets.release_pending()


def _tool(guard, run) -> float:  # noqa: ANN001
    started = time.perf_counter()
    guard.check(run=run, step_kind="tool")
    return time.perf_counter() - started


def _rows(n: int, batch: int):  # noqa: ANN202
    from django.utils import timezone

    now = timezone.now()
    rows = []
    for i in range(n):
        start = now - timedelta(seconds=i)
        rows.append(
            {
                "trace_id": f"{batch:016x}{i // 20:016x}",
                "span_id": f"{batch:08x}{i:08x}",
                "parent_span_id": "",
                "name": "chat gpt-4o",
                "kind": 3,
                "span_type": "llm",
                "start_time": start,
                "end_time": start,
                "duration_us": 1000,
                "status_code": 1 if i % 10 else 2,
                "status_message": "",
                "error_type": "",
                "service_name": "bench",
                "scope_name": "bench",
                "agent_key": f"bench-agent-{i % 5}",
                "agent_name": "",
                "agent_version": "1.0.0",
                "conversation_id": "",
                "model": ("gpt-4o", "gpt-4o-mini", "claude-3-5-haiku-latest")[i % 3],
                "provider": ("openai", "openai", "anthropic")[i % 3],
                "input_tokens": 1000 + i,
                "output_tokens": 200,
                "cache_read_tokens": 0,
                "reasoning_tokens": None,
                "cache_write_tokens": None,
                "input_audio_tokens": None,
                "output_audio_tokens": None,
                "tool_name": "",
                "attributes": {"cockpit.cost_center": ("claims", "fraud")[i % 2], "gen_ai.workflow.name": "bench"},
                "events": [],
                "links": [],
                "resource": {"service.name": "bench"},
                "truncated": False,
                "received_at": now,
            }
        )
    return rows


def _ingest() -> Iterator[str]:
    from django.utils import timezone

    from cockpit.models import Team
    from finops.rollups import on_spans_stored
    from traces import signals, store

    team = Team.objects.get(slug="bench-budgets")
    batch_id = int(time.time() * 1000) % 2**31
    for size in (100, 500):
        results = {}
        for connected in (False, True):
            if not connected:
                signals.spans_stored.disconnect(dispatch_uid="finops.rollups")
            try:
                timings = []
                for _ in range(20):
                    batch_id += 1
                    rows = _rows(size, batch_id)
                    started = time.perf_counter()
                    store.write(team, rows, now=timezone.now())
                    timings.append(time.perf_counter() - started)
            finally:
                if not connected:
                    signals.spans_stored.connect(on_spans_stored, dispatch_uid="finops.rollups")
            results[connected] = timings
        without, with_rollups = percentile(results[False], 50) * 1000, percentile(results[True], 50) * 1000
        yield (
            f"batch of {size} spans: store.write p50 {without:.1f} ms without FinOps, {with_rollups:.1f} ms with "
            f"rollups + budget charges (+{with_rollups - without:.1f} ms, "
            f"{(with_rollups - without) * 1000 / size:.0f} µs per span)"
        )


def run() -> Iterator[str]:
    import os

    from finops import budgets
    from finops.models import Budget

    try:
        yield from _budget_check()
        yield from _ingest()
    finally:
        # The global budget would otherwise weigh on the benchmarks that follow (the runtime's).
        Budget.objects.filter(name__startswith="bench ").delete()
        budgets.forget_budgets()
    yield (
        "target < 2 ms per budget check; load average during the run: "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
        + f" on {os.cpu_count()} cores"
    )
