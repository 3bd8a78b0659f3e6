"""The REST API root (``/api/v1/``), its authentication, and the platform endpoints.

Machines authenticate with an API key (``Authorization: Bearer ck_…`` or ``X-Api-Key: ck_…``)
that carries scopes; people use their session. Each endpoint names what it accepts, e.g.
``auth=key_or_session(Scope.READ)``. Every error is JSON: ``{"detail": "…"}`` plus ``errors``
(``[{"field": …, "message": …}]``) for invalid input. Each app adds its router in
``cockpit/urls.py``.

Input is validated here once for every endpoint: request schemas derive from ``Input`` (no NUL
characters, lone surrogates, NaN or Infinity anywhere in them, nested JSON included), and
numbers, durations and datetimes use the bounded types below (``Count``, ``Id``, ``Seconds``,
``Money``, ``Timestamp``); loose path and query parameters use ``Text`` and ``Id``. Bodies over
``DATA_UPLOAD_MAX_MEMORY_SIZE`` are answered 413.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, NinjaAPI, Query, Router, Schema
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.renderers import JSONRenderer
from ninja.security import HttpBearer, SessionAuth
from pydantic import AfterValidator, BeforeValidator, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from cockpit import selectors
from cockpit.lib.validation import (
    MAX_BIGINT,
    MAX_DURATION_SECONDS,
    MAX_INT,
    IdempotencyConflict,
    json_problem,
    offset_problem,
    text_problem,
)
from cockpit.models import ApiKey, Scope, Team
from cockpit.services import api_key_authenticate

logger = logging.getLogger(__name__)


# --- Authentication ---------------------------------------------------------------------------


class ApiKeyAuth(HttpBearer):
    """An API key holding ``scope``: ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``."""

    def __init__(self, scope: str) -> None:
        if scope not in Scope.values:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope
        super().__init__()

    def __call__(self, request: HttpRequest) -> ApiKey | None:
        if request.headers.get("Authorization"):
            return super().__call__(request)
        header_key = request.headers.get("X-Api-Key")
        return self.authenticate(request, header_key.strip()) if header_key else None

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        api_key = api_key_authenticate(token.strip())
        if api_key is None:
            raise AuthenticationError(message="Invalid API key.")
        if not api_key.is_active:
            raise AuthenticationError(message="This API key has been revoked.")
        if not api_key.has_scope(self.scope):
            raise AuthorizationError(
                message=(f"This API key lacks the '{self.scope}' scope (it has: {', '.join(api_key.scopes)}).")
            )
        return api_key


class ActiveSessionAuth(SessionAuth):
    """A signed-in, active user (CSRF is checked on unsafe methods)."""

    def _get_key(self, request: HttpRequest) -> str | None:
        # CSRF protects a session; a request without one is simply not authenticated (401),
        # not a forged one (ninja would answer 403 "CSRF check Failed").
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        return super()._get_key(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        return user if user is not None and user.is_active else None


session_auth = ActiveSessionAuth()


def key_or_session(scope: str) -> list[Any]:
    return [ApiKeyAuth(scope), session_auth]


# --- Validated input ---------------------------------------------------------------------------


def _invalid_text(value: Any) -> Any:
    if isinstance(value, str) and (problem := text_problem(value)):
        raise PydanticCustomError("invalid_text", "This {problem}.", {"problem": problem})
    return value


def _storable_moment(value: datetime) -> datetime:
    if problem := offset_problem(value):
        raise PydanticCustomError("invalid_offset", "This time {problem}.", {"problem": problem})
    return value


# A string free of NUL and lone surrogates (path and query parameters outside a schema).
Text = Annotated[str, BeforeValidator(_invalid_text)]
# An aware or naive datetime PostgreSQL can store (its UTC offset within ±15:59).
Timestamp = Annotated[datetime, AfterValidator(_storable_moment)]
# A database id (bigint).
Id = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
# A count kept in an integer column (a step's tokens).
Count = Annotated[int, Field(ge=0, le=MAX_INT)]
# A duration in seconds, up to a year.
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_SECONDS)]
# An amount of money as the cost columns hold it (14 digits, 6 after the point).
Money = Annotated[Decimal, Field(ge=0, lt=Decimal(10) ** 8)]


class Input(Schema):
    """Base of every request schema (bodies and query filters): no value in it, however deeply
    nested, holds a NUL character, a lone surrogate, NaN or Infinity."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        found = json_problem(value, info.field_name or "")
        if found is not None:
            path, problem = found
            raise PydanticCustomError("unstorable", "{path} {problem}.", {"path": path, "problem": problem})
        return value


