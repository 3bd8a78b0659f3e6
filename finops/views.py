"""FinOps pages: the cost dashboard (with its live burn figure and budget banner), the chargeback
CSV, and the budgets pages.

Every view asks ``finops.selectors`` (which only return teams where the user holds
``TeamPerm.VIEW_COSTS``) and refuses people who hold it nowhere with a 403, as the audit log
does. Live fragments are re-fetched through these same views: an htmx request names its target
element, and the view renders only that partial with only the queries it needs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from cockpit import access
from cockpit import selectors as cockpit_selectors
from cockpit.audit import Actor
from cockpit.forms import submit
from cockpit.models import Team
from cockpit.plotting import plotly_style_guards
from cockpit.roles import TeamPerm
from finops import plots, selectors, services
from finops.forms import GROUPINGS, RANGES, BudgetForm, BudgetRaiseForm, ChargebackForm, CostFilterForm, Window
from finops.models import Budget, BudgetAlert, Forecast
from finops.selectors import CostFilter, Group
from fleet.models import Agent

if TYPE_CHECKING:
    from cockpit.views import HtmxHttpRequest

COSTS_REFUSED = "FinOps is open to finance people and admins of a team; your roles do not include seeing costs."
CENT = Decimal("0.01")
# The dashboard's export menu: (key, label, dimensions of a row, period of a row).
EXPORTS = [
    ("team", "team × month", ("team",), "month"),
    ("agent", "agent × month", ("team", "agent"), "month"),
    ("team-model", "team × model × month", ("team", "model"), "month"),
    ("tag", "cost-center tag × month", ("tag",), "month"),
    ("team-day", "team × day", ("team",), "day"),
]
FILTER_LABELS = {
    "team": "Team",
    "agent": "Agent",
    "agent_version": "Agent version",
    "workflow": "Workflow",
    "model": "Model",
    "provider": "Provider",
    "tag": "Tag",
}
FILTER_SELECTS = [
    ("agent", "Agent"),
    ("model", "Model"),
    ("workflow", "Workflow"),
    ("provider", "Provider"),
    ("tag", "Tag"),
]


# --- Helpers ----------------------------------------------------------------------------------


def _cost_teams(user: Any) -> list[Team]:
    """Teams whose costs the user sees, by name; 403 if none."""
    teams = list(access.teams_for_user(user, TeamPerm.VIEW_COSTS).order_by("name"))
    if not teams:
        raise PermissionDenied(COSTS_REFUSED)
    return teams


def _local_minute(moment: datetime) -> str:
    """The format of the runs and traces lists' "From"/"To" fields."""
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class Drill:
    """Where a number leads: the dashboard narrowed to it, and the runs and traces behind it
    (only where those lists can filter that way)."""

    href: str
    runs: str = ""
    traces: str = ""


class Links:
    """Builds the dashboard's links from the current query: drill-downs, grouping switches, the
    CSV, and the runs and traces lists with the same range."""

    def __init__(self, query: QueryDict, window: Window, form: CostFilterForm, teams: list[Team]) -> None:
        self.query = query
        self.window = window
        self.given = form.dimension_filters()
        self.teams = teams
        self.slugs = {str(t.pk): t.slug for t in teams}

    def dashboard(self, **changes: str | None) -> str:
        query = self.query.copy()
        for name, value in changes.items():
            if value is None:
                query.pop(name, None)
            else:
                query[name] = value
        text = query.urlencode()
        return f"{reverse('finops')}{'?' + text if text else ''}"

    def _lists(self, team: str | None, agent: str | None, model: str | None) -> tuple[str, str]:
        span = {"since": _local_minute(self.window.since), "until": _local_minute(self.window.until)}
        team_slug = team if team is not None else self.given.get("team", "")
        runs = QueryDict(mutable=True)
        traces = QueryDict(mutable=True)
        for query in (runs, traces):
            query["team"] = team_slug  # "" = every team (not the switcher's team)
            if agent and agent.isdigit():
                query["agent"] = agent
            query.update(span)
        if model:
            traces["model"] = model
        can_list = not (agent and not agent.isdigit())
        runs_url = f"{reverse('runs')}?{runs.urlencode()}" if can_list and not model else ""
        traces_url = f"{reverse('traces')}?{traces.urlencode()}" if can_list else ""
        return runs_url, traces_url

    @property
    def listable(self) -> bool:
        """Whether the runs and traces lists can narrow as the page does (they know teams,
        agents and models, not workflows, providers, tags or versions)."""
        return not set(self.given) - {"team", "agent", "model"}

    def behind(self) -> Drill:
        """The runs and traces behind the whole page."""
        if not self.listable:
            return Drill(self.dashboard())
        runs, traces = self._lists(None, self.given.get("agent"), self.given.get("model"))
        return Drill(self.dashboard(), runs, traces)

    def traces_since(self, moment: datetime) -> str:
        """The traces of what the page shows that started after ``moment`` (burn rate, today)."""
        if not self.listable:
            return ""
        _, traces = self._lists(None, self.given.get("agent"), self.given.get("model"))
        if not traces:
            return ""
        query = QueryDict(traces.partition("?")[2], mutable=True)
        query["since"] = _local_minute(moment)
        query.pop("until", None)
        return f"{reverse('traces')}?{query.urlencode()}"

    def group(self, dimension: str, group: Group) -> Drill:
        if group.key == "other":
            return Drill("")
        value = self.slugs.get(group.key, group.key) if dimension == "team" else group.key
        href = self.dashboard(**{dimension: value, "group": None})  # grouped one level below, by default
        if dimension == "team":
            runs, traces = self._lists(value, self.given.get("agent"), self.given.get("model"))
        elif dimension == "agent":
            runs, traces = self._lists(None, group.key, self.given.get("model"))
        elif dimension == "model":
            runs, traces = self._lists(None, self.given.get("agent"), group.key)
        else:
            runs = traces = ""
        return Drill(href, runs, traces)

    def csv(self, *by: str, bucket: str = "month") -> str:
        query = self.query.copy()
        query.pop("group", None)
        query.setlist("by", list(by))
        query["bucket"] = bucket
        return f"{reverse('finops-chargeback')}?{query.urlencode()}"


