"""Reads of approvals that depend on who is asking: access helpers for one request, the queue,
one request's pane (its arguments, the agent's record, the escalation path), the policies and
escalation pages, and an agent's calibration (figures, reliability bins, promotion, export).

Every page-level read runs a fixed number of queries whatever the number of requests, levels or
decisions: the queue reads one page of pending requests through the partial index
(team, deadline) WHERE status = 'pending', counts and percentiles are computed by the database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Value,
    When,
    Window,
)
from django.db.models.functions import Ceil, Floor, Least, RowNumber
from django.http import Http404
from django.utils import timezone

from approvals import cedar, services
from approvals.api import POLICY as DECIDED_BY_POLICY
from approvals.models import (
    DECIDED,
    GLOBAL_SCOPE,
    ActivePolicy,
    ApprovalEvent,
    ApprovalKind,
    ApprovalRequest,
    ApprovalStatus,
    EscalationLevel,
    EscalationPolicy,
    Policy,
    PromotionRule,
    team_scope,
)
from cockpit import access
from cockpit.models import Team
from cockpit.roles import TeamPerm
from fleet.models import Agent, AgentEvent, Tier

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    AnyUser = User | AnonymousUser

PAGE_SIZE = 50
MAX_SHOWN = 500
RECORD_WINDOW = timedelta(days=30)
POLICY_VERSIONS_SHOWN = 10
LEVELS = (1, 2, 3, 4)

# Decisions a human made (or an approver's sampled review): not those policy took at once when
# an external agent asked (the API records them as decided by "policy"), nor expiries.
HUMAN_DECISION = Q(status__in=DECIDED) & ~Q(decided_by_label=DECIDED_BY_POLICY)
FINISHED = HUMAN_DECISION | Q(status=ApprovalStatus.EXPIRED)


def _rate(part: int, whole: int) -> float | None:
    return part * 100 / whole if whole else None


def duration_text(seconds: int) -> str:
    """How an SLA reads: "45 s", "2 min", "2 min 30 s", "1 h", "1 h 30 min"."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


# --- Access -----------------------------------------------------------------------------------


def get_request_for_user(user: AnyUser, pk: int, perm: str = TeamPerm.VIEW) -> ApprovalRequest:
    """404 unless the user sees the request's team; 403 unless ``perm`` is held there. Comes with
    its team, agent, run, escalation policy and that policy's levels (with their groups)."""
    requests = ApprovalRequest.objects.select_related(
        "team", "agent", "run", "escalation_policy", "decided_by"
    ).prefetch_related(Prefetch("escalation_policy__levels", queryset=EscalationLevel.objects.select_related("group")))
    return access.get_for_user(user, requests, perm, pk=pk)


def get_policy_for_user(user: AnyUser, pk: int) -> Policy:
    """A policy version the user may put back in force: 404 for a team policy of an invisible
    team; 403 unless the user administers its scope."""
    policy = Policy.objects.select_related("team").filter(pk=pk).first()
    if policy is None or (
        policy.team_id is not None and not access.has_team_perm(user, TeamPerm.VIEW, policy.team_id)
    ):
        raise Http404("No such policy.")
    if not can_manage_scope(user, policy.team_id):
        raise PermissionDenied(manage_refusal(policy.team))
    return policy


def can_manage_scope(user: AnyUser, team_id: int | None) -> bool:
    """Who edits a policy set: superusers and organisation-wide admins for the global set; the
    team's admins (manage permission) for a team's own set."""
    return access.for_user(user).can(TeamPerm.MANAGE, team_id)


def manage_refusal(team: Team | None) -> str:
    if team is None:
        return "Only superusers and organisation-wide admins change the global policy."
    return f"Only admins of {team.name} change its policy."


def get_escalation_policy_for_user(user: AnyUser, pk: int, perm: str = TeamPerm.MANAGE) -> EscalationPolicy:
    policies = EscalationPolicy.objects.select_related("team", "agent").prefetch_related(
        Prefetch("levels", queryset=EscalationLevel.objects.select_related("group"))
    )
    return access.get_for_user(user, policies, perm, pk=pk)


