"""REST API for runs: external agents register runs, poll directives and report progress;
managed runs are started here too; operators pause, resume, cancel and override.

    POST /api/v1/runs                      register an external run, or start a managed one
    GET  /api/v1/runs                      list runs (newest first)
    GET  /api/v1/runs/{id}                 one run with its steps
    GET  /api/v1/runs/{id}/directive       continue | pause | cancel | stop (long-poll with ?wait=)
    POST /api/v1/runs/{id}/events          report a step, or how the run ended (external runs)
    POST /api/v1/runs/{id}/pause|resume|cancel|override   operator control (signed-in users)
    GET  /api/v1/agents                    agents you can see
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from ninja import Field, Query, Router, Schema, Status

from cockpit import access, live
from cockpit.api import Count, Id, Input, Money, Seconds, Timestamp, idempotency_key, key_or_session, session_auth
from cockpit.audit import Actor
from cockpit.models import ApiKey, Scope
from cockpit.roles import TeamPerm
from fleet import services
from fleet.models import FINAL_RUN_STATUSES, Agent, Run, RunStatus

router = Router(tags=["runs"])
agents_router = Router(tags=["agents"])

MAX_WAIT_SECONDS = 30


# --- Schemas ----------------------------------------------------------------------------------


class RunCreateIn(Input):
    agent: str = Field(description="the agent's slug, in the API key's team")
    managed: bool = Field(False, description="true: Cockpit runs the agent; false: it runs elsewhere and reports")
    input: dict[str, Any] = Field(default_factory=dict, description="managed runs: the agent function's arguments")
    input_summary: str = Field("", max_length=2000, description="external runs: what the run is about")
    idempotency_key: str = Field("", max_length=200, description="the same key returns the same run")
    external_ref: str = Field("", max_length=200, description="the run's id in the agent's own system")
    team: str | None = Field(None, description="team slug (signed-in users in several teams)")


class StepOut(Schema):
    seq: int
    kind: str
    name: str
    status: str
    model: str
    simulated: bool
    tokens_in: int
    tokens_out: int
    cost: Decimal | None
    attempts: int
    error: str
    started_at: datetime
    ended_at: datetime | None
    input: Any
    output: Any
    compensates: int | None


class RunOut(Schema):
    id: int
    agent: str = Field(alias="agent.slug")
    team: str = Field(alias="team.slug")
    kind: str
    status: str
    status_reason: str
    directive: str = Field(description="continue, pause, cancel or stop: see /runs/{id}/directive")
    version: str | None = Field(None, alias="version.version")
    input: dict[str, Any]
    input_summary: str
    overrides: dict[str, Any]
    result: Any
    error: str
    tokens_in: int
    tokens_out: int
    cost: Decimal
    step_count: int
    trace_id: str
    traceparent: str = Field(
        description="W3C trace context of the run: start your agent's spans under it (e.g. with "
        "TraceContextTextMapPropagator().extract({'traceparent': …})) and they join the run's trace"
    )
    idempotency_key: str
    external_ref: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None

    @staticmethod
    def resolve_directive(run: Run) -> str:
        return directive_for(run)["directive"]

    @staticmethod
    def resolve_traceparent(run: Run) -> str:
        from fleet.telemetry import root_span_id

        return f"00-{run.trace_id}-{root_span_id(run):016x}-01"


class RunDetailOut(RunOut):
    steps: list[StepOut]


class RunPageOut(Schema):
    items: list[RunOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page")


class DirectiveOut(Schema):
    run: int
    status: str
    directive: Literal["continue", "pause", "cancel", "stop"] = Field(
        description="continue; pause (stop at the next step and poll until continue); cancel (stop, undo what you "
        "can, report cancelled); stop (the run has ended)"
    )
    reason: str
    overrides: dict[str, Any] = Field(description="operator overrides to apply from the next step")


class ReportIn(Input):
    type: Literal["step", "status"]
    kind: str = Field("tool", description="step: llm, tool, approval, decision or checkpoint")
    name: str = Field("", max_length=160)
    status: str = Field(
        "succeeded",
        description="step: started, succeeded or failed; status: succeeded, failed or cancelled",
    )
    model: str = ""
    tokens_in: Count = 0
    tokens_out: Count = 0
    cost: Money | None = None
    duration_seconds: Seconds = 0
    input: dict[str, Any] | None = None
    output: Any = None
    error: str = ""
    result: Any = None
    reason: str = ""
    approval_hash: str | None = Field(
        None,
        max_length=64,
        description="step: the action_hash of the approval that covers it (GET /api/v1/approvals/{id}); the "
        "step is refused (409, recorded as failed and audited) unless its name and input are exactly what was "
        "approved",
    )


class ReasonIn(Input):
    reason: str = ""


class OverrideIn(Input):
    changes: dict[str, Any] = Field(description="any of: model, temperature, max_steps, budget, input (null removes)")
    reason: str = ""


class AgentOut(Schema):
    slug: str
    name: str
    team: str = Field(alias="team.slug")
    kind: str
    tier: int
    status: str
    status_reason: str
    current_version: str | None = Field(None, alias="current_version.version")


# --- Helpers ----------------------------------------------------------------------------------


def directive_for(run: Run) -> dict[str, Any]:
    if run.status == RunStatus.CANCELLED or (run.cancel_requested and not run.is_final):
        directive = "cancel"
    elif run.status in FINAL_RUN_STATUSES:
        directive = "stop"
    elif run.status == RunStatus.PAUSED or run.pause_requested:
        directive = "pause"
    else:
        directive = "continue"
    return {
        "run": run.pk,
        "status": run.status,
        "directive": directive,
        "reason": run.directive_reason or run.status_reason,
        "overrides": run.overrides,
    }


def _runs() -> Any:
    return Run.objects.select_related("agent", "team", "version")


def _run_for(principal: Any, run_id: int, perm: str = TeamPerm.VIEW) -> Run:
    """The run if the principal may see it (404 otherwise) and, for people, holds ``perm``."""
    run = access.scope_to_principal(_runs(), principal).filter(pk=run_id).first()
    if run is None:
        raise Http404
    if not isinstance(principal, ApiKey) and not access.has_team_perm(principal, perm, run.team_id):
        raise PermissionDenied(f"Your role in {run.team.name} does not allow this.")
    return run


# --- Runs -------------------------------------------------------------------------------------


@router.post(
    "/runs",
    response={200: RunOut, 201: RunOut},
    auth=key_or_session(Scope.RUNS),
    summary="Register an external run or start a managed one",
)
def run_create(request: HttpRequest, payload: RunCreateIn) -> Status:
    principal = request.auth  # type: ignore[attr-defined]
    agents = access.scope_to_principal(
        Agent.objects.select_related("team", "current_version"),
        principal,
        TeamPerm.VIEW if isinstance(principal, ApiKey) else TeamPerm.OPERATE,
    )
    if payload.team:
        agents = agents.filter(team__slug=payload.team)
    matches = list(agents.filter(slug=payload.agent)[:2])
    if not matches:
        raise Http404
    if len(matches) > 1:
        from django.core.exceptions import ValidationError

        raise ValidationError({"team": f"Several of your teams have an agent {payload.agent!r}: say which team."})
    key = idempotency_key(request, payload.idempotency_key)
    run, created = services.run_create(
        actor=Actor.from_request(request),
        agent=matches[0],
        input=payload.input,
        input_summary=payload.input_summary,
        idempotency_key=key,
        external_ref=payload.external_ref,
        managed=payload.managed,
    )
    return Status(201 if created else 200, run)


class RunFilter(Input):
    agent: str | None = None
    status: RunStatus | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    before: Id | None = Field(None, description="runs older than this id")
    limit: int = Field(50, ge=1, le=200)


@router.get("/runs", response=RunPageOut, auth=key_or_session(Scope.READ), summary="Runs, newest first")
def run_list(request: HttpRequest, filters: Query[RunFilter]) -> dict[str, Any]:
    runs = access.scope_to_principal(_runs(), request.auth)  # type: ignore[attr-defined]
    if filters.agent:
        runs = runs.filter(agent__slug=filters.agent)
    if filters.status:
        runs = runs.filter(status=filters.status)
    if filters.since:
        runs = runs.filter(created_at__gte=filters.since)
    if filters.until:
        runs = runs.filter(created_at__lt=filters.until)
    if filters.before:
        runs = runs.filter(pk__lt=filters.before)
    items = list(runs.order_by("-id")[: filters.limit])
    return {"items": items, "next_before": items[-1].pk if len(items) == filters.limit else None}


@router.get(
    "/runs/{run_id}",
    response=RunDetailOut,
    auth=key_or_session(Scope.READ),
    summary="One run and its steps",
)
def run_detail(request: HttpRequest, run_id: Id) -> Run:
    return _run_for(request.auth, run_id)  # type: ignore[attr-defined]


@router.get(
    "/runs/{run_id}/directive",
    response=DirectiveOut,
    auth=key_or_session(Scope.RUNS),
    summary="What the agent should do next (long-poll with ?wait=seconds)",
)
async def run_directive(
    request: HttpRequest, run_id: Id, wait: int = Query(0, ge=0, le=MAX_WAIT_SECONDS)
) -> dict[str, Any]:
    """Returns at once when ``wait`` is 0 or the directive is not ``continue``; otherwise holds
    the request until the directive changes (pause, cancel, an override) or ``wait`` seconds pass."""
    principal = request.auth  # type: ignore[attr-defined]
    if wait == 0:
        return directive_for(await sync_to_async(_run_for)(principal, run_id))
    # Woken by the run's live events, holding no database connection while it waits.
    return await live.hold_until(
        f"run.{run_id}",
        lambda: directive_for(_run_for(principal, run_id)),
        lambda first, latest: latest["directive"] != "continue" or latest != first,
        seconds=wait,
    )


class RefusedOut(Schema):
    detail: str


@router.post(
    "/runs/{run_id}/events",
    response={200: DirectiveOut, 409: RefusedOut},
    auth=key_or_session(Scope.RUNS),
    summary="Report a step, or how the run ended (external runs)",
)
def run_events(request: HttpRequest, run_id: Id, report: ReportIn) -> Status:
    run = _run_for(request.auth, run_id, TeamPerm.OPERATE)  # type: ignore[attr-defined]
    run = services.run_report(actor=Actor.from_request(request), run=run, report=report.dict(exclude_none=True))
    refused = getattr(run, "refused", "")
    if refused:
        return Status(409, {"detail": refused})
    run.refresh_from_db()
    return Status(200, directive_for(run))


@router.post("/runs/{run_id}/pause", response=RunOut, auth=session_auth, summary="Pause at the next step")
def run_pause(request: HttpRequest, run_id: Id, payload: ReasonIn) -> Run:
    run = _run_for(request.user, run_id, TeamPerm.OPERATE)
    return services.run_pause(actor=Actor.from_request(request), run=run, reason=payload.reason)


@router.post("/runs/{run_id}/resume", response=RunOut, auth=session_auth, summary="Resume a paused run")
def run_resume(request: HttpRequest, run_id: Id, payload: ReasonIn) -> Run:
    run = _run_for(request.user, run_id, TeamPerm.OPERATE)
    return services.run_resume(actor=Actor.from_request(request), run=run, reason=payload.reason)


@router.post(
    "/runs/{run_id}/cancel",
    response=RunOut,
    auth=session_auth,
    summary="Cancel (a reason is required)",
)
def run_cancel(request: HttpRequest, run_id: Id, payload: ReasonIn) -> Run:
    run = _run_for(request.user, run_id, TeamPerm.OPERATE)
    return services.run_cancel(actor=Actor.from_request(request), run=run, reason=payload.reason)


@router.post(
    "/runs/{run_id}/override",
    response=RunOut,
    auth=session_auth,
    summary="Override model, temperature, max steps, budget or input of a paused run",
)
def run_override(request: HttpRequest, run_id: Id, payload: OverrideIn) -> Run:
    run = _run_for(request.user, run_id, TeamPerm.OPERATE)
    return services.run_override(
        actor=Actor.from_request(request), run=run, changes=payload.changes, reason=payload.reason
    )


# --- Agents -----------------------------------------------------------------------------------


@agents_router.get(
    "/agents",
    response=list[AgentOut],
    auth=key_or_session(Scope.READ),
    summary="Agents you can see",
)
def agent_list(request: HttpRequest) -> Any:
    agents = Agent.objects.select_related("team", "current_version")
    return access.scope_to_principal(agents, request.auth).order_by("team__slug", "slug")  # type: ignore[attr-defined]