@dataclass(frozen=True)
class Chip:
    dimension: str
    label: str
    remove: str


@dataclass(frozen=True)
class Row:
    """A selector row with where it leads."""

    item: Any
    drill: Drill


# --- Dashboard --------------------------------------------------------------------------------


@login_required
@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    teams = _cost_teams(user)
    data = request.GET.copy()
    current = cockpit_selectors.current_team(request)
    if "team" not in data and current is not None and any(t.pk == current.pk for t in teams):
        data["team"] = current.slug
    form = CostFilterForm(data)
    if not form.is_valid():
        refused = {"form": form, "ranges": RANGES, "teams": teams, "invalid": True}
        return render(request, "finops/dashboard.html", refused, status=400)
    window = form.window()
    filters = form.cost_filter(window, {t.slug: t for t in teams})
    group_by = form.cleaned_data["group"] or _default_grouping(filters, teams)
    links = Links(data, window, form, teams)
    context: dict[str, Any] = {
        "form": form,
        "window": window,
        "teams": teams,
        "group_by": group_by,
        "given": form.dimension_filters(),
        "links": links,
        "ranges": RANGES,
        "exports": [(key, label, links.csv(*by, bucket=bucket)) for key, label, by, bucket in EXPORTS],
        "behind": links.behind(),
    }
    target = request.htmx.target if request.htmx else None
    if target == "finops-burn":
        return render(request, "finops/dashboard.html#burn", {**context, **_burn(user, filters, links)})
    if target == "finops-alerts":
        alerts = _recent_alerts(selectors.budgets_for_user(user))
        return render(request, "finops/dashboard.html#alerts", {**context, "recent_alerts": alerts})
    figures = selectors.overview(
        user,
        filters=filters,
        group_by=group_by,  # type: ignore[arg-type]
        bucket=window.bucket,
    )
    budgets = sorted(selectors.budgets_for_user(user), key=lambda s: -s.percent)
    page = {
        **context,
        **_burn(user, filters, links),
        "budgets": budgets,
        "recent_alerts": _recent_alerts(budgets),
        **_breakdown(figures.points, figures.spenders, links, window, group_by),
        **_details(request, figures, filters, window, links),
    }
    return render(request, "finops/dashboard.html", page)


def _default_grouping(filters: CostFilter, teams: list[Team]) -> str:
    """One level below what the page is narrowed to: teams, then agents, then models."""
    if filters.agents or filters.agent_versions:
        return "model"
    if filters.teams or len(teams) == 1:
        return "agent"
    return "team"


def _chips(given: dict[str, str], values: dict[str, list[Group]], teams: list[Team], links: Links) -> list[Chip]:
    """The dimension filters in force, each with the address of the page without it."""
    chips = []
    for name, key in given.items():
        if name == "team":
            label = next((t.name for t in teams if t.slug == key), key)
        else:
            label = next((g.label for g in values.get(name, []) if g.key == key), key)
        # (an empty team, not none: without it the page would narrow to the team switcher's team)
        chips.append(
            Chip(FILTER_LABELS.get(name, name), label, links.dashboard(**{name: "" if name == "team" else None}))
        )
    return chips