# --- Who decides what -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decider:
    """Where a user may decide, computed once per request (two queries): the teams where they
    are an approver (``None``: every team) and the escalation levels their groups decide at."""

    user_id: int
    is_superuser: bool
    approve_team_ids: frozenset[int] | None
    level_ids: frozenset[int]

    @property
    def approves_anywhere(self) -> bool:
        return self.approve_team_ids is None or bool(self.approve_team_ids)

    def live_data(self) -> dict[str, str]:
        """What static/approvals/js/queue.js needs to pick out the toasts meant for this user."""
        return {
            "all": "true" if self.is_superuser else "false",
            "teams": "*" if self.approve_team_ids is None else ",".join(map(str, sorted(self.approve_team_ids))),
            "levels": ",".join(map(str, sorted(self.level_ids))),
        }


def decider_for(user: User) -> Decider:
    ids = access.for_user(user).team_ids(TeamPerm.APPROVE)
    return Decider(
        user_id=user.pk,
        is_superuser=user.is_superuser,
        approve_team_ids=None if ids is None else frozenset(ids),
        level_ids=frozenset(services.decider_levels(user)) if ids != set() else frozenset(),
    )


def decidable(decider: Decider) -> Q:
    """The pending requests ``approvals.services.check_decider`` would let this user decide, as
    one SQL condition: an approver of the team; for approvals (not reviews), the current level
    has no group or one of theirs (superusers skip this); and not a run they started when
    separation of duties applies."""
    condition = Q(status=ApprovalStatus.PENDING)
    if decider.approve_team_ids is not None:
        condition &= Q(team_id__in=decider.approve_team_ids)
    if not decider.is_superuser:
        other_group = EscalationLevel.objects.filter(
            policy_id=OuterRef("escalation_policy_id"), level=OuterRef("level"), group__isnull=False
        ).exclude(pk__in=decider.level_ids)
        condition &= Q(kind=ApprovalKind.REVIEW) | Q(~Exists(other_group))
    condition &= ~Q(run_started_by_id=decider.user_id) | Q(escalation_policy__separation_of_duties=False)
    return condition


def decision_refusal(user: User, request: ApprovalRequest) -> str | None:
    """Why the user may not decide this pending request (``None``: they may)."""
    try:
        services.check_decider(user, request)
    except PermissionDenied as exc:
        return str(exc)
    return None


# --- The queue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    request: ApprovalRequest
    can_decide: bool
    level: EscalationLevel | None  # the current level: who decides, its SLA
    levels: int  # how many levels the escalation path has

    @property
    def sla_seconds(self) -> int:
        return self.level.sla_seconds if self.level else services.DEFAULT_SLA_SECONDS

    @property
    def summary(self) -> str:
        return arguments_summary(self.request.arguments)


@dataclass(frozen=True)
class Queue:
    rows: list[QueueRow]
    level_counts: dict[int, int]  # L1..L4 under every filter but the level
    total: int  # under every filter

    @property
    def has_more(self) -> bool:
        return self.total > len(self.rows)

    @property
    def all_levels(self) -> int:
        return sum(self.level_counts.values())


def queue(
    user: User,
    decider: Decider,
    *,
    mine: bool,
    team: Team | None = None,
    agent: Agent | None = None,
    risk: str = "",
    level: int | None = None,
    kind: str = "",
    limit: int = PAGE_SIZE,
) -> Queue:
    """Pending requests, soonest deadline first: "mine" are those the user may decide now, else
    every pending request of the teams they see (each marked whether they may decide it).
    Three queries, whatever the number of pending requests."""
    pending = ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING)
    pending = pending.filter(decidable(decider)) if mine else access.scope_to_user(pending, user)
    if team is not None:
        pending = pending.filter(team=team)
    if agent is not None:
        pending = pending.filter(agent=agent)
    if risk:
        pending = pending.filter(risk=risk)
    if kind:
        pending = pending.filter(kind=kind)
    counts = dict.fromkeys(LEVELS, 0)
    counts.update(pending.order_by().values_list("level").annotate(n=Count("pk")))
    if level is not None:
        pending = pending.filter(level=level)
    total = counts.get(level, 0) if level is not None else sum(counts.values())
    rows = pending.select_related("team", "agent").defer(
        "reasoning", "policy_decision", "edited_arguments", "callback_url", "idempotency_key"
    )
    if mine:
        rows = rows.annotate(can_decide=Value(True))
    elif not decider.approves_anywhere:
        rows = rows.annotate(can_decide=Value(False))
    else:
        rows = rows.annotate(
            can_decide=Case(
                When(decidable(decider), then=Value(True)), default=Value(False), output_field=BooleanField()
            )
        )
    page = list(rows.order_by("deadline", "pk")[:limit])
    levels = _levels_by_policy({r.escalation_policy_id for r in page if r.escalation_policy_id})
    return Queue(
        rows=[
            QueueRow(
                request=r,
                can_decide=r.can_decide,
                level=next((lv for lv in levels.get(r.escalation_policy_id or 0, []) if lv.level == r.level), None),
                levels=len(levels.get(r.escalation_policy_id or 0, [])),
            )
            for r in page
        ],
        level_counts=counts,
        total=total,
    )


