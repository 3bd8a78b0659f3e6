"""REST API for approvals: external agents ask (policy may decide at once), then long-poll for
the decision or receive a signed callback; approvers decide.

    POST /api/v1/approvals                  ask for a decision (Idempotency-Key honoured)
    GET  /api/v1/approvals                  requests, newest first (paged with ?before=<id>)
    GET  /api/v1/approvals/{id}?wait=30     one request (long-poll until it changes)
    POST /api/v1/approvals/{id}/decision    approve / approve with edits / reject (signed-in approvers)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status

from approvals import cedar
from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import AlreadyDecided, PolicyRefusal, approval_decide, approval_request_create, judge
from cockpit import access, live
from cockpit.api import Id, Input, api, idempotency_key, key_or_session, session_auth
from cockpit.audit import Actor
from cockpit.models import ApiKey, Scope
from cockpit.roles import TeamPerm
from fleet.models import Agent, Risk, Tier, Tool

router = Router(tags=["approvals"])
MAX_WAIT_SECONDS = 30
POLICY = "policy"


class ApprovalIn(Input):
    agent: str = Field(description="the agent's slug (an agent of the API key's team)")
    action: str = Field(max_length=160, description="what it wants to do: a tool name, e.g. payments.refund")
    arguments: dict[str, Any] = Field(default_factory=dict, description="exactly as they would execute")
    reasoning: str = Field("", max_length=8000, description="why the agent wants to do it")
    confidence: float | None = Field(None, ge=0, le=1)
    risk: Risk = Field(Risk.MEDIUM, description="used when Cockpit does not know the tool")
    side_effect: bool = Field(True, description="used when Cockpit does not know the tool")
    context: dict[str, Any] = Field(default_factory=dict, description="more policy context, e.g. customer_segment")
    external_ref: str = Field("", max_length=200, description="the run or task in the agent's own system")
    callback_url: str | None = Field(None, max_length=500, description="receives a signed POST when decided")
    team: str | None = Field(None, description="team slug (signed-in users in several teams)")


class ApprovalOut(Schema):
    id: int
    kind: str
    status: str
    team: str = Field(alias="team.slug")
    agent: str = Field(alias="agent.slug")
    action: str
    arguments: dict[str, Any]
    edited_arguments: dict[str, Any] | None
    final_arguments: dict[str, Any]
    reasoning: str
    confidence: float | None
    risk: str
    level: int
    deadline: datetime
    policy: str = Field(description="why a human must decide (or why policy decided)")
    decided_by: str | None = Field(None, alias="decided_by_label")
    decided_at: datetime | None
    decision_reason: str
    action_hash: str | None = Field(
        None,
        description="approved: SHA-256 (hex) of the canonical JSON of the action and final_arguments; send it "
        "back as approval_hash when you report the step",
    )
    manual: bool = Field(description="tier 4: the approver carries the action out; do not execute it yourself")
    result: Any = Field(None, description="manual: what the approver recorded when carrying it out")
    external_ref: str
    run: int | None = Field(None, alias="run_id")
    created_at: datetime

    @staticmethod
    def resolve_policy(request: ApprovalRequest) -> str:
        return request.policy_decision.get("explain") or request.policy_decision.get("reason", "")

    @staticmethod
    def resolve_decided_by(request: ApprovalRequest) -> str | None:
        return request.decided_by_label or None

    @staticmethod
    def resolve_action_hash(request: ApprovalRequest) -> str | None:
        return request.action_hash or None


class ApprovalPageOut(Schema):
    items: list[ApprovalOut]
    next_before: int | None


class DecisionIn(Input):
    decision: Literal["approve", "reject"]
    reason: str = Field("", max_length=4000, description="required to reject")
    edited_arguments: dict[str, Any] | None = Field(None, description="approve with these arguments instead")
    result: Any = Field(None, description="manual (tier 4) requests: the outcome of carrying the action out")


def _requests() -> Any:
    return ApprovalRequest.objects.select_related("team", "agent")


def _request_for(principal: Any, approval_id: int) -> ApprovalRequest:
    found = access.scope_to_principal(_requests(), principal).filter(pk=approval_id).first()
    if found is None:
        raise Http404
    return found


@router.post(
    "/approvals",
    response={200: ApprovalOut, 201: ApprovalOut},
    auth=key_or_session(Scope.APPROVALS),
    summary="Ask for a decision (policy may decide at once)",
)
def approval_create(request: HttpRequest, payload: ApprovalIn) -> Status:
    principal = request.auth  # type: ignore[attr-defined]
    agents = access.scope_to_principal(
        Agent.objects.select_related("team"),
        principal,
        TeamPerm.VIEW if isinstance(principal, ApiKey) else TeamPerm.OPERATE,
    )
    if payload.team:
        agents = agents.filter(team__slug=payload.team)
    matches = list(agents.filter(slug=payload.agent)[:2])
    if not matches:
        raise Http404
    if len(matches) > 1:
        raise ValidationError({"team": f"Several of your teams have an agent {payload.agent!r}: say which team."})
    agent = matches[0]
    key = idempotency_key(request)
    tool = Tool.objects.filter(name=payload.action).first()
    risk, side_effect = (tool.risk, tool.side_effect) if tool else (payload.risk, payload.side_effect)
    context = cedar.context_for(args=payload.arguments, confidence=payload.confidence, extra=payload.context, sample=0)
    verdict, policies = judge(
        team=agent.team, agent=agent, tool=payload.action, risk=risk, side_effect=side_effect, context=context
    )
    # Tier 4 (Manual): the agent only proposes; a person carries out every side effect.
    manual = agent.tier == Tier.MANUAL and side_effect
    status = (
        ApprovalStatus.REJECTED
        if not verdict.allowed
        else ApprovalStatus.APPROVED
        if verdict.unattended and not manual
        else ApprovalStatus.PENDING
    )
    asked, created = approval_request_create(
        actor=Actor.from_request(request),
        agent=agent,
        action=payload.action,
        arguments=payload.arguments,
        reasoning=payload.reasoning,
        confidence=payload.confidence,
        risk=risk,
        policy_decision={
            "explain": verdict.explain()
            if not (manual and verdict.unattended)
            else "tier 4 (Manual): a person carries it out",
            "policies": [p.ref for p in policies],
            "context": context,
            "extra": payload.context,
            "side_effect": side_effect,
            "level": verdict.level,
        },
        policy=policies[-1] if policies else None,
        level=verdict.level if status == ApprovalStatus.PENDING else 1,
        manual=manual and status == ApprovalStatus.PENDING,
        external_ref=payload.external_ref,
        idempotency_key=key,
        callback_url=payload.callback_url or "",
        status=status,
        decided_by_label=POLICY if status != ApprovalStatus.PENDING else "",
    )
    return Status(201 if created else 200, asked)


class ApprovalFilter(Input):
    status: ApprovalStatus | None = None
    agent: str | None = None
    before: Id | None = None
    limit: int = Field(50, ge=1, le=200)


@router.get(
    "/approvals",
    response=ApprovalPageOut,
    auth=key_or_session(Scope.APPROVALS),
    summary="Requests, newest first (page with ?before=<the last id>)",
)
def approval_list(request: HttpRequest, filters: Query[ApprovalFilter]) -> dict[str, Any]:
    rows = access.scope_to_principal(_requests(), request.auth)  # type: ignore[attr-defined]
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.agent:
        rows = rows.filter(agent__slug=filters.agent)
    if filters.before:
        rows = rows.filter(pk__lt=filters.before)
    items = list(rows.order_by("-id")[: filters.limit])
    return {"items": items, "next_before": items[-1].pk if len(items) == filters.limit else None}


@router.get(
    "/approvals/{approval_id}",
    response=ApprovalOut,
    auth=key_or_session(Scope.APPROVALS),
    summary="One request (long-poll for a change with ?wait=seconds)",
)
async def approval_detail(
    request: HttpRequest, approval_id: Id, wait: int = Query(0, ge=0, le=MAX_WAIT_SECONDS)
) -> ApprovalRequest:
    """With ``wait``, a pending request is held until it changes — decided, escalated to the next
    level, expired or withdrawn — or ``wait`` seconds pass, holding no database connection
    meanwhile (``cockpit.live.hold_until``)."""
    principal = request.auth  # type: ignore[attr-defined]
    if wait == 0:
        return await sync_to_async(_request_for)(principal, approval_id)
    return await live.hold_until(
        f"approval.{approval_id}",
        lambda: _request_for(principal, approval_id),
        lambda first, latest: not latest.is_pending or latest.level != first.level,
        seconds=wait,
    )


@router.post(
    "/approvals/{approval_id}/decision",
    response=ApprovalOut,
    auth=session_auth,
    summary="Decide: approve (optionally with edited arguments) or reject (with a reason)",
)
def approval_decision(request: HttpRequest, approval_id: Id, payload: DecisionIn) -> ApprovalRequest | HttpResponse:
    """403: not yours to decide; 409: already decided; 422: refused as asked (no reason for a
    rejection, edited arguments the tool or policy refuses, a manual request without its result),
    and nothing changed: the request stays pending and decidable."""
    found = _request_for(request.user, approval_id)
    try:
        return approval_decide(
            actor=Actor.from_request(request),
            request=found,
            approve=payload.decision == "approve",
            reason=payload.reason,
            edited_arguments=payload.edited_arguments,
            result=payload.result,
        )
    except AlreadyDecided:
        raise
    except PolicyRefusal as exc:
        return _refused(request, exc, policy=exc.rules, **({"level": exc.level} if exc.level else {}))
    except ValidationError as exc:
        return _refused(request, exc)


def _refused(request: HttpRequest, exc: ValidationError, **extra: Any) -> HttpResponse:
    errors = (
        [{"field": f, "message": " ".join(m)} for f, m in exc.message_dict.items()]
        if hasattr(exc, "error_dict")
        else [{"field": "", "message": m} for m in exc.messages]
    )
    detail = "; ".join(e["message"] for e in errors)
    return api.create_response(request, {"detail": detail, "errors": errors, **extra}, status=422)


@api.exception_handler(AlreadyDecided)
def _on_already_decided(request: HttpRequest, exc: AlreadyDecided) -> HttpResponse:
    return api.create_response(request, {"detail": " ".join(exc.messages)}, status=409)
