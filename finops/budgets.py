"""Budget enforcement: the budget guard the runtime asks before every step, and the spend
counters it reads.

Where spend is counted (``BudgetSpend``, one row per budget and period):

* a managed run's LLM step is charged the moment its cost is known — the runtime prices it
  through the pricer seam right after the model answers, in the thread that checked the step,
  and ``step_priced`` charges the budgets that check found;
* every other span with a cost (external agents) is charged when it is stored
  (``charge_spans``, in the span store's transaction). Spans of Cockpit's own runtime are not
  charged again there.

How the cap holds with concurrent runs. Before an LLM step the guard locks the budget's
counter row and looks at the steps *in flight* (``BudgetHold``: admitted, not yet paid for):

* spent ≥ limit → the cap applies (pause, or degrade to a cheaper model);
* nothing in flight → admitted (this one step may overshoot: the bound the issue allows);
* else admitted only if ``spent + in-flight estimates + this step's estimate < limit``, where a
  step's estimate is 1.5 × the costliest step seen by the budget (unknown before the first
  step of a budget is paid: steps then go one at a time); otherwise the check waits for the
  steps in flight to be paid (tens of ms to a model call's length) and looks again.

So the spend can exceed the limit by one step's cost — plus, in the admitted-in-parallel case,
only what steps cost beyond 1.5 × the costliest seen. A hold ends when its cost is charged,
when its run's next step is checked, when the run is no longer running, or after
``HOLD_SECONDS``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from finops.models import Budget, BudgetAction, BudgetHold, BudgetPeriod, BudgetScope, BudgetSpend, run_period_key
from finops.rollups import Dimensions, tags_of
from fleet import seams
from fleet.models import RunStatus, split_model_ref

if TYPE_CHECKING:
    from fleet.models import Run

logger = logging.getLogger(__name__)

RUNTIME_SCOPE = "cockpit.fleet"  # instrumentation scope of the runtime's spans (fleet.telemetry)
HOLD_SECONDS = 180
BUDGET_CACHE_SECONDS = 2.0
ESTIMATE_MARGIN = Decimal("1.5")
WAIT_SECONDS = 0.02
ZERO = Decimal(0)


# --- Scope matching ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """What a budget's scope is matched against: a run about to take a step, or a span."""

    team_id: int
    agent_id: int
    workflow: str
    tags: frozenset[str]


def applies(budget: Budget, subject: Subject) -> bool:
    if budget.team_id is not None and budget.team_id != subject.team_id:
        return False
    if budget.scope == BudgetScope.AGENT:
        return budget.agent_id == subject.agent_id
    if budget.scope == BudgetScope.WORKFLOW:
        return budget.workflow == subject.workflow
    if budget.scope == BudgetScope.TAG:
        return budget.tag in subject.tags
    return True  # global, team


class _BudgetCache:
    """Active budgets per team (theirs and the organisation's), kept ``BUDGET_CACHE_SECONDS``
    per process and dropped at once by this process's budget changes. Only *which* budgets
    apply is cached: limits, and whether a budget is still active, are read fresh with the
    spend they are compared with. A budget created in another process applies within seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_team: dict[int, tuple[float, list[Budget]]] = {}

    def get(self, team_id: int) -> list[Budget]:
        now = time.monotonic()
        found = self._by_team.get(team_id)
        if found is not None and now - found[0] < BUDGET_CACHE_SECONDS:
            return found[1]
        budgets = list(
            Budget.objects.filter(Q(team__isnull=True) | Q(team_id=team_id), active=True)
            .select_related("agent")
            .order_by("pk")
        )
        with self._lock:
            self._by_team[team_id] = (now, budgets)
        return budgets

    def clear(self) -> None:
        with self._lock:
            self._by_team.clear()


_budget_cache = _BudgetCache()


def budgets_of_team(team_id: int) -> list[Budget]:
    """Active budgets that may apply to the team's spend."""
    return _budget_cache.get(team_id)


