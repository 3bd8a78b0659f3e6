"""Reads of the fleet that depend on who is asking: access helpers for one agent or run, and the
figures the fleet pages show (tiles, runs pages, SLOs, version diffs, run timelines).

Every list is scoped with ``cockpit.access``; every page-level read runs a fixed number of
queries whatever the number of agents, runs or steps (aggregates and percentiles are computed
by the database).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Field,
    Q,
    QuerySet,
    Sum,
    Window,
)
from django.db.models.functions import Ceil, RowNumber
from django.utils import timezone

from cockpit import access
from cockpit.models import AuditEvent, Team
from cockpit.roles import TeamPerm
from cockpit.selectors import audit_events_for
from fleet import seams
from fleet.models import (
    ACTIVE_RUN_STATUSES,
    FINAL_RUN_STATUSES,
    Agent,
    AgentVersion,
    ModelProvider,
    ProviderKind,
    Run,
    RunEvent,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    Tool,
    split_model_ref,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    AnyUser = User | AnonymousUser

TILE_WINDOW = timedelta(hours=24)
SLO_WINDOW = timedelta(days=7)
# Step kinds whose latency is measured: approvals wait for people, decisions and checkpoints
# take no time of their own.
TIMED_STEP_KINDS = (StepKind.LLM, StepKind.TOOL)
RUNS_PAGE_SIZE = 50
RECENT_RUNS = 20
AUDIT_ROWS = 100
# Step details are for reading, not for downloading: longer texts are cut.
DETAIL_CHARS = 8000
MESSAGE_CHARS = 4000


# --- Access -----------------------------------------------------------------------------------


def get_agent_for_user(user: AnyUser, pk: int, perm: str = TeamPerm.VIEW) -> Agent:
    """404 unless the user sees the agent's team; 403 unless ``perm`` is held there."""
    agents = Agent.objects.select_related("team", "current_version")
    return access.get_for_user(user, agents, perm, pk=pk)


def get_run_for_user(user: AnyUser, pk: int, perm: str = TeamPerm.VIEW) -> Run:
    """404 unless the user sees the run's team; 403 unless ``perm`` is held there."""
    runs = Run.objects.select_related("team", "agent", "version")
    return access.get_for_user(user, runs, perm, pk=pk)


def visible_agents(user: AnyUser, team: Team | None = None) -> QuerySet[Agent]:
    agents = access.scope_to_user(Agent.objects.select_related("team"), user)
    return agents if team is None else agents.filter(team=team)


# --- Shared figures ---------------------------------------------------------------------------


def simulated_providers() -> frozenset[str]:
    """Names of the simulated model providers: models behind them are labelled "simulated"."""
    names = ModelProvider.objects.filter(kind=ProviderKind.SIMULATED).values_list("name", flat=True)
    return frozenset(names)


def is_simulated_ref(ref: str, simulated: frozenset[str]) -> bool:
    return split_model_ref(ref)[0] in simulated


def _rate(part: int, whole: int) -> float | None:
    return part * 100 / whole if whole else None


def _p95_seconds(steps: QuerySet[Step], group: str) -> dict[Any, float]:
    """The 95th percentile (nearest rank) of finished steps' durations, per value of ``group``.

    One query on any database: each step is ranked by duration within its group, and the row
    whose rank is ⌈0.95 × count⌉ is the percentile.
    """
    duration = ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField())
    ranked = (
        steps.filter(ended_at__isnull=False)
        .annotate(group_key=F(group), duration=duration)
        .annotate(
            position=Window(RowNumber(), partition_by=[F("group_key")], order_by=F("duration").asc()),
            total=Window(Count("pk"), partition_by=[F("group_key")]),
        )
    )
    picked = ranked.filter(position=Ceil(F("total") * 0.95)).order_by()
    return {key: value.total_seconds() for key, value in picked.values_list("group_key", "duration")}


# --- Agent tiles (fleet overview, agents list) ------------------------------------------------


@dataclass(frozen=True)
class AgentTile:
    agent: Agent
    active_runs: int
    waiting_approval: int
    finished: int
    succeeded: int
    p95_step_seconds: float | None
    cost_today: Decimal
    can_operate: bool

    @property
    def success_rate(self) -> float | None:
        """Succeeded ÷ finished (succeeded, failed or cancelled) in the last 24 hours."""
        return _rate(self.succeeded, self.finished)


def agent_tiles(user: AnyUser, *, team: Team | None, now: datetime | None = None) -> list[AgentTile]:
    """One tile per agent the user sees (in ``team``, or in every visible team): three queries
    whatever the number of agents, runs and steps."""
    agents = list(visible_agents(user, team).select_related("current_version"))
    return _tiles(user, agents, now or timezone.now()) if agents else []


