"""Budget enforcement: the budget guard the runtime asks before every step and every LLM call,
and the spend counters it reads.

Where spend is counted (``BudgetSpend``, one row per budget and period):

* a managed run's LLM call is charged when it ends: the runtime settles the call's
  reservation (below) to its real cost, priced through the pricer seam;
* every other span with a cost (external agents) is charged when it is stored
  (``charge_spans``, in the span store's transaction). Spans of Cockpit's own runtime are not
  charged again there.

How the hard cap holds — zero overshoot, with parallel calls and concurrent runs. Before each
LLM call the runtime asks for a *reservation* of the call's worst case (its input tokens,
counted or bounded from above, plus ``max_tokens`` or the model's maximum output, at the
model's prices). In one short transaction the guard locks the spend rows of every budget
covering the run and reserves the amount against all of them, or none:

* ``spent + live reservations + this call's worst case ≤ limit`` everywhere → reserved
  (``BudgetReservation`` rows); the call is made;
* it would fit only once the calls in flight settle below their worst case → wait and try
  again (a model call's length at most);
* else → refused: the run pauses (``budget_exceeded``), or degrades to a cheaper model when the
  budget says so (a degrade budget then stops refusing that run's calls).

When the call ends, ``Reservation.settle`` deletes the rows and adds the real cost (never more
than the worst case) in one transaction, once. A reservation counts only while the worker that
took it holds the run's lease: a killed worker's reservations stop counting when its lease runs
out, and are purged later (``budget_holds_purge``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from finops.models import (
    Budget,
    BudgetAction,
    BudgetPeriod,
    BudgetReservation,
    BudgetScope,
    BudgetSpend,
    run_period_key,
)
from finops.rollups import Dimensions, tags_of
from fleet import seams
from fleet.models import split_model_ref

if TYPE_CHECKING:
    from fleet.models import Run

logger = logging.getLogger(__name__)

RUNTIME_SCOPE = "cockpit.fleet"  # instrumentation scope of the runtime's spans (fleet.telemetry)
BUDGET_CACHE_SECONDS = 2.0
WAIT_SECONDS = 0.02  # between two looks at a reservation that fits once calls in flight settle …
WAIT_MAX_SECONDS = 0.25  # … growing to this
WAIT_LIMIT_SECONDS = 600.0  # … and how long to keep trying before pausing the run instead
COST_PLACES = Decimal("0.000001")
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


def spend_ids(wanted: Iterable[tuple[Budget, str, datetime | None, datetime | None]]) -> dict[tuple[int, str], int]:
    """The ids of the spend rows of (budget, period), created where missing."""
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
                    f"INSERT INTO {table} (budget_id, period, period_start, period_end, spent, updated_at) "
                    "VALUES (%s, %s, %s, %s, 0, %s) ON CONFLICT (budget_id, period) DO NOTHING",
                    [budget.pk, period, db_time(start), db_time(end), db_time(now)],
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


def _at_cap(budget: Budget, run: Run, reason: str) -> seams.BudgetVerdict:
    if budget.action == BudgetAction.DEGRADE:
        model = cheaper_fallback(run)
        if model:
            return seams.BudgetVerdict("degrade", reason=f"{reason}; degraded to {model}", model=model)
        return seams.BudgetVerdict("pause", reason=f"{reason} (no cheaper fallback model to degrade to)")
    return seams.BudgetVerdict("pause", reason=reason)


def _covering(run: Run) -> dict[int, Budget]:
    """The spend rows (id -> budget) of the active budgets covering the run now."""
    subject = run_subject(run)
    budgets = [b for b in budgets_of_team(run.team_id) if applies(b, subject)]
    if not budgets:
        return {}
    now = timezone.now()
    wanted = []
    for budget in budgets:
        period, start, end = budget.period_for(now, run.pk)
        wanted.append((budget, period, start, end))
    ids = spend_ids(wanted)
    return {ids[(b.pk, p)]: b for b, p, _, _ in wanted}


class Reservation:
    """An LLM call's worst case held against the budgets covering its run (``ids``: the
    reservation rows), or the verdict that refused it. ``settle`` charges the real cost and
    ends the reservation; ``release`` ends it without a charge (the call was not made). Either
    happens once: a second call, or a retry of a step whose reservation was settled by another
    worker, charges nothing."""

    def __init__(self, run_id: int, spends: dict[int, Budget], ids: list[int], verdict: seams.BudgetVerdict) -> None:
        self.run_id = run_id
        self.spends = spends
        self.ids = ids
        self.verdict = verdict
        self._done = not spends or verdict.verdict != "ok"
        self._lock = threading.Lock()

    def _take(self) -> bool:
        with self._lock:
            done, self._done = self._done, True
        return not done

    def settle(self, cost: Decimal | None) -> None:
        if not self._take():
            return
        try:
            crossed = _settle(self, cost or ZERO)
            _evaluate_on_commit(crossed, [self.run_id])
        except Exception:  # the call's answer matters more than the counter; reconcile fixes it
            logger.exception("budget spend of run %s could not be charged", self.run_id)

    def release(self) -> None:
        if self._take() and self.ids:
            try:
                _settle(self, None)
            except Exception:  # the reservation stops counting with the run's lease anyway
                logger.exception("budget reservation of run %s could not be released", self.run_id)


class FinopsBudgetGuard:
    """The budget seam: a run's own budget first (``RunBudgetGuard``), then every active budget
    whose scope covers the run."""

    def __init__(self) -> None:
        self._run_guard = seams.RunBudgetGuard()

    def check(self, *, run: Run, step_kind: str) -> seams.BudgetVerdict:
        """Before any step: is a budget covering the run spent? (A read: the reservation before
        each LLM call is what holds the cap.)"""
        verdict = self._run_guard.check(run=run, step_kind=step_kind)
        if verdict.verdict != "ok":
            return verdict
        spends = {i: b for i, b in _covering(run).items() if b.enforces}
        if not spends:
            return verdict
        degrade: seams.BudgetVerdict | None = None
        rows = BudgetSpend.objects.filter(pk__in=spends, budget__active=True).values_list(
            "pk", "spent", "period", "budget__limit_usd"
        )
        for spend_id, spent, period, limit in sorted(rows):
            budget = spends[spend_id]
            if budget.period == BudgetPeriod.RUN:
                spent = max(spent, run.cost)
            if spent >= limit:
                capped = _at_cap(budget, run, _reason(budget, spent, period, limit))
                if capped.verdict == "pause":
                    return capped
                degrade = degrade or capped
        return degrade or verdict

    def reserve(self, *, run: Run, owner: str, seq: int, amount: Decimal, degraded: bool = False) -> seams.Reservation:
        """Reserve ``amount`` (an LLM call's worst case) against every budget covering the run,
        all or none. A budget it does not fit refuses it (pause, or degrade per its action;
        a degrade budget no longer refuses once the run is ``degraded``) — unless it would fit
        once the calls in flight are settled: then this waits for them."""
        spends = _covering(run)
        if not spends:
            return Reservation(run.pk, {}, [], OK)
        amount = max(amount, ZERO).quantize(COST_PLACES, rounding=ROUND_CEILING)
        waited_since = time.monotonic()
        while True:
            outcome = _reserve_once(run, owner, seq, amount, spends, degraded=degraded)
            if outcome is STALE:
                forget_budgets()
                spends = _covering(run)
                if not spends:
                    return Reservation(run.pk, {}, [], OK)
                continue
            if isinstance(outcome, list):
                return Reservation(run.pk, spends, outcome, OK)
            if outcome is not None:
                return Reservation(run.pk, spends, [], outcome)
            # Wait for calls in flight to settle, looking without locks (and backing off), so
            # that waiting runs do not queue on the counters' locks the settlements need.
            delay = WAIT_SECONDS
            while True:
                if time.monotonic() - waited_since > WAIT_LIMIT_SECONDS:
                    stuck = seams.BudgetVerdict("pause", reason="budget_exceeded: the calls in flight never ended")
                    return Reservation(run.pk, spends, [], stuck)
                if not connection.in_atomic_block:
                    connection.close()  # the calls this waits for need connections to settle
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 1.5, WAIT_MAX_SECONDS)
                if _reserve_once(run, owner, seq, amount, spends, degraded=degraded, peek=True) is not None:
                    break


OK = seams.BudgetVerdict("ok")
STALE = seams.BudgetVerdict("ok", reason="stale")  # (a sentinel: the spend rows changed)


def _live_sql(now_param: str) -> str:
    """Reservations that count: their worker still holds the run's lease."""
    from fleet.models import Run

    reservation, run = BudgetReservation._meta.db_table, Run._meta.db_table
    return (
        f"FROM {reservation} h JOIN {run} r ON r.id = h.run_id AND r.lease_owner = h.owner "
        f"AND r.lease_expires_at > {now_param}"
    )


def _reserve_once(
    run: Run, owner: str, seq: int, amount: Decimal, spends: dict[int, Budget], *, degraded: bool, peek: bool = False
) -> list[int] | seams.BudgetVerdict | None:  # (or STALE)
    """One attempt, in one short transaction: lock the spend rows (in id order), then — in a
    statement that sees everything committed before the locks were granted — sum the live
    reservations and insert this one if it fits everywhere. Returns the reservation ids, the
    verdict that refuses it, or ``None`` (fits once the calls in flight settle: try again).
    ``peek``: only look, without locks: ``None`` while it would still wait, else ``STALE``."""
    ids = sorted(spends)
    spend_table, budget_table = BudgetSpend._meta.db_table, Budget._meta.db_table
    placeholders = ", ".join(["%s"] * len(ids))
    lock = " FOR UPDATE OF s" if connection.vendor == "postgresql" and not peek else ""
    now = timezone.now()
    with contextlib.nullcontext() if peek else transaction.atomic(), connection.cursor() as cursor:
        # Reads in a later statement of this transaction see what the holders of these locks
        # committed (READ COMMITTED takes a snapshot per statement): taking the locks and
        # reading the reservations in one statement would miss those committed while it waited.
        cursor.execute(
            f"SELECT s.id, s.spent, s.period, b.limit_usd, b.active, b.action FROM {spend_table} s "
            f"JOIN {budget_table} b ON b.id = s.budget_id WHERE s.id IN ({placeholders}) ORDER BY s.id{lock}",
            ids,
        )
        rows = cursor.fetchall()
        if len(rows) < len(ids):
            return STALE  # a budget was deleted meanwhile
        cursor.execute(
            f"SELECT h.spend_id, COALESCE(SUM(h.amount), 0) {_live_sql('%s')} "
            f"WHERE h.spend_id IN ({placeholders}) GROUP BY h.spend_id",
            [db_time(now), *ids],
        )
        reserved = {spend_id: Decimal(str(total)) for spend_id, total in cursor.fetchall()}
        refused: list[tuple[Budget, str, str]] = []
        wait = False
        holding = []
        for spend_id, spent, period, limit, active, action in rows:
            budget = spends[spend_id]
            spent, limit = Decimal(str(spent)), Decimal(str(limit))
            if not active or action == BudgetAction.ALERT:
                continue
            holding.append(spend_id)
            if action == BudgetAction.DEGRADE and degraded:
                continue
            if budget.period == BudgetPeriod.RUN:
                spent = max(spent, run.cost)
            in_flight = reserved.get(spend_id, ZERO)
            if spent + in_flight + amount <= limit:
                continue
            if spent + amount <= limit and in_flight > 0:
                wait = True  # fits once calls in flight settle below their worst case
                continue
            reason = _reason(budget, spent, period, limit)
            refused.append((budget, f"{reason}; the next call may cost up to ${amount:.4f}", period))
        if peek:
            return None if wait and not refused else STALE
        if refused:
            verdicts = [_at_cap(budget, run, reason) for budget, reason, _ in refused]
            verdict = next((v for v in verdicts if v.verdict == "pause"), verdicts[0])
            if verdict.verdict == "pause":
                _capped_on_commit([(budget, period) for budget, _, period in refused], run.pk)
            return verdict
        if wait:
            return None
        if not holding or not amount:
            return []
        table = BudgetReservation._meta.db_table
        values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(holding))
        params: list[Any] = []
        for spend_id in holding:
            params += [spend_id, run.pk, seq, owner, amount, db_time(now)]
        cursor.execute(
            f"INSERT INTO {table} (spend_id, run_id, seq, owner, amount, created_at) VALUES {values} RETURNING id",
            params,
        )
        return [row[0] for row in cursor.fetchall()]