def _levels_by_policy(policy_ids: set[int]) -> dict[int, list[EscalationLevel]]:
    grouped: dict[int, list[EscalationLevel]] = {}
    if policy_ids:
        for lv in EscalationLevel.objects.filter(policy_id__in=policy_ids).select_related("group"):
            grouped.setdefault(lv.policy_id, []).append(lv)
    return grouped


def arguments_summary(arguments: Mapping[str, Any], limit: int = 90) -> str:
    """One line for a queue row: ``amount 29.50 · currency EUR · ticket_id T-1021``."""
    parts = []
    for key, value in arguments.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)
        parts.append(f"{key} {' '.join(text.split())[:40]}")
    line = " · ".join(parts)
    return line if len(line) <= limit else f"{line[: limit - 1]}…"


# --- One request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgumentRow:
    key: str
    text: str
    is_json: bool  # nested (or not a string): shown as JSON


def _shown(value: Any) -> ArgumentRow:
    if isinstance(value, str):
        return ArgumentRow("", value, False)
    indent = 2 if isinstance(value, dict | list) else None
    return ArgumentRow("", json.dumps(value, indent=indent, ensure_ascii=False, cls=DjangoJSONEncoder), True)


def tool_is_callable(name: str) -> bool:
    """Whether Cockpit has this tool registered, so that an approver can carry a manual request
    out through it from the pane."""
    from fleet.runtime import registry

    try:
        registry.get_tool(name)
    except LookupError:
        return False
    return True


def argument_rows(arguments: Mapping[str, Any]) -> list[ArgumentRow]:
    rows = []
    for key, value in arguments.items():
        shown = _shown(value)
        rows.append(ArgumentRow(key, shown.text, shown.is_json))
    return rows


@dataclass(frozen=True)
class ArgumentChange:
    key: str
    state: str  # "same" | "changed" | "added" | "removed"
    before: ArgumentRow | None
    after: ArgumentRow | None


def argument_diff(original: Mapping[str, Any], edited: Mapping[str, Any]) -> list[ArgumentChange]:
    """Key by key, what the approver changed (original keys first, then the added ones)."""
    changes = []
    for key in [*original, *(k for k in edited if k not in original)]:
        before = _shown(original[key]) if key in original else None
        after = _shown(edited[key]) if key in edited else None
        if before is None:
            state = "added"
        elif after is None:
            state = "removed"
        else:
            state = "same" if original[key] == edited[key] else "changed"
        changes.append(ArgumentChange(key, state, before, after))
    return changes


@dataclass(frozen=True)
class Record:
    """The agent's recent record for one action: human decisions in the last 30 days."""

    approved: int
    edited: int
    rejected: int

    @property
    def decided(self) -> int:
        return self.approved + self.edited + self.rejected

    @property
    def approval_rate(self) -> float | None:
        return _rate(self.approved + self.edited, self.decided)

    @property
    def edit_rate(self) -> float | None:
        return _rate(self.edited, self.decided)

    @property
    def rejection_rate(self) -> float | None:
        return _rate(self.rejected, self.decided)


def decision_record(request: ApprovalRequest, *, now: datetime | None = None) -> Record:
    """One query, served by the (agent, action, -created_at) index."""
    since = (now or timezone.now()) - RECORD_WINDOW
    figures = (
        ApprovalRequest.objects.filter(agent_id=request.agent_id, action=request.action, created_at__gte=since)
        .filter(HUMAN_DECISION)
        .exclude(pk=request.pk)
        .aggregate(
            approved=Count("pk", filter=Q(status=ApprovalStatus.APPROVED)),
            edited=Count("pk", filter=Q(status=ApprovalStatus.APPROVED_WITH_EDITS)),
            rejected=Count("pk", filter=Q(status=ApprovalStatus.REJECTED)),
        )
    )
    return Record(**figures)