def _burn(user: Any, filters: CostFilter, links: Links) -> dict[str, Any]:
    burn = selectors.burn_rate(user, filters=filters)
    midnight = timezone.localtime(burn.as_of).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "burn": burn,
        "today": selectors.today_vs_yesterday(user, filters=filters, now=burn.as_of),
        "burn_traces": links.traces_since(burn.as_of - timedelta(hours=1)),
        "today_traces": links.traces_since(midnight),
    }


def _breakdown(
    points: list[selectors.Point], spenders: list[selectors.Spender], links: Links, window: Window, group_by: str
) -> dict[str, Any]:
    return {
        "groupings": [(key, label, links.dashboard(group=key)) for key, label in GROUPINGS],
        "trend_figure": plots.cost_over_time(
            points,
            bucket=window.bucket,
            span=(window.since, window.until),
            drill=lambda g: links.group(group_by, g).href,
        )
        if points
        else None,
        "spenders": [Row(s, links.group(group_by, s.group)) for s in spenders],
        "group_label": dict(GROUPINGS)[group_by],
    }


def _details(
    request: HtmxHttpRequest, figures: selectors.Overview, filters: CostFilter, window: Window, links: Links
) -> dict[str, Any]:
    user = request.user
    per_run = figures.per_run
    options = {name: figures.values[name] for name, _ in FILTER_SELECTS}
    return {
        "total": figures.total,
        "unpriced": figures.unpriced,
        "unpriced_calls": sum(u.spans for u in figures.unpriced),
        "per_run": [Row(a, links.group("agent", Group(str(a.agent_id), a.agent))) for a in per_run[:12]],
        "per_run_figure": plots.cost_per_success_trend(
            per_run, bucket=window.bucket, span=(window.since, window.until)
        )
        if any(p.cost_per_success is not None for a in per_run for p in a.trend)
        else None,
        "models": [Row(m, links.group("model", Group(m.model, m.model))) for m in figures.tokens],
        "models_figure": plots.tokens_by_model(figures.tokens) if figures.tokens else None,
        "waste": [Row(w, links.group("agent", w.group)) for w in figures.waste[:12]],
        "waste_total": sum((w.failed_span_cost + w.retry_cost for w in figures.waste), Decimal(0)),
        "forecast": _forecast(user, filters),
        "costliest_runs": selectors.costliest_runs(user, filters=filters, limit=10),
        "options": options,
        "chips": _chips(links.given, figures.values, links.teams, links),
        "option_keys": {name: {g.key for g in groups} for name, groups in options.items()},
        "filter_selects": FILTER_SELECTS,
        "price_override_url": _admin_url("admin:finops_priceoverride_add") if user.is_staff else "",
        "plotly_style_guards": plotly_style_guards(),
    }


def _admin_url(name: str) -> str:
    try:
        return reverse(name)
    except NoReverseMatch:
        return ""


@dataclass(frozen=True)
class ForecastView:
    projected: Decimal
    low: Decimal
    high: Decimal
    spent: Decimal
    period_end: datetime
    computed_at: datetime
    method: str
    parts: int  # forecasts added up


def _forecast(user: Any, filters: CostFilter) -> ForecastView | None:
    """The month-end projection for what the page shows: the agent's when one agent is chosen,
    else the sum of the (chosen or visible) teams' forecasts."""
    agent_ids = [int(k) for k in filters.agents if k.isdigit()]
    if filters.agents and not agent_ids:
        return None
    rows: list[Forecast]
    if agent_ids:
        rows = [f for f in selectors.forecasts(user, agent_id=agent_ids[0]) if f.agent_id]
    else:
        rows = [f for f in selectors.forecasts(user) if f.agent_id is None]
        if filters.teams:
            rows = [f for f in rows if f.team_id in filters.teams]
    rows = [f for f in rows if f.period == "month" and f.period_end > timezone.now()]
    if not rows or filters.models or filters.workflows or filters.providers or filters.tags or filters.agent_versions:
        return None
    return ForecastView(
        projected=sum((f.projected_total for f in rows), Decimal(0)),
        low=sum((f.low for f in rows), Decimal(0)),
        high=sum((f.high for f in rows), Decimal(0)),
        spent=sum((f.spent_to_date for f in rows), Decimal(0)),
        period_end=max(f.period_end for f in rows),
        computed_at=min(f.computed_at for f in rows),
        method=rows[0].method,
        parts=len(rows),
    )