def forget_budgets() -> None:
    """This process changed a budget: read them afresh (also after the change commits)."""
    _budget_cache.clear()
    _known_spends.clear()
    transaction.on_commit(_budget_cache.clear)


_resource_tags: frozenset[str] | None = None


def runtime_tags() -> frozenset[str]:
    """The tags the runtime's spans carry: this process's OpenTelemetry resource attributes."""
    global _resource_tags
    if _resource_tags is None:
        from opentelemetry import trace

        from finops.rollups import tag_of

        resource = getattr(trace.get_tracer_provider(), "resource", None)
        attributes = dict(resource.attributes) if resource is not None else {}
        _resource_tags = frozenset(tags_of(tag_of({}, attributes)))
    return _resource_tags


def run_subject(run: Run) -> Subject:
    return Subject(run.team_id, run.agent_id, run.agent.entrypoint if run.agent_id else "", runtime_tags())


# --- Spend rows -------------------------------------------------------------------------------

_known_spends: dict[tuple[int, str], int] = {}


def db_time(value: datetime | None) -> Any:
    """A datetime as the database stores it (SQLite compares text: it must match the ORM's)."""
    return None if value is None else connection.ops.adapt_datetimefield_value(value)


def _greatest(a: str, b: str) -> str:
    return f"GREATEST({a}, {b})" if connection.vendor == "postgresql" else f"MAX({a}, {b})"


def spend_ids(wanted: Iterable[tuple[Budget, str, datetime | None, datetime | None]]) -> dict[tuple[int, str], int]:
    """The ids of the spend rows of (budget, period), created (carrying the budget's last known
    step cost) where missing."""
    found: dict[tuple[int, str], int] = {}
    missing = []
    for budget, period, start, end in wanted:
        key = (budget.pk, period)
        if key in _known_spends:
            found[key] = _known_spends[key]
        else:
            missing.append((budget, period, start, end))
    if missing:
        table = BudgetSpend._meta.db_table
        now = timezone.now()
        with connection.cursor() as cursor:
            for budget, period, start, end in missing:
                cursor.execute(
                    f"INSERT INTO {table} (budget_id, period, period_start, period_end, spent, max_step_cost, "
                    f"updated_at) VALUES (%s, %s, %s, %s, 0, (SELECT max_step_cost FROM {table} "
                    f"WHERE budget_id = %s AND max_step_cost IS NOT NULL ORDER BY updated_at DESC LIMIT 1), %s) "
                    "ON CONFLICT (budget_id, period) DO NOTHING",
                    [budget.pk, period, db_time(start), db_time(end), budget.pk, db_time(now)],
                )
        rows = BudgetSpend.objects.filter(
            Q(*[Q(budget_id=b.pk, period=p) for b, p, _, _ in missing], _connector=Q.OR)
        ).values_list("budget_id", "period", "pk")
        for budget_id, period, pk in rows:
            found[(budget_id, period)] = _known_spends[(budget_id, period)] = pk
    return found


def forget_spend_cache() -> None:
    _known_spends.clear()


# --- The guard --------------------------------------------------------------------------------


@dataclass
class PendingStep:
    """An admitted LLM step waiting for its cost: which counters to charge, which to release."""

    run_id: int
    spends: dict[int, Budget]  # spend id -> budget
    held: list[int] = field(default_factory=list)


class _Local(threading.local):
    step: PendingStep | None = None


_local = _Local()


def _reason(budget: Budget, spent: Decimal, period: str, limit: Decimal | None = None) -> str:
    when = "this run" if budget.period == BudgetPeriod.RUN else f"this {budget.period} ({period})"
    limit = budget.limit_usd if limit is None else limit
    return (
        f"budget_exceeded: {budget.name} [budget #{budget.pk}] on {budget.describe_scope()} has spent "
        f"${spent:.4f} of ${limit:.4f} {when}"
    )