@dataclass(frozen=True)
class PathStep:
    level: EscalationLevel
    state: str  # "past" | "current" | "next"

    @property
    def sla(self) -> str:
        return duration_text(self.level.sla_seconds)


def escalation_path(request: ApprovalRequest) -> list[PathStep]:
    """Every level of the request's escalation policy (prefetched by ``get_request_for_user``)."""
    policy = request.escalation_policy
    if policy is None:
        return []
    steps = []
    for lv in policy.levels.all():
        state = "past" if lv.level < request.level else "current" if lv.level == request.level else "next"
        steps.append(PathStep(lv, state))
    return steps


@dataclass(frozen=True)
class HistoryEntry:
    event: ApprovalEvent
    text: str


def _status_label(value: str) -> str:
    return ApprovalStatus(value).label if value in ApprovalStatus.values else value


def request_history(request: ApprovalRequest) -> list[HistoryEntry]:
    """The request's events, oldest first, each worded for the pane."""
    entries = []
    for event in request.events.order_by("at", "pk"):
        if event.kind == ApprovalEvent.Kind.CREATED:
            text = "asked" if event.new == ApprovalStatus.PENDING else f"decided at once: {_status_label(event.new)}"
        elif event.kind == ApprovalEvent.Kind.ESCALATED:
            text = f"escalated {event.old} → {event.new}"
        elif event.kind == ApprovalEvent.Kind.NOTIFIED:
            level = event.data.get("level")
            text = f"notified by {event.new}" + (f" (L{level})" if level else "")
        else:
            text = _status_label(event.new)
        entries.append(HistoryEntry(event, text))
    return entries


def policy_explain(request: ApprovalRequest) -> str:
    """Why policy sent the request to a person, in its words; for a review, why it was sampled
    and what policy had said."""
    decision = request.policy_decision
    explain, reason = str(decision.get("explain") or ""), str(decision.get("reason") or "")
    if request.kind == ApprovalKind.REVIEW and reason and explain and reason != explain:
        return f"{reason.capitalize()}; the policy had {explain}."
    return explain or reason


def policy_rules(request: ApprovalRequest) -> list[str]:
    """The rule ids that sent the request to a human, as the gate recorded them."""
    rules = request.policy_decision.get("rules", "")
    if isinstance(rules, list):
        return [str(rule) for rule in rules]
    return [rule.strip() for rule in str(rules).split(",") if rule.strip()]


# --- Policies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyScope:
    """The global set or one team's: the version in force and the earlier ones."""

    scope: str
    team: Team | None
    active: ActivePolicy | None
    versions: list[Policy]  # newest first, at most POLICY_VERSIONS_SHOWN
    can_manage: bool

    @property
    def label(self) -> str:
        return "Global policy" if self.team is None else f"{self.team.name} policy"

    @property
    def reactivated(self) -> bool:
        """Put back in force after it was saved (a rollback), rather than in force since saved."""
        active = self.active
        return active is not None and (active.activated_at - active.policy.created_at).total_seconds() > 60

    @property
    def dom_id(self) -> str:
        return "policy-global" if self.team is None else f"policy-team-{self.team.pk}"

    @property
    def key(self) -> str:
        """What the editor posts to say which set it saves: "global" or the team's slug."""
        return GLOBAL_SCOPE if self.team is None else self.team.slug

    @property
    def source(self) -> str:
        return self.active.policy.source if self.active else ""

    @property
    def next_version(self) -> int:
        return self.versions[0].version + 1 if self.versions else 1


def policy_scopes(user: AnyUser) -> list[PolicyScope]:
    """The global set, then each visible team's, by team name: three queries."""
    teams = list(access.teams_for_user(user).order_by("name"))
    scopes: list[tuple[str, Team | None]] = [(GLOBAL_SCOPE, None), *((team_scope(t), t) for t in teams)]
    names = [name for name, _ in scopes]
    active = {
        row.scope: row for row in ActivePolicy.objects.filter(scope__in=names).select_related("policy", "policy__team")
    }
    ranked = Policy.objects.filter(scope__in=names).annotate(
        position=Window(RowNumber(), partition_by=[F("scope")], order_by=F("version").desc())
    )
    versions: dict[str, list[Policy]] = {}
    for policy in ranked.filter(position__lte=POLICY_VERSIONS_SHOWN).order_by("scope", "-version"):
        versions.setdefault(policy.scope, []).append(policy)
    return [
        PolicyScope(
            scope=name,
            team=team,
            active=active.get(name),
            versions=versions.get(name, []),
            can_manage=can_manage_scope(user, team.pk if team else None),
        )
        for name, team in scopes
    ]