def agent_tile(user: AnyUser, agent: Agent, *, now: datetime | None = None) -> AgentTile:
    """The tile figures of one agent the caller has already checked access to."""
    return _tiles(user, [agent], now or timezone.now())[0]


def _tiles(user: AnyUser, agents: list[Agent], now: datetime) -> list[AgentTile]:
    since = now - TILE_WINDOW
    today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    ids = [agent.pk for agent in agents]
    runs = Run.objects.filter(agent_id__in=ids).filter(
        Q(status__in=ACTIVE_RUN_STATUSES) | Q(ended_at__gte=since) | Q(created_at__gte=today)
    )
    figures = {
        row["agent_id"]: row
        for row in runs.values("agent_id")
        .annotate(
            active=Count("pk", filter=Q(status__in=ACTIVE_RUN_STATUSES)),
            waiting=Count("pk", filter=Q(status=RunStatus.WAITING_APPROVAL)),
            finished=Count("pk", filter=Q(status__in=FINAL_RUN_STATUSES, ended_at__gte=since)),
            succeeded=Count("pk", filter=Q(status=RunStatus.SUCCEEDED, ended_at__gte=since)),
            cost_today=Sum("cost", filter=Q(created_at__gte=today)),
        )
        .order_by()
    }
    p95 = _p95_seconds(
        Step.objects.filter(run__agent_id__in=ids, kind__in=TIMED_STEP_KINDS, ended_at__gte=since),
        "run__agent_id",
    )
    user_access = access.for_user(user)
    tiles = []
    for agent in agents:
        row: Mapping[str, Any] = figures.get(agent.pk, {})
        tiles.append(
            AgentTile(
                agent=agent,
                active_runs=row.get("active", 0),
                waiting_approval=row.get("waiting", 0),
                finished=row.get("finished", 0),
                succeeded=row.get("succeeded", 0),
                p95_step_seconds=p95.get(agent.pk),
                cost_today=row.get("cost_today") or Decimal(0),
                can_operate=user_access.can(TeamPerm.OPERATE, agent.team_id),
            )
        )
    return tiles


# --- Agent page -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SloFigure:
    """One objective: the measured value against its target, over ``SLO_WINDOW``."""

    label: str
    actual: float | Decimal | None
    target: float | Decimal | None
    unit: Literal["percent", "seconds", "usd"]
    higher_is_better: bool

    @property
    def state(self) -> Literal["met", "missed", "no-data", "no-target"]:
        if self.target is None:
            return "no-target"
        if self.actual is None:
            return "no-data"
        if self.higher_is_better:
            return "met" if self.actual >= self.target else "missed"
        return "met" if self.actual <= self.target else "missed"


def agent_slo(agent: Agent, *, now: datetime | None = None) -> list[SloFigure]:
    """The agent's objectives against the last 7 days (runs that ended in it): two queries.

    Cost per success is all spend of those runs divided by the successful ones: failures and
    cancellations are part of what a success costs.
    """
    since = (now or timezone.now()) - SLO_WINDOW
    runs = agent.runs.filter(status__in=FINAL_RUN_STATUSES, ended_at__gte=since).aggregate(
        finished=Count("pk"),
        succeeded=Count("pk", filter=Q(status=RunStatus.SUCCEEDED)),
        cost=Sum("cost"),
    )
    p95 = _p95_seconds(
        Step.objects.filter(run__agent=agent, kind__in=TIMED_STEP_KINDS, ended_at__gte=since),
        "kind",
    )
    succeeded = runs["succeeded"]
    return [
        SloFigure(
            "Success rate",
            _rate(succeeded, runs["finished"]),
            float(agent.slo_success_rate),
            "percent",
            higher_is_better=True,
        ),
        SloFigure(
            "p95 LLM call",
            p95.get(StepKind.LLM),
            agent.slo_p95_llm_seconds,
            "seconds",
            higher_is_better=False,
        ),
        SloFigure(
            "p95 tool call",
            p95.get(StepKind.TOOL),
            agent.slo_p95_tool_seconds,
            "seconds",
            higher_is_better=False,
        ),
        SloFigure(
            "Cost per successful run",
            (runs["cost"] or Decimal(0)) / succeeded if succeeded else None,
            agent.slo_cost_per_success,
            "usd",
            higher_is_better=False,
        ),
    ]


@dataclass(frozen=True)
class VersionRow:
    version: AgentVersion
    previous: AgentVersion | None  # the version published before it, to diff against