def cheaper_fallback(run: Run) -> str | None:
    """The agent version's fallback model cheapest per token (priced on a sample call), if it
    is cheaper than the model in use; ``None`` when there is none."""
    from finops import prices
    from fleet.providers.base import Usage

    version = run.version
    if version is None or not version.fallback_models:
        return None
    current = run.overrides.get("model") or version.primary_model
    sample = Usage(input_tokens=1000, output_tokens=1000)

    def cost(ref: str) -> Decimal | None:
        provider_name, model = split_model_ref(ref)
        return prices.price(provider=_provider_system(provider_name), model=model, usage=sample)

    current_cost = cost(current)
    candidates = []
    for ref in version.fallback_models:
        if ref == current:
            continue
        ref_cost = cost(ref)
        if ref_cost is not None and (current_cost is None or ref_cost < current_cost):
            candidates.append((ref_cost, ref))
    if candidates:
        return min(candidates)[1]
    return None


def _provider_system(name: str) -> str:
    from fleet.models import ModelProvider

    kind = ModelProvider.objects.filter(name=name).values_list("kind", flat=True).first()
    return {"openai": "openai", "anthropic": "anthropic", "simulated": "simulated"}.get(kind or "", name)


def _at_cap(budget: Budget, run: Run, spent: Decimal, period: str, limit: Decimal) -> seams.BudgetVerdict:
    reason = _reason(budget, spent, period, limit)
    if budget.action == BudgetAction.DEGRADE:
        model = cheaper_fallback(run)
        if model:
            return seams.BudgetVerdict("degrade", reason=f"{reason}; degraded to {model}", model=model)
        return seams.BudgetVerdict("pause", reason=f"{reason} (no cheaper fallback model to degrade to)")
    return seams.BudgetVerdict("pause", reason=reason)


class FinopsBudgetGuard:
    """The budget seam: a run's own budget first (``RunBudgetGuard``), then every active budget
    whose scope covers the run."""

    def __init__(self) -> None:
        self._run_guard = seams.RunBudgetGuard()

    def check(self, *, run: Run, step_kind: str) -> seams.BudgetVerdict:
        release_pending()
        verdict = self._run_guard.check(run=run, step_kind=step_kind)
        if verdict.verdict != "ok":
            return verdict
        subject = run_subject(run)
        budgets = [b for b in budgets_of_team(run.team_id) if applies(b, subject)]
        if not budgets:
            return verdict
        now = timezone.now()
        wanted = []
        for budget in budgets:
            period, start, end = budget.period_for(now, run.pk)
            wanted.append((budget, period, start, end))
        ids = spend_ids(wanted)
        spends = {ids[(b.pk, p)]: b for b, p, _, _ in wanted}
        enforcing = {spend_id: b for spend_id, b in spends.items() if b.enforces}
        held: list[int] = []
        capped: seams.BudgetVerdict | None = None
        if enforcing:
            capped, held = _admit(run, enforcing, hold=step_kind == "llm")
            if capped is not None and capped.verdict == "pause":
                return capped
        if step_kind == "llm":
            _local.step = PendingStep(run.pk, spends, held)
        return capped or verdict


def _lock_spends(
    ids: list[int], run_id: int, now: datetime, *, holds: bool
) -> dict[int, tuple[Decimal, Decimal | None, str, Decimal, bool, int, Decimal, int]]:
    """Lock the spend rows and read, in one statement: spent, costliest step, period, the
    budget's limit and whether it is active, and the steps in flight (count, estimates' sum,
    how many have an estimate) of other runs still running."""
    from fleet.models import Run

    spend, budget, hold, run = (
        BudgetSpend._meta.db_table,
        Budget._meta.db_table,
        BudgetHold._meta.db_table,
        Run._meta.db_table,
    )
    placeholders = ", ".join(["%s"] * len(ids))
    params: list[Any] = []
    if holds:
        live = (
            f"FROM {hold} h JOIN {run} r ON r.id = h.run_id WHERE h.spend_id = s.id AND h.run_id <> %s "
            "AND h.expires_at > %s AND r.status = %s"
        )
        in_flight = (
            f"(SELECT COUNT(*) {live}), (SELECT COALESCE(SUM(h.amount), 0) {live}), (SELECT COUNT(h.amount) {live})"
        )
        params = [run_id, db_time(now), RunStatus.RUNNING] * 3
    else:
        in_flight = "0, 0, 0"
    lock = " FOR UPDATE OF s" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.id, s.spent, s.max_step_cost, s.period, b.limit_usd, b.active, {in_flight} "
            f"FROM {spend} s JOIN {budget} b ON b.id = s.budget_id WHERE s.id IN ({placeholders}) ORDER BY s.id{lock}",
            [*params, *ids],
        )
        return {
            row[0]: (
                Decimal(str(row[1])),
                None if row[2] is None else Decimal(str(row[2])),
                row[3],
                Decimal(str(row[4])),
                bool(row[5]),
                int(row[6]),
                Decimal(str(row[7])),
                int(row[8]),
            )
            for row in cursor.fetchall()
        }