@dataclass(frozen=True)
class PolicyVerdict:
    """What the policies in force say about an imaginary action (the policies page's test)."""

    agent: Agent
    action: str
    risk: str
    side_effect: bool
    context: dict[str, Any]
    verdict: cedar.Verdict
    policies: list[Policy]


def policy_verdict(
    *,
    agent: Agent,
    action: str,
    risk: str,
    side_effect: bool,
    args: dict[str, Any],
    extra: dict[str, Any],
    confidence: float | None,
) -> PolicyVerdict:
    """Put the action to the agent's team's policies, as the runtime's gate would (sample 0)."""
    context = cedar.context_for(args=args, confidence=confidence, extra=extra, sample=0)
    verdict, policies = services.judge(
        team=agent.team, agent=agent, tool=action, risk=risk, side_effect=side_effect, context=context
    )
    return PolicyVerdict(
        agent=agent,
        action=action,
        risk=risk,
        side_effect=side_effect,
        context=context,
        verdict=verdict,
        policies=policies,
    )


# --- Escalation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelView:
    level: EscalationLevel
    members: list[str]

    @property
    def sla(self) -> str:
        return duration_text(self.level.sla_seconds)


@dataclass(frozen=True)
class EscalationView:
    policy: EscalationPolicy
    levels: list[LevelView]

    @property
    def applies_to(self) -> str:
        policy = self.policy
        if policy.agent is not None and policy.risk:
            return f"{policy.agent.name}, {policy.get_risk_display().lower()} risk"
        if policy.agent is not None:
            return f"{policy.agent.name}, every risk"
        if policy.risk:
            return f"every agent, {policy.get_risk_display().lower()} risk"
        return "every agent and risk (the team's default)"


@dataclass(frozen=True)
class TeamEscalation:
    team: Team
    policies: list[EscalationView]
    can_manage: bool


def escalation_overview(user: AnyUser) -> list[TeamEscalation]:
    """Each visible team's escalation policies, most general first, with their levels and the
    members of each level's group: four queries."""
    teams = list(access.teams_for_user(user).order_by("name"))
    policies = list(EscalationPolicy.objects.filter(team__in=teams).select_related("agent"))
    levels = _levels_by_policy({p.pk for p in policies})
    group_ids = {lv.group_id for lvs in levels.values() for lv in lvs if lv.group_id}
    members: dict[int, list[str]] = {}
    memberships = User.groups.through.objects.filter(group_id__in=group_ids, user__is_active=True)
    for group_id, username in memberships.order_by("user__username").values_list("group_id", "user__username"):
        members.setdefault(group_id, []).append(username)
    by_team: dict[int, list[EscalationView]] = {}
    for policy in sorted(policies, key=lambda p: (p.specificity, p.name)):
        views = [
            LevelView(lv, members.get(lv.group_id, []) if lv.group_id else []) for lv in levels.get(policy.pk, [])
        ]
        by_team.setdefault(policy.team_id, []).append(EscalationView(policy, views))
    user_access = access.for_user(user)
    return [TeamEscalation(t, by_team.get(t.pk, []), user_access.can(TeamPerm.MANAGE, t.pk)) for t in teams]


# --- Calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """An agent's decisions (approvals and reviews) since ``since`` (``None``: ever)."""

    approved: int
    edited: int
    rejected: int
    expired: int
    by_level: dict[int, int]  # human decisions made at L1..L4
    median_seconds: float | None
    p95_seconds: float | None
    sla_seconds: int | None  # L1 of the agent's escalation path
    within_sla: int | None  # human decisions made within it

    @property
    def decided(self) -> int:
        return self.approved + self.edited + self.rejected

    @property
    def approval_rate(self) -> float | None:
        return _rate(self.approved + self.edited, self.decided)

    @property
    def unchanged_rate(self) -> float | None:
        return _rate(self.approved, self.decided)

    @property
    def edit_rate(self) -> float | None:
        return _rate(self.edited, self.decided)

    @property
    def rejection_rate(self) -> float | None:
        return _rate(self.rejected, self.decided)

    @property
    def sla_text(self) -> str:
        return "—" if self.sla_seconds is None else duration_text(self.sla_seconds)

    @property
    def median_text(self) -> str:
        return "—" if self.median_seconds is None else duration_text(round(self.median_seconds))

    @property
    def p95_text(self) -> str:
        return "—" if self.p95_seconds is None else duration_text(round(self.p95_seconds))

    @property
    def within_sla_rate(self) -> float | None:
        return None if self.within_sla is None else _rate(self.within_sla, self.decided)