def agent_versions(agent: Agent) -> list[VersionRow]:
    """The agent's versions, newest first, each with the one before it: one query."""
    versions = list(agent.versions.order_by("-created_at", "-pk"))
    return [VersionRow(v, versions[i + 1] if i + 1 < len(versions) else None) for i, v in enumerate(versions)]


@dataclass(frozen=True)
class ToolRow:
    name: str
    tool: Tool | None  # None: the version names a tool the registry does not know (any more)


def version_tools(version: AgentVersion | None) -> list[ToolRow]:
    if version is None:
        return []
    known = {tool.name: tool for tool in Tool.objects.filter(name__in=version.tools)}
    return [ToolRow(name, known.get(name)) for name in version.tools]


def recent_runs(agent: Agent) -> list[Run]:
    return list(agent.runs.select_related("version").order_by("-created_at", "-pk")[:RECENT_RUNS])


def model_choices(agent: Agent, version: AgentVersion | None, enabled: list[str]) -> list[str]:
    """Model refs to suggest for an override: the run's version's chain first, then every other
    model the agent's versions name, as long as their provider is ``enabled``."""
    refs = [version.primary_model, *version.fallback_models] if version else []
    for primary, fallbacks in agent.versions.values_list("primary_model", "fallback_models"):
        refs += [primary, *fallbacks]
    return [ref for ref in dict.fromkeys(refs) if split_model_ref(ref)[0] in enabled]


def enabled_providers() -> list[str]:
    return list(ModelProvider.objects.filter(enabled=True).values_list("name", flat=True))


# --- Version diff -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldDiff:
    """One field of two versions. For list fields ``added``/``removed`` hold items; for dict
    fields they hold keys, and ``modified`` the keys whose value changed."""

    name: str
    label: str
    old: Any
    new: Any
    added: list[Any] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def is_list(self) -> bool:
        return isinstance(self.old, list) and isinstance(self.new, list)

    @property
    def is_dict(self) -> bool:
        return isinstance(self.old, dict) and isinstance(self.new, dict)

    @property
    def reordered(self) -> bool:
        """The same items in another order (it matters for a fallback chain)."""
        return self.is_list and self.changed and not self.added and not self.removed


def version_diff(old: AgentVersion, new: AgentVersion) -> list[FieldDiff]:
    """Field by field, what changed from ``old`` to ``new`` (every diffable field, in order)."""
    diffs = []
    for name in AgentVersion.DIFF_FIELDS:
        before, after = getattr(old, name), getattr(new, name)
        changes: dict[str, list[Any]] = {}
        if isinstance(before, list) and isinstance(after, list):
            changes = {
                "added": [item for item in after if item not in before],
                "removed": [item for item in before if item not in after],
            }
        elif isinstance(before, dict) and isinstance(after, dict):
            changes = {
                "added": [key for key in after if key not in before],
                "removed": [key for key in before if key not in after],
                "modified": [k for k in after if k in before and before[k] != after[k]],
            }
        label = str(cast(Field, AgentVersion._meta.get_field(name)).verbose_name)
        diffs.append(FieldDiff(name, label, before, after, **changes))
    return diffs


# --- Runs list --------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RunCursor:
    """Where an older page starts: the (created_at, id) of the last run shown, newest first.

    Keyset pagination rather than OFFSET/COUNT: a page costs the same however deep it is, rows
    do not shift while runs are being created, and no count of a large table is needed (the
    ``run_team_recent`` / ``run_agent_recent`` indexes serve the order).
    """

    created_at: datetime
    pk: int

    def encode(self) -> str:
        return f"{(self.created_at - _EPOCH) // timedelta(microseconds=1)}-{self.pk}"

    @classmethod
    def decode(cls, raw: str) -> RunCursor:
        micros, _, pk = raw.partition("-")
        if not (micros.isdigit() and pk.isdigit()) or len(raw) > 40:
            raise ValueError(f"not a page cursor: {raw!r}")
        return cls(_EPOCH + timedelta(microseconds=int(micros)), int(pk))


@dataclass(frozen=True)
class RunsPage:
    runs: list[Run]
    older: RunCursor | None