def _admit(run: Run, budgets: dict[int, Budget], *, hold: bool) -> tuple[seams.BudgetVerdict | None, list[int]]:
    """Admit the run's next step against the budgets that enforce a cap: returns the cap's
    verdict if one is reached, else ``None`` and the holds taken (LLM steps only)."""
    if connection.vendor == "postgresql":
        return _admit_in_one_statement(run, budgets, hold=hold)
    ids = sorted(budgets)
    calendar = [i for i in ids if budgets[i].period != BudgetPeriod.RUN]
    waited_since = time.monotonic()
    while True:
        now = timezone.now()
        with transaction.atomic():
            rows = _lock_spends(ids, run.pk, now, holds=hold and bool(calendar))
            if len(rows) < len(ids):
                forget_spend_cache()  # a budget was deleted meanwhile; the next check starts afresh
                return None, []
            degrade: seams.BudgetVerdict | None = None
            for spend_id in ids:
                spent, _, period, limit, active, _, _, _ = rows[spend_id]
                budget = budgets[spend_id]
                if budget.period == BudgetPeriod.RUN:
                    spent = max(spent, run.cost)
                if active and spent >= limit:
                    capped = _at_cap(budget, run, spent, period, limit)
                    if capped.verdict == "pause":
                        return capped, []
                    degrade = degrade or capped
            if degrade is not None or not hold or not calendar:
                return degrade, []
            estimates: dict[int, Decimal | None] = {}
            blocked = False
            for spend_id in calendar:
                spent, max_step, _, limit, active, count, total, with_estimate = rows[spend_id]
                estimate = None if max_step is None else max_step * ESTIMATE_MARGIN
                estimates[spend_id] = estimate
                if count == 0 or not active:
                    continue
                if estimate is None or with_estimate < count or spent + total + estimate >= limit:
                    blocked = True
                    break
            if not blocked or time.monotonic() - waited_since > 2 * HOLD_SECONDS:
                _hold(run.pk, estimates, now)
                return None, calendar
        time.sleep(WAIT_SECONDS)


def _async_commit() -> str:
    """A condition, always true, that makes the statement's own transaction commit without
    waiting for the WAL to reach disk (``synchronous_commit = off`` for that transaction only;
    never inside a caller's transaction). A database crash may then lose the last fraction of a
    second of holds and counter updates: holds expire anyway, and ``finops_budget_rebuild``
    recounts the counters from the rollups. A check costs one round trip this way."""
    return "" if connection.in_atomic_block else " AND set_config('synchronous_commit', 'off', true) IS NOT NULL"