def _agent_requests(agent: Agent, since: datetime | None) -> QuerySet[ApprovalRequest]:
    requests = ApprovalRequest.objects.filter(agent=agent)
    return requests if since is None else requests.filter(created_at__gte=since)


def l1_sla_seconds(agent: Agent) -> int | None:
    """The first level's SLA on the agent's path for actions of no particular risk."""
    policy = services.escalation_policy_for(agent.team_id, agent, "")
    first = policy.levels.filter(level=1).first() if policy else None
    return first.sla_seconds if first else None


def calibration(agent: Agent, *, since: datetime | None, sla_seconds: int | None) -> Calibration:
    """Two queries: the counts, then the median and p95 of the time to a human decision."""
    requests = _agent_requests(agent, since)
    counts: dict[str, Any] = {
        "approved": Count("pk", filter=HUMAN_DECISION & Q(status=ApprovalStatus.APPROVED)),
        "edited": Count("pk", filter=HUMAN_DECISION & Q(status=ApprovalStatus.APPROVED_WITH_EDITS)),
        "rejected": Count("pk", filter=HUMAN_DECISION & Q(status=ApprovalStatus.REJECTED)),
        "expired": Count("pk", filter=Q(status=ApprovalStatus.EXPIRED)),
        **{f"at_l{n}": Count("pk", filter=HUMAN_DECISION & Q(level=n)) for n in LEVELS},
    }
    if sla_seconds is not None:
        in_time = Q(decided_at__lte=F("created_at") + timedelta(seconds=sla_seconds))
        counts["within_sla"] = Count("pk", filter=HUMAN_DECISION & in_time)
    figures = requests.aggregate(**counts)
    median, p95 = _waited_percentiles(requests.filter(HUMAN_DECISION, decided_at__isnull=False))
    return Calibration(
        approved=figures["approved"],
        edited=figures["edited"],
        rejected=figures["rejected"],
        expired=figures["expired"],
        by_level={n: figures[f"at_l{n}"] for n in LEVELS},
        median_seconds=median,
        p95_seconds=p95,
        sla_seconds=sla_seconds,
        within_sla=figures.get("within_sla"),
    )


def _waited_percentiles(requests: QuerySet[ApprovalRequest]) -> tuple[float | None, float | None]:
    """Median and p95 (nearest rank) of decided_at − created_at, in one query."""
    waited = ExpressionWrapper(F("decided_at") - F("created_at"), output_field=DurationField())
    ranked = requests.annotate(took=waited).annotate(
        position=Window(RowNumber(), order_by=F("took").asc()),
        total=Window(Count("pk")),
    )
    wanted = Q(position=Ceil(F("total") * 0.5)) | Q(position=Ceil(F("total") * 0.95))
    picked = sorted(ranked.filter(wanted).order_by().values_list("position", "took"))
    if not picked:
        return None, None
    # ⌈0.5 n⌉ ≤ ⌈0.95 n⌉: the first row is the median, the last the p95 (one row when n = 1).
    return picked[0][1].total_seconds(), picked[-1][1].total_seconds()


@dataclass(frozen=True)
class ReliabilityBin:
    """Requests whose confidence was in [lower, lower + 0.1), and how many were approved as
    proposed (no edits)."""

    lower: float
    count: int
    unchanged: int

    @property
    def center(self) -> float:
        return round(self.lower + 0.05, 2)

    @property
    def share(self) -> float | None:
        return self.unchanged / self.count if self.count else None


def reliability(agent: Agent, *, since: datetime | None) -> list[ReliabilityBin]:
    """Ten bins of confidence (0.9 holds 1.0), human decisions only: one query."""
    decided = _agent_requests(agent, since).filter(HUMAN_DECISION, confidence__isnull=False)
    rows = (
        decided.annotate(bin=Least(Floor(F("confidence") * 10), Value(9.0), output_field=FloatField()))
        .order_by()
        .values("bin")
        .annotate(n=Count("pk"), unchanged=Count("pk", filter=Q(status=ApprovalStatus.APPROVED)))
    )
    found = {int(row["bin"]): row for row in rows}
    return [
        ReliabilityBin(n / 10, found[n]["n"] if n in found else 0, found[n]["unchanged"] if n in found else 0)
        for n in range(10)
    ]