def _recent_alerts(statuses: list[selectors.BudgetStatus]) -> list[tuple[BudgetAlert, selectors.BudgetStatus]]:
    """For each of the user's budgets, its gravest alert of the current period if raised in the
    last day (80 % supersedes 50 %), newest first, three at most."""
    since = timezone.now() - timedelta(days=1)
    found = []
    for status in statuses:
        recent = [a for a in status.alerts if a.created_at >= since]
        if recent:
            found.append((max(recent, key=lambda a: (a.threshold, a.created_at)), status))
    found.sort(key=lambda pair: pair[0].created_at, reverse=True)
    return found[:3]


# --- Chargeback -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingStep:
    """One step of one agent, with a row per model it ran on; ``cheaper`` are the rows that
    cost less per call than the costliest model while their runs succeed about as often."""

    agent: str
    agent_id: int
    step: str
    rows: list[selectors.RoutingRow]
    cheaper: frozenset[str]


AS_WELL_POINTS = 0.05  # "about as often": within 5 points of the best success rate of the step


@login_required
@require_GET
def routing(request: HtmxHttpRequest) -> HttpResponse:
    """Per agent and LLM step, what each model costs and how the runs using it end: where a
    cheaper model does as well, routing to it saves money."""
    teams = _cost_teams(request.user)
    form = CostFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "finops/routing.html", {"form": form, "teams": teams, "invalid": True}, status=400)
    window = form.window()
    filters = form.cost_filter(window, {t.slug: t for t in teams})
    grouped: dict[tuple[int, str], list[selectors.RoutingRow]] = {}
    for row in selectors.routing_insight(request.user, filters=filters):
        grouped.setdefault((row.agent_id, row.step), []).append(row)
    steps = [_routing_step(rows) for rows in grouped.values()]
    steps.sort(key=lambda s: (-len(s.rows), s.agent, s.step))
    return render(
        request,
        "finops/routing.html",
        {"form": form, "teams": teams, "window": window, "ranges": RANGES, "steps": steps},
    )


def _routing_step(rows: list[selectors.RoutingRow]) -> RoutingStep:
    priced = [r for r in rows if r.cost_per_call is not None and r.run_success_rate is not None]
    cheaper: set[str] = set()
    if len(priced) > 1:
        best = max(r.run_success_rate or 0 for r in priced)
        dearest = max(r.cost_per_call or Decimal(0) for r in priced)
        cheaper = {
            r.model
            for r in priced
            if (r.cost_per_call or Decimal(0)) < dearest and (r.run_success_rate or 0) >= best - AS_WELL_POINTS
        }
    rows = sorted(rows, key=lambda r: (r.cost_per_call is None, r.cost_per_call or Decimal(0)))
    return RoutingStep(rows[0].agent, rows[0].agent_id, rows[0].step, rows, frozenset(cheaper))


@login_required
@require_GET
def chargeback(request: HtmxHttpRequest) -> HttpResponse | StreamingHttpResponse:
    """The chargeback CSV: one row per period × the chosen dimensions (team × month by
    default), with the dashboard's filters. Amounts in USD with six decimals, so the rows add
    up exactly to the dashboard's total."""
    teams = _cost_teams(request.user)
    form = ChargebackForm(request.GET)
    if not form.is_valid():
        errors = " ".join(str(message) for messages_ in form.errors.values() for message in messages_)
        return HttpResponse(f"Cannot export: {errors}", status=400, content_type="text/plain; charset=utf-8")
    window = form.window()
    filters = form.cost_filter(window, {t.slug: t for t in teams})
    dimensions = tuple(form.cleaned_data["by"])
    bucket = form.cleaned_data["bucket"]
    rows = selectors.chargeback(request.user, filters=filters, dimensions=dimensions, bucket=bucket)
    team_slugs = {str(t.pk): t.slug for t in teams}

    def lines() -> Iterator[str]:
        out = _Line()
        writer = csv.writer(out)
        header = ["period"]
        for dimension in dimensions:
            header.append(dimension)
            if dimension in ("team", "agent"):
                header.append(f"{dimension}_id")
        header += ["cost_usd", "priced", "input_tokens", "output_tokens", "spans", "unpriced_llm_calls"]
        writer.writerow(header)
        yield out.take()
        for row in rows:
            line: list[Any] = [row.period]
            for dimension in dimensions:
                line.append(row.values[dimension])
                if dimension == "team":
                    line.append(team_slugs.get(row.keys["team"], row.keys["team"]))
                elif dimension == "agent":
                    line.append(row.keys["agent"])
            priced = row.priced
            cost = "" if priced == "no" else f"{row.cost:.6f}"  # unknown, not zero
            line += [cost, priced, row.input_tokens, row.output_tokens, row.spans, row.unpriced]
            writer.writerow(line)
            yield out.take()

    name = f"cockpit-chargeback-{'-'.join(dimensions)}-by-{bucket}-{window.slug}.csv"
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