MAX_IDEMPOTENCY_KEY = 200


def idempotency_key(request: HttpRequest, sent: str = "") -> str:
    """The idempotency key of a create: ``sent`` in the body, else the ``Idempotency-Key``
    header, validated like any other input (the header is outside every schema)."""
    key = (sent or request.headers.get("Idempotency-Key", "")).strip()
    problem = text_problem(key)
    if problem is None and len(key) > MAX_IDEMPOTENCY_KEY:
        problem = f"is longer than {MAX_IDEMPOTENCY_KEY} characters"
    if problem:
        field = "idempotency_key" if sent else "Idempotency-Key"
        raise NinjaValidationError([{"loc": ("header", field), "msg": f"This key {problem}."}])
    return key


class _Renderer(JSONRenderer):
    # NaN and Infinity are not JSON: an answer holding one is a bug to log, not a body to send.
    json_dumps_params = {"allow_nan": False}  # noqa: RUF012


# --- The API object ---------------------------------------------------------------------------

api = NinjaAPI(
    title="Cockpit API",
    version="1",
    description=(
        "Operate a fleet of AI agents: runs and directives, approvals, traces, costs.\n\n"
        "Authenticate machines with an API key (`Authorization: Bearer ck_…`, or `X-Api-Key`), "
        "created under Settings → API keys or with `manage.py create_api_key`. Each key belongs "
        "to one team and carries scopes: `ingest`, `read`, `runs`, `approvals`. Errors are JSON "
        "objects with a `detail` message."
    ),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    renderer=_Renderer(),
)


def _error(request: HttpRequest, status: int, detail: str, **extra: Any) -> HttpResponse:
    return api.create_response(request, {"detail": detail, **extra}, status=status)