@dataclass(frozen=True)
class Promotion:
    """Whether the agent has earned the next tier up (a lower number) under its team's rule,
    judged on its human decisions since it got its current tier."""

    agent: Agent
    rule: PromotionRule
    since: datetime | None
    decisions: int
    unchanged: int
    violations: int  # rejected requests

    @property
    def unchanged_rate(self) -> float | None:
        return _rate(self.unchanged, self.decisions)

    @property
    def target_tier(self) -> int | None:
        return self.agent.tier - 1 if self.agent.tier > Tier.FULL_AUTO else None

    @property
    def target_label(self) -> str:
        return Tier(self.target_tier).label if self.target_tier else ""

    @property
    def checks(self) -> list[tuple[str, bool]]:
        rate = self.unchanged_rate
        rule = self.rule
        return [
            (f"at least {rule.min_decisions:,} decisions ({self.decisions:,})", self.decisions >= rule.min_decisions),
            (
                f"at least {rule.min_unchanged_rate:g} % approved unchanged "
                f"({'—' if rate is None else f'{rate:.1f} %'})",
                rate is not None and Decimal(str(rate)) >= rule.min_unchanged_rate,
            ),
            (
                f"at most {rule.max_violations:,} rejections ({self.violations:,})",
                self.violations <= rule.max_violations,
            ),
        ]

    @property
    def meets(self) -> bool:
        return self.target_tier is not None and all(ok for _, ok in self.checks)


def promotion_rule(team: Team) -> PromotionRule:
    """The team's rule, or the defaults (1,000 decisions, 99 % unchanged, no rejection)."""
    return PromotionRule.objects.filter(team=team).first() or PromotionRule(team=team)


def promotion(agent: Agent) -> Promotion:
    """Three queries: the rule, when the agent got its tier, its decisions since."""
    rule = promotion_rule(agent.team)
    since = (
        AgentEvent.objects.filter(agent=agent, kind=AgentEvent.Kind.TIER).order_by("-at").values_list("at", flat=True)
    ).first()
    figures = _agent_requests(agent, since).aggregate(
        decisions=Count("pk", filter=HUMAN_DECISION),
        unchanged=Count("pk", filter=HUMAN_DECISION & Q(status=ApprovalStatus.APPROVED)),
        violations=Count("pk", filter=HUMAN_DECISION & Q(status=ApprovalStatus.REJECTED)),
    )
    return Promotion(agent=agent, rule=rule, since=since, **figures)


# --- Export -----------------------------------------------------------------------------------

EXPORT_FIELDS = (
    "pk",
    "kind",
    "action",
    "arguments",
    "reasoning",
    "confidence",
    "risk",
    "status",
    "edited_arguments",
    "decision_reason",
    "level",
    "decided_by_label",
    "created_at",
    "decided_at",
)


def decisions_export(agent: Agent) -> Iterator[str]:
    """The agent's finished requests (decided by a person, or expired), oldest decision first,
    one JSON object per line; read from the database in chunks."""
    rows = (
        ApprovalRequest.objects.filter(agent=agent)
        .filter(FINISHED)
        .order_by("decided_at", "pk")
        .values_list(*EXPORT_FIELDS)
        .iterator(chunk_size=500)
    )
    for values in rows:
        row = dict(zip(EXPORT_FIELDS, values, strict=True))
        waited = row["decided_at"] - row["created_at"] if row["decided_at"] else None
        line = {
            "id": row["pk"],
            "kind": row["kind"],
            "action": row["action"],
            "arguments": row["arguments"],
            "reasoning": row["reasoning"],
            "confidence": row["confidence"],
            "risk": row["risk"],
            "decision": row["status"],
            "edits": row["edited_arguments"],
            "reason": row["decision_reason"],
            "level": row["level"],
            "decided_by": row["decided_by_label"],
            "created_at": row["created_at"],
            "decided_at": row["decided_at"],
            "waited_seconds": round(waited.total_seconds(), 3) if waited is not None else None,
        }
        yield json.dumps(line, ensure_ascii=False, cls=DjangoJSONEncoder) + "\n"