class _Line:
    """A file-like for ``csv.writer`` that hands back what was written since the last take."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


# --- Budgets ----------------------------------------------------------------------------------


def _manageable(user: Any) -> tuple[QuerySet[Team], QuerySet[Agent], bool]:
    """Teams and agents the user may put budgets on, and whether budgets over every team too."""
    teams = access.teams_for_user(user, TeamPerm.MANAGE).order_by("name")
    agents = access.scope_to_user(Agent.objects.select_related("team"), user, TeamPerm.MANAGE).order_by(
        "team__name", "name"
    )
    return teams, agents, access.for_user(user).can(TeamPerm.MANAGE, None)


@login_required
@require_GET
def budgets(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    _cost_teams(user)
    statuses = selectors.budgets_for_user(user)
    inactive = selectors.inactive_budgets_for_user(user)
    user_access = access.for_user(user)
    context = {
        "statuses": sorted(statuses, key=lambda s: (-s.percent, s.budget.name)),
        "can_create": user_access.manages_a_team,
        "inactive": inactive,
        "can_manage": {
            b.pk for b in [s.budget for s in statuses] + inactive if user_access.can(TeamPerm.MANAGE, b.team_id)
        },
        "recent_alerts": _recent_alerts(statuses),
    }
    template = "finops/budgets.html#alerts" if request.htmx and request.htmx.target == "finops-alerts" else None
    return render(request, template or "finops/budgets.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def budget_create(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    teams, agents, org_wide = _manageable(user)
    if not teams.exists() and not org_wide:
        raise PermissionDenied("Budgets are set by the admins of a team.")
    form = BudgetForm(request.POST or None, teams=teams, agents=agents)
    if request.method == "POST":

        def create(data: dict[str, Any]) -> Budget:
            arguments = form.create_arguments()
            if arguments["team"] is None and not org_wide:
                raise ValidationError({"team": "Only organisation-wide admins set budgets over every team."})
            return services.budget_create(actor=Actor.from_request(request), **arguments)

        created = submit(form, create)
        if created is not None:
            messages.success(request, f"Budget “{created.name}” is active.")
            return redirect("finops-budgets")
    status = 400 if form.is_bound else 200
    return render(
        request, "finops/budget_form.html", {"form": form, "budget": None, "org_wide": org_wide}, status=status
    )


@login_required
@require_http_methods(["GET", "POST"])
def budget_edit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    user = request.user
    budget = selectors.get_budget_for_user(user, pk, TeamPerm.MANAGE)
    teams, agents, _ = _manageable(user)
    form = BudgetForm(request.POST or None, teams=teams, agents=agents, budget=budget)
    if request.method == "POST":

        def update(data: dict[str, Any]) -> Budget:
            return services.budget_update(actor=Actor.from_request(request), budget=budget, changes=form.changes())

        updated = submit(form, update)
        if updated is not None:
            messages.success(request, f"Budget “{updated.name}” saved.")
            return redirect("finops-budgets")
    status_now = selectors.budget_status(budget)
    context = {
        "form": form,
        "budget": budget,
        "status": status_now,
        "raise_form": BudgetRaiseForm(budget=budget),
    }
    return render(request, "finops/budget_form.html", context, status=400 if form.is_bound else 200)


@login_required
@require_POST
def budget_raise(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    user = request.user
    budget = selectors.get_budget_for_user(user, pk, TeamPerm.MANAGE)
    form = BudgetRaiseForm(request.POST, budget=budget)
    done = submit(
        form,
        lambda data: services.budget_raise(
            actor=Actor.from_request(request),
            budget=budget,
            limit_usd=data["limit_usd"],
            reason=data["reason"],
            resume_runs=data["resume_runs"],
        ),
    )
    if done is None:
        teams, agents, _ = _manageable(user)
        context = {
            "form": BudgetForm(teams=teams, agents=agents, budget=budget),
            "budget": budget,
            "status": selectors.budget_status(budget),
            "raise_form": form,
        }
        return render(request, "finops/budget_form.html", context, status=400)
    raised, resumed = done
    resumed_text = f"; {len(resumed)} paused run{'s' if len(resumed) != 1 else ''} resumed" if resumed else ""
    messages.success(request, f"Budget “{raised.name}” raised to ${raised.limit_usd:,.2f}{resumed_text}.")
    return redirect("finops-budgets")