def _admit_sql() -> str:
    from fleet.models import Run

    spend, budget, hold, run = (
        BudgetSpend._meta.db_table,
        Budget._meta.db_table,
        BudgetHold._meta.db_table,
        Run._meta.db_table,
    )
    live = (
        f"FROM {hold} h JOIN {run} r ON r.id = h.run_id WHERE h.spend_id = s.id AND h.run_id <> %(run)s "
        "AND h.expires_at > %(now)s AND r.status = 'running'"
    )
    return f"""
        WITH locked AS (
            SELECT s.id, s.spent, s.max_step_cost, s.period, b.limit_usd, b.active, b.period AS budget_period,
                   f.n, f.total, f.n_estimated
            FROM {spend} s JOIN {budget} b ON b.id = s.budget_id
            CROSS JOIN LATERAL (
                SELECT COUNT(*) AS n, COALESCE(SUM(h.amount), 0) AS total, COUNT(h.amount) AS n_estimated {live}
            ) f
            WHERE s.id = ANY(%(ids)s){{async_commit}}
            ORDER BY s.id FOR UPDATE OF s
        ),
        decided AS (
            SELECT COALESCE(bool_and(NOT active OR (
                (CASE WHEN budget_period = 'run' THEN GREATEST(spent, %(run_cost)s) ELSE spent END) < limit_usd
                AND (NOT %(hold)s OR budget_period = 'run' OR n = 0 OR (
                    max_step_cost IS NOT NULL AND n_estimated = n
                    AND spent + total + max_step_cost * %(margin)s < limit_usd)))), true) AS ok
            FROM locked
        ),
        held AS (
            INSERT INTO {hold} (spend_id, run_id, amount, created_at, expires_at)
            SELECT id, %(run)s, max_step_cost * %(margin)s, %(now)s, %(expires)s FROM locked
            WHERE %(hold)s AND budget_period <> 'run' AND (SELECT ok FROM decided)
            ON CONFLICT (spend_id, run_id) DO UPDATE SET amount = excluded.amount,
                created_at = excluded.created_at, expires_at = excluded.expires_at
            RETURNING spend_id
        )
        SELECT l.id, l.spent, l.period, l.limit_usd, l.active, (SELECT ok FROM decided),
               ARRAY(SELECT spend_id FROM held)
        FROM locked l ORDER BY l.id
    """