def _settle(reservation: Reservation, cost: Decimal | None) -> list[tuple[Budget, str]]:
    """End the reservation: delete its rows and, with a ``cost``, add it to every budget covering
    the run — in one transaction, with the spend rows locked in id order (as reserving does). A
    reservation whose rows are gone (settled already) charges nothing."""
    spend_table, budget_table = BudgetSpend._meta.db_table, Budget._meta.db_table
    reservation_table = BudgetReservation._meta.db_table
    ids = sorted(reservation.spends)
    placeholders = ", ".join(["%s"] * len(ids))
    lock = " FOR UPDATE" if connection.vendor == "postgresql" else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {spend_table} WHERE id IN ({placeholders}) ORDER BY id{lock}", ids)
        if reservation.ids:
            held = ", ".join(["%s"] * len(reservation.ids))
            cursor.execute(f"DELETE FROM {reservation_table} WHERE id IN ({held})", reservation.ids)
            if cursor.rowcount == 0:
                return []  # settled (or released) already
        if not cost:
            return []
        cursor.execute(
            f"UPDATE {spend_table} SET spent = spent + %s, updated_at = %s WHERE id IN ({placeholders}) "
            f"RETURNING id, spent, period, (SELECT limit_usd FROM {budget_table} b WHERE b.id = budget_id)",
            [cost, db_time(timezone.now()), *ids],
        )
        rows = cursor.fetchall()
    crossed = []
    for spend_id, spent, period, limit in rows:
        budget = reservation.spends[spend_id]
        after = Decimal(str(spent))
        if _crossed(budget, after - cost, after, limit=Decimal(str(limit))):
            crossed.append((budget, period))
    return crossed


