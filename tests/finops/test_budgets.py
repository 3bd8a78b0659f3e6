"""Budgets: periods and scopes, enforcement before every LLM call by reserving its worst case
(pause, degrade, alert only, per run, parallel calls, a crashed worker's reservation, settling
once), the external pause directive, alerts once per threshold per period through email, a
signed webhook and the live banner event, and raising a budget to resume what it paused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from cockpit import webhooks
from cockpit.models import AuditEvent
from finops.budgets import Subject, applies
from finops.models import (
    Budget,
    BudgetAlert,
    BudgetNotification,
    BudgetPeriod,
    BudgetReservation,
    BudgetScope,
    BudgetSpend,
    period_bounds,
)
from finops.services import budget_alerts_raise, budget_create, budget_raise, budget_update
from finops.tasks import budget_evaluate, budget_notification_deliver
from fleet.models import AgentKind, Run, RunStatus, Step
from fleet.services import run_create
from tests.finops.conftest import SYSTEM, T, span_row, write
from tests.support.receivers import Receiver


def budget(**fields: Any) -> Budget:
    fields.setdefault("name", "Test budget")
    fields.setdefault("scope", BudgetScope.TEAM)
    fields.setdefault("period", BudgetPeriod.MONTH)
    return budget_create(actor=SYSTEM, **fields)


# --- Periods and scopes -----------------------------------------------------------------------


def test_calendar_periods(settings: Any) -> None:
    at = datetime(2026, 3, 11, 23, 30, tzinfo=UTC)  # a Wednesday
    assert period_bounds("day", at)[0] == "2026-03-11"
    key, start, end = period_bounds("week", at)
    assert (key, start.date().isoformat(), end.date().isoformat()) == ("2026-W11", "2026-03-09", "2026-03-16")
    key, start, end = period_bounds("month", datetime(2026, 12, 31, 12, tzinfo=UTC))
    assert (key, start.date().isoformat(), end.date().isoformat()) == ("2026-12", "2026-12-01", "2027-01-01")


def test_periods_follow_the_configured_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "Asia/Tokyo"
    # 23:30 UTC on the 11th is already the 12th in Tokyo.
    assert period_bounds("day", datetime(2026, 3, 11, 23, 30, tzinfo=UTC))[0] == "2026-03-12"


def test_scopes(team, other_team, make_agent) -> None:  # noqa: ANN001
    agent = make_agent()
    run_of_agent = Subject(team.pk, agent.pk, "finops-spender", frozenset({"cockpit.cost_center=claims"}))
    elsewhere = Subject(other_team.pk, 0, "other", frozenset())
    cases = {
        budget(name="all", scope=BudgetScope.GLOBAL, limit_usd=1): (True, True),
        budget(name="team", team=team, limit_usd=1): (True, False),
        budget(name="agent", scope=BudgetScope.AGENT, agent=agent, limit_usd=1): (True, False),
        budget(name="flow", scope=BudgetScope.WORKFLOW, workflow="finops-spender", limit_usd=1): (True, False),
        budget(name="tag", scope=BudgetScope.TAG, tag="cockpit.cost_center=claims", limit_usd=1): (True, False),
        budget(
            name="tag of b", scope=BudgetScope.TAG, team=other_team, tag="cockpit.cost_center=claims", limit_usd=1
        ): (
            False,
            False,
        ),
    }
    for item, expected in cases.items():
        assert (applies(item, run_of_agent), applies(item, elsewhere)) == expected, item.name
    assert Budget.objects.get(name="agent").team == team  # an agent budget belongs to the agent's team


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scope": BudgetScope.TEAM}, "team"),
        ({"scope": BudgetScope.TAG, "tag": "no-equals-sign"}, "tag"),
        ({"scope": BudgetScope.WORKFLOW}, "workflow"),
        ({"scope": BudgetScope.GLOBAL, "limit_usd": 0}, "limit_usd"),
        ({"scope": BudgetScope.GLOBAL, "thresholds": [50, "eighty"]}, "thresholds"),
        ({"scope": BudgetScope.GLOBAL, "limit_usd": "lots"}, "limit_usd"),
        ({"scope": BudgetScope.GLOBAL, "period": "fortnight"}, "period"),
    ],
)
def test_invalid_budgets_are_refused_with_the_field(fields: dict[str, Any], field: str) -> None:
    fields.setdefault("limit_usd", 10)
    with pytest.raises(ValidationError) as error:
        budget(**fields)
    assert field in error.value.message_dict
    assert not Budget.objects.exists() and not AuditEvent.objects.filter(action="budget.create").exists()


# --- Enforcement for managed runs -------------------------------------------------------------


# The worst case of one call of the test agents on sim-large: a few input tokens, 32 out.
WORST_CALL = Decimal("0.0004")


def step_costs(run: Run) -> list[Decimal]:
    return [s.cost for s in Step.objects.filter(run=run, kind="llm", status="succeeded").order_by("seq")]


def test_a_run_is_paused_at_the_cap_and_resumed_when_the_budget_is_raised(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent()
    cap = budget(team=team, limit_usd="0.002", period=BudgetPeriod.DAY, alert_emails=["fin@example.com"])
    run = execute(start(agent, n=10))
    assert run.status == RunStatus.PAUSED
    assert run.status_reason.startswith("budget_exceeded: Test budget [budget #")
    assert "the next call may cost up to $" in run.status_reason
    costs = step_costs(run)
    spend = BudgetSpend.objects.get(budget=cap)
    assert spend.spent == run.cost == sum(costs) > 0
    assert spend.spent <= cap.limit_usd  # the call that would not fit was not made
    # Stopped when the next call's worst case (32 output tokens of sim-large) did not fit.
    assert cap.limit_usd - spend.spent < WORST_CALL
    # The refused call's step waits, not started, for the run to be resumed.
    assert list(Step.objects.filter(run=run).exclude(status="succeeded").values_list("seq", "status")) == [
        (len(costs) + 1, "started")
    ]
    assert not BudgetReservation.objects.exists()
    # The cap stopped a run: the 100 % alert is raised although the spend is below the limit.
    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [50, 80, 100]
    assert len(mail.outbox) == 3 and "reached its limit" in mail.outbox[-1].subject

    # An operator's resume alone does not get past the cap ...
    from fleet.services import run_resume

    run = execute(run_resume(actor=SYSTEM, run=run, reason="try again"))
    assert run.status == RunStatus.PAUSED and len(step_costs(run)) == len(costs)
    # ... raising the budget does, and resumes the run (audited).
    raised, resumed = budget_raise(actor=SYSTEM, budget=cap, limit_usd="1.00", reason="quarter-end push")
    assert [r.pk for r in resumed] == [run.pk]
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == RunStatus.SUCCEEDED and len(step_costs(run)) == 10
    event = AuditEvent.objects.get(action="budget.raise")
    assert (event.before, event.after, event.reason) == (
        {"limit_usd": "0.002000"},
        {"limit_usd": "1.00"},
        "quarter-end push",
    )


def test_a_budget_created_mid_period_counts_what_the_period_already_spent(team, other_team) -> None:  # noqa: ANN001
    from tests.finops import costdata

    costdata.rollup(team, cost="3.25")
    costdata.rollup(team, cost="1.00", at=timezone.now() - timedelta(days=40))  # an earlier month
    costdata.rollup(other_team, cost="7.00")
    monthly = budget(team=team, limit_usd="10")
    assert BudgetSpend.objects.get(budget=monthly).spent == Decimal("3.25")


def test_raising_needs_a_reason_and_a_higher_limit(team) -> None:  # noqa: ANN001
    cap = budget(team=team, limit_usd=10)
    with pytest.raises(ValidationError, match="reason"):
        budget_raise(actor=SYSTEM, budget=cap, limit_usd=20, reason=" ")
    with pytest.raises(ValidationError, match="above"):
        budget_raise(actor=SYSTEM, budget=cap, limit_usd=5, reason="why not")
    cap.refresh_from_db()
    assert cap.limit_usd == 10


def test_degrade_switches_to_the_cheaper_fallback_model(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent(primary_model="sim/sim-large", fallback_models=["sim/sim-reasoner", "sim/sim-small"])
    budget(team=team, limit_usd="0.0005", action="degrade")
    run = execute(start(agent, n=8))
    assert run.status == RunStatus.SUCCEEDED  # degraded, not stopped
    models = [s.model for s in Step.objects.filter(run=run, kind="llm").order_by("seq")]
    switched = models.index("sim/sim-small")
    assert set(models[:switched]) == {"sim/sim-large"} and set(models[switched:]) == {"sim/sim-small"}
    # switched when the next call on the dearer model might not have fitted
    assert switched >= 1 and Decimal("0.0005") - sum(step_costs(run)[:switched]) < WORST_CALL


def test_degrade_without_a_cheaper_model_pauses(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent(primary_model="sim/sim-small", fallback_models=["sim/sim-large"])
    budget(team=team, limit_usd="0.00005", action="degrade")
    run = execute(start(agent, n=20))
    assert run.status == RunStatus.PAUSED and "no cheaper fallback model" in run.status_reason


def test_alert_only_budgets_never_stop_a_run(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent()
    budget(team=team, limit_usd="0.0005", action="alert")
    run = execute(start(agent, n=6))
    assert run.status == RunStatus.SUCCEEDED
    assert BudgetAlert.objects.filter(threshold=100).exists()


def test_per_run_budgets_cap_each_run_on_its_own(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent()
    each = budget(scope=BudgetScope.AGENT, agent=agent, limit_usd="0.0005", period=BudgetPeriod.RUN)
    first = execute(start(agent, n=10))
    second = execute(start(agent, n=10))
    for run in (first, second):
        assert run.status == RunStatus.PAUSED and "this run" in run.status_reason
        assert Decimal("0.0005") - WORST_CALL < run.cost <= Decimal("0.0005")
    periods = set(BudgetAlert.objects.filter(budget=each, threshold=100).values_list("period", flat=True))
    assert periods == {f"run:{first.pk}", f"run:{second.pk}"}


@pytest.mark.django_db(transaction=True)  # parallel calls run on their own connections
def test_parallel_calls_are_charged_and_held_to_the_cap(make_agent, start, execute, team) -> None:  # noqa: ANN001
    agent = make_agent(entrypoint="finops-fanout")
    watch = budget(name="watch", team=team, limit_usd="100", action="alert")
    cap = budget(name="cap", scope=BudgetScope.AGENT, agent=agent, limit_usd="0.004", period=BudgetPeriod.DAY)
    run = execute(start(agent, rounds=8, width=4, max_tokens=64))
    costs = step_costs(run)
    assert all(c is not None and c > 0 for c in costs) and len(costs) > 4
    # Every call made in parallel is charged, to every budget covering the run ...
    assert BudgetSpend.objects.get(budget=watch).spent == BudgetSpend.objects.get(budget=cap).spent == sum(costs)
    assert run.cost == sum(costs)
    # ... and none was made past the cap: the branch whose worst case did not fit paused the run.
    assert run.status == RunStatus.PAUSED and run.status_reason.startswith("budget_exceeded: cap [budget #")
    assert Decimal("0.004") - Decimal("0.0007") < sum(costs) <= Decimal("0.004")
    assert not BudgetReservation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_run_s_own_budget_holds_with_parallel_calls(make_agent, start, execute) -> None:  # noqa: ANN001
    from fleet.services import agent_version_create

    agent = make_agent(entrypoint="finops-fanout")
    agent_version_create(
        actor=SYSTEM, agent=agent, version="1.1.0", primary_model="sim/sim-large", run_budget=Decimal("0.003")
    )
    run = execute(start(agent, rounds=8, width=4, max_tokens=64))
    assert run.status == RunStatus.PAUSED and run.status_reason.startswith("budget_exceeded: this run has cost")
    assert Decimal("0.003") - Decimal("0.0007") < run.cost == sum(step_costs(run)) <= Decimal("0.003")


def _leased(agent: Any, owner: str, *, seconds: int = 60) -> Run:
    run, _ = run_create(actor=SYSTEM, agent=agent, input={})
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, lease_owner=owner, lease_expires_at=timezone.now() + timedelta(seconds=seconds)
    )
    return Run.objects.select_related("agent", "team", "version").get(pk=run.pk)


def test_settling_a_reservation_twice_charges_once(make_agent, team) -> None:  # noqa: ANN001
    from finops.budgets import FinopsBudgetGuard, Reservation

    cap = budget(team=team, limit_usd="1", period=BudgetPeriod.DAY)
    run = _leased(make_agent(), "worker-1")
    held = FinopsBudgetGuard().reserve(run=run, owner="worker-1", seq=1, amount=Decimal("0.5"))
    assert held.verdict.verdict == "ok" and BudgetReservation.objects.get().amount == Decimal("0.5")
    held.settle(Decimal("0.1"))
    held.settle(Decimal("0.1"))
    # A retry elsewhere of the same settlement (the same reservation rows) charges nothing either.
    Reservation(run.pk, held.spends, held.ids, held.verdict).settle(Decimal("0.1"))
    assert BudgetSpend.objects.get(budget=cap).spent == Decimal("0.1")
    assert not BudgetReservation.objects.exists()


def test_a_crashed_worker_s_reservation_stops_counting_when_its_lease_runs_out(make_agent, team, monkeypatch) -> None:  # noqa: ANN001
    from finops import budgets
    from finops.tasks import budget_holds_purge

    monkeypatch.setattr(budgets, "WAIT_LIMIT_SECONDS", 0.2)
    budget(team=team, limit_usd="1", period=BudgetPeriod.DAY)
    agent = make_agent()
    crashed, other = _leased(agent, "worker-1"), _leased(agent, "worker-2", seconds=3 * 3600)
    guard = budgets.FinopsBudgetGuard()
    assert guard.reserve(run=crashed, owner="worker-1", seq=3, amount=Decimal("0.7")).verdict.verdict == "ok"
    # worker-1 dies here: its reservation still counts while its lease runs ...
    waited = guard.reserve(run=other, owner="worker-2", seq=1, amount=Decimal("0.5"))
    assert waited.verdict.verdict == "pause" and "calls in flight" in waited.verdict.reason
    # ... and no longer once the lease has run out.
    Run.objects.filter(pk=crashed.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert guard.reserve(run=other, owner="worker-2", seq=1, amount=Decimal("0.5")).verdict.verdict == "ok"
    assert budget_holds_purge.apply().get() == 0  # kept an hour (a late settlement still charges)
    with time_machine.travel(timezone.now() + timedelta(hours=2)):
        assert budget_holds_purge.apply().get() == 1  # worker-2 still holds its lease: its one stays
    assert list(BudgetReservation.objects.values_list("run_id", flat=True)) == [other.pk]


def test_a_call_that_does_not_fit_even_with_nothing_in_flight_is_refused_at_once(make_agent, team) -> None:  # noqa: ANN001
    from finops.budgets import FinopsBudgetGuard

    budget(team=team, limit_usd="0.01", period=BudgetPeriod.DAY)
    run = _leased(make_agent(), "worker-1")
    refused = FinopsBudgetGuard().reserve(run=run, owner="worker-1", seq=1, amount=Decimal("0.010001"))
    assert refused.verdict.verdict == "pause" and "may cost up to $0.0100" in refused.verdict.reason
    assert not BudgetReservation.objects.exists()
    fits = FinopsBudgetGuard().reserve(run=run, owner="worker-1", seq=1, amount=Decimal("0.01"))
    assert fits.verdict.verdict == "ok"  # exactly the limit fits


def test_a_budget_deleted_meanwhile_does_not_let_a_call_skip_the_others(make_agent, team) -> None:  # noqa: ANN001
    from finops.budgets import FinopsBudgetGuard

    kept = budget(name="kept", team=team, limit_usd="1", period=BudgetPeriod.DAY)
    gone = budget(name="gone", team=team, limit_usd="1", period=BudgetPeriod.MONTH)
    run = _leased(make_agent(), "worker-1")
    guard = FinopsBudgetGuard()
    guard.reserve(run=run, owner="worker-1", seq=1, amount=Decimal("0.1")).settle(Decimal("0.1"))
    Budget.objects.filter(pk=gone.pk).delete()  # elsewhere: this process still has it cached
    held = guard.reserve(run=run, owner="worker-1", seq=2, amount=Decimal("0.95"))
    assert held.verdict.verdict == "pause" and f"[budget #{kept.pk}]" in held.verdict.reason
    held = guard.reserve(run=run, owner="worker-1", seq=2, amount=Decimal("0.2"))
    assert held.verdict.verdict == "ok"
    assert list(BudgetReservation.objects.values_list("spend__budget", flat=True)) == [kept.pk]


def test_budgets_of_other_teams_and_agents_do_not_apply(make_agent, start, execute, team, other_team) -> None:  # noqa: ANN001
    agent = make_agent()
    elsewhere = make_agent("other-bot", owner=other_team)
    budget(team=other_team, limit_usd="0.00001")
    budget(scope=BudgetScope.AGENT, agent=elsewhere, limit_usd="0.00001")
    budget(scope=BudgetScope.WORKFLOW, workflow="another-entrypoint", limit_usd="0.00001")
    assert execute(start(agent, n=3)).status == RunStatus.SUCCEEDED


def test_an_inactive_budget_does_not_apply(make_agent, start, execute, team) -> None:  # noqa: ANN001
    cap = budget(team=team, limit_usd="0.00001")
    budget_update(actor=SYSTEM, budget=cap, changes={"active": False}, reason="retired")
    assert execute(start(make_agent(), n=3)).status == RunStatus.SUCCEEDED


# --- External agents --------------------------------------------------------------------------


def test_external_runs_get_a_pause_directive_when_ingest_crosses_the_cap(
    make_agent, team, django_capture_on_commit_callbacks
) -> None:  # noqa: ANN001
    agent = make_agent("claims-bot", kind=AgentKind.EXTERNAL)
    with django_capture_on_commit_callbacks(execute=True):
        run, _ = run_create(actor=SYSTEM, agent=agent, input={})
        other, _ = run_create(actor=SYSTEM, agent=agent, input={})
    Run.objects.filter(pk__in=[run.pk, other.pk]).update(status=RunStatus.RUNNING)
    budget(team=team, limit_usd="0.01", webhook_url="", alert_emails=["fin@example.com"])
    rows = [span_row(agent_key="claims-bot", attributes={"cockpit.run_id": run.pk}) for _ in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        write(team, rows)  # $0.015: over the $0.01 cap
    run.refresh_from_db()
    other.refresh_from_db()
    for each in (run, other):  # both active runs of the team are told to pause
        assert each.status == RunStatus.PAUSED and each.status_reason.startswith("budget_exceeded")
    assert AuditEvent.objects.filter(action="run.pause", actor_label="finops").count() == 2
    assert BudgetSpend.objects.get().spent == Decimal("0.015000")


# --- Alerts -----------------------------------------------------------------------------------


def test_each_threshold_alerts_once_per_period_even_when_retried(team, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    receiver = Receiver()
    try:
        cap = budget(
            team=team,
            limit_usd="0.02",
            period=BudgetPeriod.DAY,
            action="alert",
            alert_emails=["fin@example.com"],
            webhook_url=receiver.url,
            webhook_secret="s3cret",
        )
        with time_machine.travel(T, tick=False):
            for _ in range(4):  # $0.0075 each: 37.5 %, 75 % (50 % crossed), 112.5 % (80 and 100 %), 150 %
                with django_capture_on_commit_callbacks(execute=True):
                    write(team, [span_row(start=T)])
        period = "2026-03-10"
        assert sorted(BudgetAlert.objects.values_list("period", "threshold")) == [
            (period, 50),
            (period, 80),
            (period, 100),
        ]
        # A retried or duplicated task, or a second evaluation, changes nothing.
        with django_capture_on_commit_callbacks(execute=True):
            budget_evaluate.apply(args=[cap.pk, period, []]).get()
            budget_evaluate.apply(args=[cap.pk, period, []]).get()
            assert budget_alerts_raise(budget=cap, period=period) == []
        assert BudgetAlert.objects.count() == 3
        assert BudgetNotification.objects.filter(status="sent").count() == 6
        for notification in BudgetNotification.objects.all():
            assert budget_notification_deliver.apply(args=[notification.pk]).get() == "already sent or in flight"
        assert len(mail.outbox) == 3 and len(receiver.requests) == 3
        [last] = [r for r in receiver.requests if json.loads(r.body)["cockpit"]["threshold"] == 100]
        payload = json.loads(last.body)
        assert payload["cockpit"]["spent_usd"] == "0.02" and payload["cockpit"]["budget"] == cap.pk  # $0.0225
        assert "reached its limit" in payload["text"]
        stamp, signature = last.headers["x-cockpit-timestamp"], last.headers["x-cockpit-signature"]
        with time_machine.travel(T + timedelta(seconds=30)):
            assert webhooks.verify("s3cret", stamp, last.body, signature)
            assert not webhooks.verify("wrong", stamp, last.body, signature)
        assert not webhooks.verify("s3cret", stamp, last.body, signature)  # stale: a replay is refused
        # The next day is a new period: the thresholds alert again.
        nextday = T + timedelta(days=1)
        with time_machine.travel(nextday, tick=False), django_capture_on_commit_callbacks(execute=True):
            write(team, [span_row(start=nextday) for _ in range(2)])  # 75 %
        assert list(BudgetAlert.objects.filter(period="2026-03-11").values_list("threshold", flat=True)) == [50]
    finally:
        receiver.stop()


def test_a_failed_webhook_is_retried_without_duplicating(team, django_capture_on_commit_callbacks) -> None:  # noqa: ANN001
    receiver = Receiver(statuses=[503, 200])
    try:
        budget(team=team, limit_usd="0.01", action="alert", thresholds=[100], webhook_url=receiver.url)
        with django_capture_on_commit_callbacks(execute=True):
            write(team, [span_row(), span_row()])
        notification = BudgetNotification.objects.get()
        assert notification.status == "failed" and "503" in notification.last_error
        assert budget_notification_deliver.apply(args=[notification.pk]).get() == "sent"
        assert budget_notification_deliver.apply(args=[notification.pk]).get() == "already sent or in flight"
        assert len(receiver.requests) == 2
    finally:
        receiver.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_threshold_publishes_the_banner_event_to_the_team(make_user, team, other_team) -> None:  # noqa: ANN001
    from asgiref.sync import sync_to_async

    from cockpit.roles import Role
    from tests.support.live import connect, session_cookie

    finance = await sync_to_async(make_user)(Role.FINANCE, team)
    outsider = await sync_to_async(make_user)(Role.FINANCE, other_team)
    mine, _, _ = await connect(await sync_to_async(session_cookie)(finance), [f"team.{team.pk}"])
    theirs, _, _ = await connect(await sync_to_async(session_cookie)(outsider), [f"team.{other_team.pk}"])
    await mine.receive_json_from(timeout=5)
    await theirs.receive_json_from(timeout=5)
    cap = await sync_to_async(budget)(team=team, limit_usd="0.01", thresholds=[50])
    await sync_to_async(write)(team, [span_row()])
    events = []
    while not any(e["type"] == "finops.budget" for e in events):
        events.append(await mine.receive_json_from(timeout=5))
    alert = await sync_to_async(BudgetAlert.objects.get)()
    assert events[-1] == {
        "type": "finops.budget",
        "budget": cap.pk,
        "team": team.pk,
        "kind": "threshold",
        "threshold": 50,
        "period": alert.period,
        "action": "pause",
        "alert": alert.pk,
    }
    assert any(e["type"] == "finops.cost" for e in events)
    assert await theirs.receive_nothing(timeout=0.5)
    await mine.disconnect()
    await theirs.disconnect()