@api.exception_handler(AuthenticationError)
def _on_unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    detail = (
        str(exc.message)
        if exc.message != "Unauthorized"
        else ("Authentication required: send 'Authorization: Bearer <API key>' or sign in.")
    )
    response = _error(request, 401, detail)
    response["WWW-Authenticate"] = 'Bearer realm="cockpit"'
    return response


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "payload", "input")`` → ``"input"``: the name the client sent, without
    where ninja put it (the parameter's source and its Python argument name)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
        if len(parts) > 1:  # a schema parameter (``payload``, ``filters``): its fields are the names
            parts = parts[1:]
    return ".".join(parts)


@api.exception_handler(NinjaValidationError)
def _on_invalid_input(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    errors = [{"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")} for e in exc.errors]
    return _error(request, 422, "The request is not valid: see 'errors'.", errors=errors)


@api.exception_handler(DjangoValidationError)
def _on_domain_validation(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    """A service's refusal: 422 when it names the field at fault (the input is invalid), 400
    when the request is well-formed but cannot be carried out (the run has ended, …)."""
    if hasattr(exc, "error_dict"):
        errors = [{"field": f, "message": " ".join(m)} for f, m in exc.message_dict.items()]
        status = 422 if any(e["field"] != "__all__" for e in errors) else 400
    else:
        errors = [{"field": "", "message": m} for m in exc.messages]
        status = 400
    return _error(request, status, "; ".join(e["message"] for e in errors), errors=errors)


@api.exception_handler(IdempotencyConflict)
def _on_idempotency_conflict(request: HttpRequest, exc: IdempotencyConflict) -> HttpResponse:
    message = str(exc)
    return _error(request, 409, message, errors=[{"field": "idempotency_key", "message": message}])


def too_large(limit: int) -> dict[str, Any]:
    """The 413 body, here and from the ASGI guard that refuses a large body before it is read."""
    return {"detail": f"The body is larger than {limit:,} bytes.", "errors": []}


def max_body_bytes() -> int:
    from django.conf import settings

    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


@api.exception_handler(RequestDataTooBig)
def _on_too_large(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, too_large(max_body_bytes()), status=413)


@api.exception_handler(Http404)
def _on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, 404, "Not found.")


@api.exception_handler(PermissionDenied)
def _on_forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return _error(request, 403, str(exc) or "You may not do this.")


@api.exception_handler(Exception)
def _on_crash(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API error on %s %s", request.method, request.path)
    return _error(request, 500, "Internal error; it has been logged.")


# --- Platform endpoints -----------------------------------------------------------------------

router = Router(tags=["platform"])


class TeamOut(Schema):
    slug: str
    name: str
    description: str


class MeOut(Schema):
    kind: str = Field(description="'api_key' or 'user'")
    name: str
    scopes: list[str] = Field(default_factory=list, description="API keys only")
    teams: list[TeamOut]


class AuditEventOut(Schema):
    id: int
    at: datetime
    actor: str = Field(alias="actor_label")
    actor_type: str
    action: str
    object_type: str
    object_id: str
    object_repr: str
    team: str | None = Field(None, alias="team.slug")
    before: Any = None
    after: Any = None
    reason: str
    ip: str


class AuditPageOut(Schema):
    items: list[AuditEventOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page")


class AuditFilter(Input):
    team: str | None = Field(None, description="team slug")
    action: str | None = Field(None, description="exact action, e.g. api_key.revoke")
    object_type: str | None = None
    object_id: str | None = None
    since: Timestamp | None = None
    until: Timestamp | None = None
    before: Id | None = Field(None, description="return events older than this id")
    limit: int = Field(50, ge=1, le=500)


@router.get("/me", response=MeOut, auth=key_or_session(Scope.READ), summary="Who is calling")
def me(request: HttpRequest) -> dict[str, Any]:
    principal = request.auth  # type: ignore[attr-defined]
    if isinstance(principal, ApiKey):
        return {
            "kind": "api_key",
            "name": principal.name,
            "scopes": principal.scopes,
            "teams": [principal.team],
        }
    return {
        "kind": "user",
        "name": principal.get_username(),
        "teams": list(selectors.visible_teams(principal)),
    }


@router.get("/teams", response=list[TeamOut], auth=key_or_session(Scope.READ), summary="Teams you can see")
def teams(request: HttpRequest) -> Any:
    return selectors.visible_teams(request.auth)  # type: ignore[attr-defined]


@router.get("/teams/{slug}", response=TeamOut, auth=key_or_session(Scope.READ), summary="One team")
def team_detail(request: HttpRequest, slug: Text) -> Team:
    team = selectors.visible_teams(request.auth).filter(slug=slug).first()  # type: ignore[attr-defined]
    if team is None:
        raise Http404
    return team


@router.get(
    "/audit",
    response=AuditPageOut,
    auth=key_or_session(Scope.READ),
    summary="Audit events, newest first",
)
def audit_events(request: HttpRequest, filters: Query[AuditFilter]) -> dict[str, Any]:
    items = selectors.audit_events_for(
        request.auth,  # type: ignore[attr-defined]
        team_slug=filters.team,
        action=filters.action,
        object_type=filters.object_type,
        object_id=filters.object_id,
        since=filters.since,
        until=filters.until,
        before_id=filters.before,
        limit=filters.limit,
    )
    return {"items": items, "next_before": items[-1].pk if len(items) == filters.limit else None}


api.add_router("/", router)

__all__ = [
    "ApiKeyAuth",
    "Count",
    "Id",
    "Input",
    "Money",
    "Seconds",
    "Text",
    "Timestamp",
    "api",
    "idempotency_key",
    "key_or_session",
    "session_auth",
]