def reservations_purge(*, older_than: timedelta) -> int:
    """Delete reservations that stopped counting (their worker lost the run's lease) and were
    taken more than ``older_than`` ago; a worker that comes back later charges nothing."""
    from fleet.models import Run

    now = timezone.now()
    live = Run.objects.filter(pk=OuterRef("run_id"), lease_owner=OuterRef("owner"), lease_expires_at__gt=now)
    deleted, _ = BudgetReservation.objects.filter(created_at__lt=now - older_than).exclude(Exists(live)).delete()
    return deleted


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


def _capped_on_commit(capped: list[tuple[Budget, str]], run_id: int) -> None:
    """The caps refused a call of the run: their 100 % alerts are due (raised once)."""
    from finops.tasks import budget_evaluate

    for budget, period in capped:
        transaction.on_commit(
            functools.partial(budget_evaluate.delay, budget.pk, period, [run_id], capped=True), robust=True
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
                entry = totals[(budget.pk, period)] = [ZERO, start, end, set()]
            entry[0] += row["cost"]
            if run_id is not None:
                entry[3].add(run_id)
    if not totals:
        return
    table = BudgetSpend._meta.db_table
    now = timezone.now()
    keys = sorted(totals)
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(keys))
    params: list[Any] = []
    for budget_id, period in keys:
        delta, start, end, _ = totals[(budget_id, period)]
        params += [budget_id, period, db_time(start), db_time(end), delta, db_time(now)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (budget_id, period, period_start, period_end, spent, updated_at) "
            f"VALUES {values} ON CONFLICT (budget_id, period) DO UPDATE SET spent = {table}.spent + excluded.spent, "
            "updated_at = excluded.updated_at RETURNING budget_id, period, spent",
            params,
        )
        rows = cursor.fetchall()
    from finops.tasks import budget_evaluate

    for budget_id, period, spent in rows:
        budget = by_pk[budget_id]
        delta, _, _, run_ids = totals[(budget_id, period)]
        after = Decimal(str(spent))
        if _crossed(budget, after - delta, after, over_cap_counts=bool(run_ids)):
            transaction.on_commit(
                functools.partial(budget_evaluate.delay, budget_id, period, sorted(run_ids)), robust=True
            )
