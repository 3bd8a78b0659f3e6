"""Every FinOps write: price overrides, budgets (create, change, raise), the alerts budgets
raise and their delivery, span repricing and stored forecasts. People's changes are audited in
the same transaction; alerts publish a ``finops.budget`` live event on commit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from cockpit import live
from cockpit.audit import Actor, audit_record, snapshot
from finops import budgets
from finops.models import (
    OPTIONAL_RATES,
    AlertKind,
    Budget,
    BudgetAction,
    BudgetAlert,
    BudgetNotification,
    BudgetPeriod,
    BudgetScope,
    BudgetSpend,
    NotificationChannel,
    NotificationStatus,
    PriceOverride,
)
from fleet.models import Run, RunKind, RunStatus

logger = logging.getLogger(__name__)
SYSTEM = Actor.system("finops")
OVERRIDE_FIELDS = ["model", "provider", "effective_from", "input_per_mtok", "output_per_mtok", *OPTIONAL_RATES]
BUDGET_FIELDS = [
    "name",
    "scope",
    "team",
    "agent",
    "workflow",
    "tag",
    "period",
    "limit_usd",
    "thresholds",
    "action",
    "alert_emails",
    "webhook_url",
    "active",
]


def _money(value: Any, field: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationError({field: "Enter an amount in USD, like 250 or 12.50."}) from None
    if not amount.is_finite():
        raise ValidationError({field: "Enter an amount in USD, like 250 or 12.50."})
    return amount


# --- Price overrides --------------------------------------------------------------------------


def _prices_changed() -> None:
    from finops import prices

    prices.overrides.invalidate()
    transaction.on_commit(prices.overrides.invalidate)


@transaction.atomic
def price_override_save(*, actor: Actor, override: PriceOverride, reason: str = "") -> PriceOverride:
    """Create or change an override (the admin's form, or code). Spans already stored keep
    their cost until ``finops_reprice`` recomputes their range."""
    before = None
    if override.pk:
        previous = PriceOverride.objects.select_for_update().get(pk=override.pk)
        before = snapshot(previous, OVERRIDE_FIELDS)
    override.model = override.model.strip()
    override.provider = override.provider.strip().lower()
    override.full_clean()
    if not override.pk:
        override.created_by = actor.user_or_none
        override.created_by_label = actor.label
    override.updated_at = timezone.now()
    override.save()
    audit_record(
        actor=actor,
        action="price_override.update" if before else "price_override.create",
        obj=override,
        before=before,
        after=snapshot(override, OVERRIDE_FIELDS),
        reason=reason or override.note,
    )
    _prices_changed()
    return override


@transaction.atomic
def price_override_delete(*, actor: Actor, override: PriceOverride, reason: str = "") -> None:
    before = snapshot(override, OVERRIDE_FIELDS)
    audit_record(actor=actor, action="price_override.delete", obj=override, before=before, reason=reason)
    override.delete()
    _prices_changed()


# --- Budgets ----------------------------------------------------------------------------------


def _budget_validate(budget: Budget) -> None:
    budget.name = budget.name.strip()
    budget.workflow = budget.workflow.strip()
    budget.tag = budget.tag.strip()
    if budget.scope == BudgetScope.AGENT and budget.agent is not None and budget.team_id is None:
        budget.team = budget.agent.team
    if budget.scope != BudgetScope.AGENT:
        budget.agent = None
    if budget.scope != BudgetScope.WORKFLOW:
        budget.workflow = ""
    if budget.scope != BudgetScope.TAG:
        budget.tag = ""
    budget.alert_emails = [e.strip() for e in budget.alert_emails if str(e).strip()]
    budget.full_clean()


@transaction.atomic
def budget_create(
    *,
    actor: Actor,
    name: str,
    scope: str,
    limit_usd: Any,
    period: str = BudgetPeriod.MONTH,
    team: Any = None,
    agent: Any = None,
    workflow: str = "",
    tag: str = "",
    thresholds: list[int] | None = None,
    action: str = BudgetAction.PAUSE,
    alert_emails: Iterable[str] = (),
    webhook_url: str = "",
    webhook_secret: str = "",
) -> Budget:
    budget = Budget(
        name=name,
        scope=scope,
        team=team,
        agent=agent,
        workflow=workflow,
        tag=tag,
        period=period,
        limit_usd=_money(limit_usd, "limit_usd"),
        action=action,
        alert_emails=list(alert_emails),
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        created_by=actor.user_or_none,
        created_by_label=actor.label,
    )
    if thresholds is not None:
        budget.thresholds = list(thresholds)
    _budget_validate(budget)
    budget.save()
    # What the period has spent so far counts: a budget created on the 20th sees the month's spend.
    _period_spend_count(budget, only_if_spent=True)
    budgets.forget_budgets()
    audit_record(actor=actor, action="budget.create", obj=budget, team=budget.team, after=budget.as_dict())
    return budget


UPDATABLE = {
    "name",
    "limit_usd",
    "thresholds",
    "action",
    "alert_emails",
    "webhook_url",
    "webhook_secret",
    "active",
    "period",
    "workflow",
    "tag",
}


@transaction.atomic
def budget_update(*, actor: Actor, budget: Budget, changes: dict[str, Any], reason: str = "") -> Budget:
    """Change a budget's settings (its scope is fixed: create another budget for another scope)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} of a budget.")
    budget = Budget.objects.select_for_update(of=("self",)).select_related("team", "agent").get(pk=budget.pk)
    before = budget.as_dict()
    for key, value in changes.items():
        setattr(budget, key, _money(value, key) if key == "limit_usd" else value)
    _budget_validate(budget)
    budget.updated_at = timezone.now()
    budget.save()
    budgets.forget_budgets()
    audit_record(
        actor=actor,
        action="budget.update",
        obj=budget,
        team=budget.team,
        before=before,
        after=budget.as_dict(),
        reason=reason,
    )
    return budget


@transaction.atomic
def budget_raise(
    *, actor: Actor, budget: Budget, limit_usd: Any, reason: str, resume_runs: bool = True
) -> tuple[Budget, list[Run]]:
    """Raise a budget's limit and, unless told otherwise, resume the runs it paused (those
    still in its scope once raised). Returns the budget and the runs resumed."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the budget is raised."})
    new_limit = _money(limit_usd, "limit_usd")
    budget = Budget.objects.select_for_update(of=("self",)).select_related("team", "agent").get(pk=budget.pk)
    if new_limit <= budget.limit_usd:
        raise ValidationError({"limit_usd": f"Raise the limit above ${budget.limit_usd:,.2f}."})
    before = {"limit_usd": str(budget.limit_usd)}
    budget.limit_usd = new_limit
    budget.updated_at = timezone.now()
    budget.save(update_fields=["limit_usd", "updated_at"])
    budgets.forget_budgets()
    audit_record(
        actor=actor,
        action="budget.raise",
        obj=budget,
        team=budget.team,
        before=before,
        after={"limit_usd": str(new_limit)},
        reason=reason,
    )
    resumed: list[Run] = []
    if resume_runs:
        resumed = _resume_paused_by(actor, budget, reason)
    return budget, resumed


def _resume_paused_by(actor: Actor, budget: Budget, reason: str) -> list[Run]:
    from finops.budgets import budget_still_exceeded
    from fleet.services import run_resume

    marker = f"[budget #{budget.pk}]"
    runs = Run.objects.filter(status=RunStatus.PAUSED, status_reason__contains=marker).select_related(
        "agent", "team", "version"
    )
    resumed = []
    for run in runs[:500]:
        if budget_still_exceeded(budget, run):
            continue
        try:
            resumed.append(run_resume(actor=actor, run=run, reason=f"budget raised: {reason}"))
        except ValidationError as exc:
            logger.info("run %s stays paused after the raise of budget %s: %s", run.pk, budget.pk, exc)
    return resumed


# --- Alerts -----------------------------------------------------------------------------------


def _alert_once(budget: Budget, spend: BudgetSpend, kind: str, threshold: int, **extra: Any) -> BudgetAlert | None:
    """Create the alert unless it exists (the unique constraint decides, also between workers)."""
    try:
        with transaction.atomic():
            return BudgetAlert.objects.create(
                budget=budget,
                period=spend.period,
                kind=kind,
                threshold=threshold,
                spent=spend.spent,
                limit_usd=budget.limit_usd,
                **extra,
            )
    except IntegrityError:
        return None


def _announce(alert: BudgetAlert) -> None:
    budget = alert.budget
    channels = []
    if budget.alert_emails:
        channels.append(NotificationChannel.EMAIL)
    if budget.webhook_url:
        channels.append(NotificationChannel.WEBHOOK)
    notifications = [BudgetNotification.objects.create(alert=alert, channel=channel) for channel in channels]
    audit_record(
        actor=SYSTEM,
        action="budget.alert",
        obj=budget,
        team=budget.team,
        after={
            "alert": alert.pk,
            "period": alert.period,
            "kind": alert.kind,
            "threshold": alert.threshold,
            "spent": str(alert.spent),
            "limit": str(alert.limit_usd),
        },
    )
    live.publish(
        {
            "type": "finops.budget",
            "budget": budget.pk,
            "team": budget.team_id,
            "kind": alert.kind,
            "threshold": alert.threshold,
            "period": alert.period,
            "action": budget.action,
            "alert": alert.pk,
        },
        team_id=budget.team_id,
    )
    from finops.tasks import budget_notification_deliver

    for notification in notifications:
        # robust: a broker that is down (or, in tests, an eager retry) does not undo the alert;
        # the resend sweep delivers what was not sent.
        transaction.on_commit(functools.partial(budget_notification_deliver.delay, notification.pk), robust=True)


@transaction.atomic
def budget_alerts_raise(
    *, budget: Budget, period: str, run_ids: Iterable[int] = (), capped: bool = False
) -> list[BudgetAlert]:
    """Raise the alerts of the thresholds the period's spend has reached (each once), and when
    an enforced cap is reached pause the external runs in scope (managed runs stop at their next
    step by themselves). ``capped``: the budget refused a managed call that would not fit under
    the limit — the cap is reached for the 100 % alert even if the spend is a little below it.
    Safe to run any number of times."""
    spend = BudgetSpend.objects.filter(budget=budget, period=period).first()
    if spend is None:
        return []
    created = []
    for threshold in budget.sorted_thresholds:
        if spend.spent * 100 >= budget.limit_usd * threshold or (capped and threshold == 100):
            run_id = int(period.split(":", 1)[1]) if period.startswith("run:") else None
            alert = _alert_once(budget, spend, AlertKind.THRESHOLD, threshold, run_id=run_id)
            if alert is not None:
                _announce(alert)
                created.append(alert)
    if spend.spent >= budget.limit_usd and budget.enforces:
        _pause_external_runs(budget, spend, list(run_ids))
    return created


def _pause_external_runs(budget: Budget, spend: BudgetSpend, run_ids: list[int]) -> int:
    from finops.budgets import _reason
    from fleet.services import run_pause

    active = Run.objects.filter(
        kind=RunKind.EXTERNAL,
        status__in=[RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.WAITING_APPROVAL],
        pause_requested=False,
    )
    if budget.period == BudgetPeriod.RUN:
        runs = active.filter(pk__in=run_ids)
    elif budget.scope == BudgetScope.GLOBAL:
        runs = active
    elif budget.scope == BudgetScope.TEAM:
        runs = active.filter(team=budget.team)
    elif budget.scope == BudgetScope.AGENT:
        runs = active.filter(agent=budget.agent)
    else:  # a workflow or tag: the runs whose spans were charged to it
        runs = active.filter(pk__in=run_ids)
        if budget.team_id is not None:
            runs = runs.filter(team_id=budget.team_id)
    reason = _reason(budget, spend.spent, spend.period)
    paused = 0
    for run in runs.select_related("agent", "team", "version")[:500]:
        try:
            run_pause(actor=SYSTEM, run=run, reason=reason)
            paused += 1
        except ValidationError:
            continue
    return paused


@transaction.atomic
def budget_projection_alert(*, budget: Budget, period: str, projected: Decimal) -> BudgetAlert | None:
    """The forecast says the budget will end the period over its limit: alert once."""
    spend = BudgetSpend.objects.filter(budget=budget, period=period).first()
    if spend is None:
        spend = BudgetSpend(budget=budget, period=period, spent=Decimal(0))
    if projected <= budget.limit_usd or spend.spent >= budget.limit_usd:
        return None
    alert = _alert_once(budget, spend, AlertKind.PROJECTED, 100, projected=projected.quantize(Decimal("0.000001")))
    if alert is not None:
        _announce(alert)
    return alert


def notification_claim(notification_id: int) -> BudgetNotification | None:
    claimed = BudgetNotification.objects.filter(
        pk=notification_id, status__in=[NotificationStatus.PENDING, NotificationStatus.FAILED]
    ).update(status=NotificationStatus.SENDING, attempts=F("attempts") + 1)
    if claimed != 1:
        return None
    return BudgetNotification.objects.select_related("alert", "alert__budget", "alert__budget__team").get(
        pk=notification_id
    )


def notification_finish(notification: BudgetNotification, *, error: str = "") -> None:
    if error:
        BudgetNotification.objects.filter(pk=notification.pk).update(
            status=NotificationStatus.FAILED, last_error=error[:2000]
        )
        return
    BudgetNotification.objects.filter(pk=notification.pk).update(
        status=NotificationStatus.SENT, sent_at=timezone.now(), last_error=""
    )


@transaction.atomic
def budget_spend_rebuild(*, actor: Actor, budget: Budget, at: datetime | None = None) -> BudgetSpend | None:
    """Recount the spend of a calendar budget's current period (or the one containing ``at``)
    from the hourly rollups — after a database crash or a reprice. Audited."""
    counted = _period_spend_count(budget, at)
    if counted is None:
        return None
    spend, before = counted
    audit_record(
        actor=actor,
        action="budget.spend_rebuild",
        obj=budget,
        team=budget.team,
        before={"period": spend.period, "spent": str(before)},
        after={"period": spend.period, "spent": str(spend.spent)},
    )
    return spend


def _period_spend_count(
    budget: Budget, at: datetime | None = None, *, only_if_spent: bool = False
) -> tuple[BudgetSpend, Decimal] | None:
    """Set the spend of the budget's period (containing ``at``, default now) to what the
    rollups hold; returns it with the figure it had before. ``None`` for per-run budgets (and,
    with ``only_if_spent``, when the period has spent nothing yet)."""
    from finops.forecast import budget_rollups
    from finops.models import period_bounds

    if budget.period == BudgetPeriod.RUN:
        return None
    period, start, end = period_bounds(budget.period, at or timezone.now())
    total = budget_rollups(budget).filter(hour__gte=start, hour__lt=end).aggregate(c=Sum("cost"))["c"] or Decimal(0)
    if only_if_spent and not total:
        return None
    spend, _ = BudgetSpend.objects.select_for_update().get_or_create(
        budget=budget, period=period, defaults={"period_start": start, "period_end": end}
    )
    before = spend.spent
    spend.spent = Decimal(total).quantize(Decimal("0.000001"))
    spend.updated_at = timezone.now()
    spend.save(update_fields=["spent", "updated_at"])
    return spend, before


# --- Repricing --------------------------------------------------------------------------------


def spans_reprice(
    *,
    actor: Actor,
    since: datetime,
    until: datetime,
    team_ids: Iterable[int] | None = None,
    batch_size: int = 2000,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Recompute the cost of the spans in ``[since, until)`` with today's prices and overrides
    (each at its span's time), in batches; then rebuild the hourly rollups and trace totals of
    the range. Spans of Cockpit's runtime keep the cost the run recorded unless their model now
    has an override. Audited once for the whole range."""
    from finops import prices, rollups
    from traces.models import Span, Trace
    from traces.semconv import TOKEN_COLUMNS
    from traces.store import LEAF_TYPES

    teams = list(team_ids) if team_ids is not None else None
    spans = Span.objects.filter(start_time__gte=since, start_time__lt=until, span_type__in=list(LEAF_TYPES))
    if teams is not None:
        spans = spans.filter(team_id__in=teams)
    total = spans.count()
    done = changed = 0
    last_id = 0
    places = Decimal("0.000001")
    touched_traces: set[tuple[int, str]] = set()
    while True:
        batch = list(
            spans.filter(id__gt=last_id)
            .order_by("id")
            .values(
                "id",
                "team_id",
                "trace_id",
                "span_type",
                "model",
                "provider",
                "start_time",
                *TOKEN_COLUMNS,
                "cost",
                "attributes",
                "scope_name",
            )[:batch_size]
        )
        if not batch:
            break
        updates = []
        for row in batch:
            new = _span_cost(dict(row), prices, places)
            old = row["cost"]
            if (old is None) != (new is None) or (old is not None and new is not None and Decimal(old) != new):
                updates.append(Span(id=row["id"], cost=new))
                touched_traces.add((row["team_id"], row["trace_id"]))
        if updates:
            with transaction.atomic():
                Span.objects.bulk_update(updates, ["cost"], batch_size=500)
        changed += len(updates)
        done += len(batch)
        last_id = batch[-1]["id"]
        if progress:
            progress(done, total)
    runs: set[int] = set()
    for team_id, trace_id in sorted(touched_traces):
        cost = Span.objects.filter(team_id=team_id, trace_id=trace_id).aggregate(c=_sum_cost())["c"]
        trace = Trace.objects.filter(team_id=team_id, trace_id=trace_id)
        trace.update(cost=cost)
        runs.update(run_id for run_id in trace.values_list("run_id", flat=True) if run_id is not None)
    _external_runs_recount(runs)
    rebuilt = rollups.rebuild(since=since, until=until, team_ids=teams)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="finops.reprice",
            after={
                "since": since.isoformat(),
                "until": until.isoformat(),
                "teams": teams,
                "spans": total,
                "changed": changed,
            },
        )
    return {"spans": total, "changed": changed, "traces": len(touched_traces), "rolled_up": rebuilt}