def _prepared(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` with server-side parameters, so that PostgreSQL prepares it after a few runs
    and stops planning it every time (Django's cursors bind on the client)."""
    import psycopg

    connection.ensure_connection()
    raw = connection.connection
    with psycopg.Cursor(raw) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _admit_in_one_statement(
    run: Run, budgets: dict[int, Budget], *, hold: bool
) -> tuple[seams.BudgetVerdict | None, list[int]]:
    """PostgreSQL: lock the counters, decide and take the holds in one statement (one round trip,
    its own transaction), waiting and trying again while other runs' steps are in flight."""
    ids = sorted(budgets)
    sql = _admit_sql().replace("{async_commit}", _async_commit())
    waited_since = time.monotonic()
    while True:
        now = timezone.now()
        params = {
            "ids": ids,
            "run": run.pk,
            "now": now,
            "expires": now + timedelta(seconds=HOLD_SECONDS),
            "run_cost": run.cost,
            "hold": hold,
            "margin": ESTIMATE_MARGIN,
        }
        rows = _prepared(sql, params)
        if len(rows) < len(ids):
            forget_spend_cache()  # a budget was deleted meanwhile; the next check starts afresh
            return None, []
        if rows[0][5]:
            return None, sorted(rows[0][6])
        degrade: seams.BudgetVerdict | None = None
        for spend_id, spent, period, limit, active, _, _ in rows:
            budget = budgets[spend_id]
            spent = Decimal(str(spent))
            if budget.period == BudgetPeriod.RUN:
                spent = max(spent, run.cost)
            if active and spent >= limit:
                capped = _at_cap(budget, run, spent, period, Decimal(str(limit)))
                if capped.verdict == "pause":
                    return capped, []
                degrade = degrade or capped
        if degrade is not None:
            return degrade, []
        if time.monotonic() - waited_since > 2 * HOLD_SECONDS:
            params["margin"] = Decimal(0)  # give up waiting on holds that never end
            BudgetHold.objects.filter(spend_id__in=ids, expires_at__lt=now).delete()
        time.sleep(WAIT_SECONDS)


def _hold(run_id: int, estimates: dict[int, Decimal | None], now: datetime) -> None:
    table = BudgetHold._meta.db_table
    expires = now + timedelta(seconds=HOLD_SECONDS)
    keys = sorted(estimates)
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(keys))
    params: list[Any] = []
    for spend_id in keys:
        params += [spend_id, run_id, estimates[spend_id], db_time(now), db_time(expires)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (spend_id, run_id, amount, created_at, expires_at) VALUES {values} "
            "ON CONFLICT (spend_id, run_id) DO UPDATE SET amount = excluded.amount, "
            "created_at = excluded.created_at, expires_at = excluded.expires_at",
            params,
        )


def _release(run_id: int, spend_ids: list[int]) -> None:
    placeholders = ", ".join(["%s"] * len(spend_ids))
    fast = _async_commit() if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {BudgetHold._meta.db_table} WHERE run_id = %s AND spend_id IN ({placeholders}){fast}",
            [run_id, *spend_ids],
        )


def release_pending() -> None:
    """The step admitted last in this thread never reported a cost (its call failed): let
    its holds go."""
    pending, _local.step = _local.step, None
    if pending is not None and pending.held:
        _release(pending.run_id, pending.held)


def step_priced(cost: Decimal | None) -> None:
    """The pricer priced the LLM step this thread's last check admitted: charge its budgets and
    end its holds (one statement on PostgreSQL)."""
    pending, _local.step = _local.step, None
    if pending is None:
        return
    try:
        if not cost:
            if pending.held:
                _release(pending.run_id, pending.held)
            return
        if connection.vendor == "postgresql":  # one statement: its own transaction
            crossed = _charge_ids(pending, cost)
            _evaluate_on_commit(crossed, [pending.run_id])
            return
        with transaction.atomic():
            crossed = _charge_ids(pending, cost)
            _evaluate_on_commit(crossed, [pending.run_id])
    except Exception:  # the step's answer matters more than the counter; reconcile fixes it
        logger.exception("budget spend of run %s could not be charged", pending.run_id)


def _charge_ids(pending: PendingStep, cost: Decimal) -> list[tuple[Budget, str]]:
    spend, budget, hold = BudgetSpend._meta.db_table, Budget._meta.db_table, BudgetHold._meta.db_table
    ids = sorted(pending.spends)
    placeholders = ", ".join(["%s"] * len(ids))
    fast = _async_commit() if connection.vendor == "postgresql" else ""
    update = (
        f"UPDATE {spend} SET spent = spent + %s, "
        f"max_step_cost = {_greatest('COALESCE(max_step_cost, 0)', '%s')}, updated_at = %s "
        f"WHERE id IN ({placeholders}){fast} "
        f"RETURNING id, spent, period, (SELECT limit_usd FROM {budget} b WHERE b.id = budget_id)"
    )
    params: list[Any] = [cost, cost, db_time(timezone.now()), *ids]
    held = sorted(pending.held)
    release = f"DELETE FROM {hold} WHERE run_id = %s AND spend_id IN ({', '.join(['%s'] * len(held))})"
    with connection.cursor() as cursor:
        if held and connection.vendor == "postgresql":
            cursor.execute(f"WITH released AS ({release}) {update}", [pending.run_id, *held, *params])
        else:
            if held:
                cursor.execute(release, [pending.run_id, *held])
            cursor.execute(update, params)
        rows = cursor.fetchall()
    crossed = []
    for spend_id, spent, period, limit in rows:
        budget_obj = pending.spends[spend_id]
        if _crossed(budget_obj, Decimal(str(spent)) - cost, Decimal(str(spent)), limit=Decimal(str(limit))):
            crossed.append((budget_obj, period))
    return crossed


def _crossed(
    budget: Budget, before: Decimal, after: Decimal, *, over_cap_counts: bool = False, limit: Decimal | None = None
) -> bool:
    """Did the spend reach a threshold it had not reached before? With ``over_cap_counts``, spend
    added over an enforced cap counts too (external runs still sending must be paused)."""
    limit = budget.limit_usd if limit is None else limit
    if over_cap_counts and after >= limit and budget.enforces:
        return True
    return before < limit <= after or any(before * 100 < limit * t <= after * 100 for t in budget.sorted_thresholds)


def _evaluate_on_commit(crossed: list[tuple[Budget, str]], run_ids: list[int]) -> None:
    if not crossed:
        return
    from finops.tasks import budget_evaluate

    for budget, period in crossed:
        transaction.on_commit(
            functools.partial(budget_evaluate.delay, budget.pk, period, sorted(set(run_ids))), robust=True
        )


def budget_still_exceeded(budget: Budget, run: Run) -> bool:
    """After a change of the budget: would it stop ``run`` at its next step?"""
    if not budget.active or not budget.enforces:
        return False
    if budget.period == BudgetPeriod.RUN:
        return run.cost >= budget.limit_usd
    period, _, _ = budget.period_for(timezone.now())
    spent = BudgetSpend.objects.filter(budget=budget, period=period).values_list("spent", flat=True).first()
    return spent is not None and spent >= budget.limit_usd


# --- At ingest --------------------------------------------------------------------------------


def charge_spans(
    team_id: int,
    charges: list[tuple[dict[str, Any], Dimensions]],
    *,
    charged_as: list[Dimensions] | None = None,
) -> None:
    """Add the cost of stored spans (not the runtime's) to the budgets covering them. With
    ``charged_as`` (one per charge: the dimensions the span was charged under before its trace
    named its agent), only the budgets those did not cover are charged."""
    budgets = budgets_of_team(team_id)
    if not budgets:
        return
    totals: dict[tuple[int, str], list[Any]] = {}
    by_pk = {b.pk: b for b in budgets}
    for n, (row, dims) in enumerate(charges):
        subject = Subject(team_id, dims.agent_id, dims.workflow, frozenset(tags_of(dims.tag)))
        before = charged_as[n] if charged_as is not None else None
        was = Subject(team_id, before.agent_id, before.workflow, frozenset(tags_of(before.tag))) if before else None
        for budget in budgets:
            if not applies(budget, subject) or (was is not None and applies(budget, was)):
                continue
            run_id = row.get("run_id")
            if budget.period == BudgetPeriod.RUN:
                if run_id is None:
                    continue
                period, start, end = run_period_key(run_id), None, None
            else:
                period, start, end = budget.period_for(row["start_time"])
            entry = totals.get((budget.pk, period))
            if entry is None:
                entry = totals[(budget.pk, period)] = [ZERO, ZERO, start, end, set()]
            cost = row["cost"]
            entry[0] += cost
            entry[1] = max(entry[1], cost)
            if run_id is not None:
                entry[4].add(run_id)
    if not totals:
        return
    table = BudgetSpend._meta.db_table
    now = timezone.now()
    keys = sorted(totals)
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(keys))
    params: list[Any] = []
    for budget_id, period in keys:
        delta, biggest, start, end, _ = totals[(budget_id, period)]
        params += [budget_id, period, db_time(start), db_time(end), delta, biggest, db_time(now)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (budget_id, period, period_start, period_end, spent, max_step_cost, updated_at) "
            f"VALUES {values} ON CONFLICT (budget_id, period) DO UPDATE SET spent = {table}.spent + excluded.spent, "
            f"max_step_cost = {_greatest(f'COALESCE({table}.max_step_cost, 0)', 'excluded.max_step_cost')}, "
            "updated_at = excluded.updated_at RETURNING budget_id, period, spent",
            params,
        )
        rows = cursor.fetchall()
    from finops.tasks import budget_evaluate

    for budget_id, period, spent in rows:
        budget = by_pk[budget_id]
        delta, _, _, _, run_ids = totals[(budget_id, period)]
        after = Decimal(str(spent))
        if _crossed(budget, after - delta, after, over_cap_counts=bool(run_ids)):
            transaction.on_commit(
                functools.partial(budget_evaluate.delay, budget_id, period, sorted(run_ids)), robust=True
            )