def runs_page(
    user: AnyUser,
    *,
    team: Team | None = None,
    agent: Agent | None = None,
    statuses: list[str] | None = None,
    kind: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    after: RunCursor | None = None,
    size: int = RUNS_PAGE_SIZE,
) -> RunsPage:
    """One page of the runs the user sees, newest first: one query."""
    runs = access.scope_to_user(Run.objects.select_related("agent", "team"), user)
    if team is not None:
        runs = runs.filter(team=team)
    if agent is not None:
        runs = runs.filter(agent=agent)
    if statuses:
        runs = runs.filter(status__in=statuses)
    if kind:
        runs = runs.filter(kind=kind)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    if until is not None:
        runs = runs.filter(created_at__lt=until)
    if after is not None:
        runs = runs.filter(Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, pk__lt=after.pk))
    rows = list(runs.order_by("-created_at", "-pk")[: size + 1])
    older = RunCursor(rows[size - 1].created_at, rows[size - 1].pk) if len(rows) > size else None
    return RunsPage(rows[:size], older)


# --- Run page ---------------------------------------------------------------------------------


def resume_approves() -> bool:
    """Whether an operator's resume of a waiting run approves the action it waits for (the
    interim approval gate), or approvals are decided elsewhere."""
    return bool(getattr(seams.current.approval_gate, "resume_approves", True))


def waiting_approval_step(run: Run) -> Step | None:
    if run.status != RunStatus.WAITING_APPROVAL:
        return None
    waiting = run.steps.filter(kind=StepKind.APPROVAL, status=StepStatus.WAITING)
    return waiting.order_by("-seq").first()


def pretty_json(value: Any, limit: int = DETAIL_CHARS) -> str:
    """Indented JSON for reading, cut at ``limit`` characters; empty values print as ""."""
    if value in (None, {}, []):
        return ""
    text = json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… {len(text) - limit:,} more characters not shown"


@dataclass(frozen=True)
class Message:
    role: str
    text: str


@dataclass(frozen=True)
class StepView:
    """A step with what its details panel shows, ready to print."""

    step: Step
    conversation: list[Message]
    answer: str
    input_json: str
    output_json: str

    @property
    def approval(self) -> dict[str, Any]:
        return self.step.input if self.step.kind == StepKind.APPROVAL else {}

    @property
    def outcome(self) -> dict[str, Any]:
        """An approval step's decision: approved, decided_by, reason, edited_args."""
        return self.step.output or {}


def _conversation(step: Step) -> list[Message]:
    messages = step.input.get("messages") if step.kind == StepKind.LLM else None
    if not isinstance(messages, list):
        return []
    conversation = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content", "")
        text = content if isinstance(content, str) else pretty_json(content, MESSAGE_CHARS)
        conversation.append(Message(str(message.get("role", "?")), _cut(text, MESSAGE_CHARS)))
    return conversation


def _step_view(step: Step) -> StepView:
    conversation = _conversation(step)
    output = step.output if isinstance(step.output, dict) else {}
    answer = output.get("content", "") if step.kind == StepKind.LLM else ""
    shown_input = {k: v for k, v in step.input.items() if k != "messages"} if conversation else step.input
    shown_output = {k: v for k, v in output.items() if k != "content"} if answer else step.output
    return StepView(
        step=step,
        conversation=conversation,
        answer=_cut(answer, MESSAGE_CHARS) if isinstance(answer, str) else pretty_json(answer),
        input_json=pretty_json(shown_input),
        output_json=pretty_json(shown_output),
    )


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    step: StepView | None = None
    event: RunEvent | None = None

    @property
    def overridden(self) -> list[tuple[str, Any, Any]]:
        """An override event's changes as (setting, before, after)."""
        if self.event is None or self.event.kind != RunEvent.Kind.OVERRIDE:
            return []
        before, after = self.event.data.get("before", {}), self.event.data.get("after", {})
        return [(key, before.get(key), value) for key, value in after.items()]


def run_timeline(run: Run) -> list[TimelineEntry]:
    """Steps in journal order with the run's history (status changes, directives, overrides,
    approvals, notes) placed where they happened: two queries."""
    steps = list(run.steps.order_by("seq"))
    events = list(run.events.order_by("at", "pk"))
    timeline: list[TimelineEntry] = []
    pending = iter(events)
    event = next(pending, None)
    for step in steps:
        while event is not None and event.at < step.started_at:
            timeline.append(TimelineEntry(event.at, event=event))
            event = next(pending, None)
        timeline.append(TimelineEntry(step.started_at, step=_step_view(step)))
    while event is not None:
        timeline.append(TimelineEntry(event.at, event=event))
        event = next(pending, None)
    return timeline


def run_audit(user: AnyUser, run: Run) -> list[AuditEvent] | None:
    """The run's audit rows, oldest first; ``None`` if the user may not read the team's audit."""
    if not access.for_user(user).can(TeamPerm.VIEW_AUDIT, run.team_id):
        return None
    rows = audit_events_for(user, object_type="fleet.run", object_id=str(run.pk), limit=AUDIT_ROWS)
    return rows[::-1]