def _external_runs_recount(run_ids: Iterable[int]) -> None:
    """An external run costs what its traces cost (``fleet.services.runs_add_span_usage`` adds
    them as they are stored): after repricing, their sum again."""
    from django.db.models import OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce

    from traces.models import Trace

    ids = sorted(run_ids)
    if not ids:
        return
    traces_cost = (
        Trace.objects.filter(run_id=OuterRef("pk")).order_by().values("run_id").annotate(c=Sum("cost")).values("c")
    )
    Run.objects.filter(pk__in=ids, kind=RunKind.EXTERNAL).update(
        cost=Coalesce(Subquery(traces_cost), Value(Decimal(0)))
    )


def _sum_cost() -> Any:
    from django.db.models import Sum

    return Sum("cost")


def _span_cost(row: dict[str, Any], prices: Any, places: Decimal) -> Decimal | None:
    from traces.semconv import SpanType
    from traces.store import span_usage

    attributes = row["attributes"] or {}
    has_usage = bool(row["input_tokens"] or row["output_tokens"])
    model_span = row["span_type"] in (SpanType.LLM, SpanType.EMBEDDING) and row["model"] and has_usage
    recorded = attributes.get("cockpit.cost_usd")
    if model_span and (recorded is None or prices.overrides.rate(row["model"], row["provider"], row["start_time"])):
        return prices.price(
            provider=row["provider"],
            model=row["model"],
            usage=span_usage(row),
            at=row["start_time"],
        )
    if recorded is not None and not isinstance(recorded, bool):
        try:
            return Decimal(str(recorded)).quantize(places)
        except (InvalidOperation, ValueError):
            return None
    return None


# --- Forecasts --------------------------------------------------------------------------------


def forecasts_refresh(*, now: datetime | None = None) -> int:
    """Recompute and store the forecasts of every team and of its agents with recent spend."""
    from finops import forecast

    return forecast.refresh_all(now=now or timezone.now())
