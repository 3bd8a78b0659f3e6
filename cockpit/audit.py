"""The audit log: who did what, to which object, when, from where, and why.

Services call ``audit_record`` inside their own ``transaction.atomic`` block, so the audit row
commits or rolls back with the change it describes. Rows form a hash chain (see
``AuditEvent``); ``audit_verify`` walks it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model

from cockpit import live
from cockpit.models import GENESIS_HASH, ActorType, ApiKey, AuditEvent, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest

# Any constant works; it only has to be the same in every process.
_AUDIT_LOCK_KEY = 0x636F636B  # "cock"


LABEL_MAX = 200  # the length of every *_label column


@dataclass(frozen=True)
class Actor:
    """Who performs a write: a signed-in user, an API key, or a named system component."""

    type: ActorType
    user: User | None = None
    api_key: ApiKey | None = None
    system_name: str = ""
    ip: str = ""

    @classmethod
    def for_user(cls, user: User, *, ip: str = "") -> Actor:
        return cls(type=ActorType.USER, user=user, ip=ip)

    @classmethod
    def for_api_key(cls, api_key: ApiKey, *, ip: str = "") -> Actor:
        return cls(type=ActorType.API_KEY, api_key=api_key, ip=ip)

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(type=ActorType.SYSTEM, system_name=name)

    @classmethod
    def as_recorded(cls, *, label: str, user: User | None) -> Actor:
        """The actor a history row names (its label and, for a person, the user), to attribute
        what follows from that row to the same principal: a worker carrying out a pause names
        the operator who asked for it."""
        return cls.for_user(user) if user is not None else cls.system(label)

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        """The API key the request authenticated with (django-ninja sets ``request.auth``),
        else the session user."""
        ip = client_ip(request)
        auth = getattr(request, "auth", None)
        if isinstance(auth, ApiKey):
            return cls.for_api_key(auth, ip=ip)
        return cls.for_user(request.user, ip=ip)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        if self.type == ActorType.USER and self.user is not None:
            return self.user.get_username()
        if self.type == ActorType.API_KEY and self.api_key is not None:
            # The key, and the person who created it (who answers for what it does).
            owner = self.api_key.created_by
            whose = f", {owner.get_username()}'s key" if owner is not None else ""
            key = f" ({self.api_key.display_prefix}{whose})"
            return self.api_key.name[: LABEL_MAX - len(key)] + key
        return self.system_name

    @property
    def user_or_none(self) -> User | None:
        return self.user if self.type == ActorType.USER else None


def client_ip(request: HttpRequest) -> str:
    """The client address as the ASGI server saw it (daphne --proxy-headers behind a proxy)."""
    raw = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


def _json_safe(value: Any) -> Any:
    """Round-trip through JSON so the hashed value equals what the database gives back."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def snapshot(obj: Model, fields: Iterable[str]) -> dict[str, Any]:
    """The named fields of ``obj`` as JSON-safe values, for ``before`` / ``after``."""
    data = {}
    for name in fields:
        attname = getattr(obj._meta.get_field(name), "attname", name)  # team → team_id
        data[name] = getattr(obj, attname)
    return _json_safe(data)


def _lock_chain() -> None:
    """Serialise appends so each row sees its true predecessor.

    PostgreSQL: a transaction-scoped advisory lock, released at commit. SQLite: transactions
    begin IMMEDIATE (see settings), so the writer already holds the database's write lock.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_AUDIT_LOCK_KEY])


def audit_record(
    *,
    actor: Actor,
    action: str,
    obj: Model | None = None,
    team: Team | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    """Append one audit row. Must run inside the caller's ``transaction.atomic`` block."""
    event = _new_event(actor=actor, action=action, obj=obj, team=team, before=before, after=after, reason=reason)
    return _append([event])[0]


def audit_record_many(records: Sequence[dict[str, Any]]) -> list[AuditEvent]:
    """Append several audit rows at once, each ``records`` item holding ``audit_record``'s
    arguments: one lock, one read of the chain's head, one INSERT. For services that change a
    batch of objects in one transaction (the escalation sweeper): call it last, just before the
    commit, so the chain's lock is held for milliseconds, not for the whole batch."""
    return _append([_new_event(**record) for record in records])


def _new_event(
    *,
    actor: Actor,
    action: str,
    obj: Model | None = None,
    team: Team | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    if team is None and obj is not None:
        team = obj if isinstance(obj, Team) else getattr(obj, "team", None)
    return AuditEvent(
        actor_type=actor.type,
        actor_user=actor.user if actor.type == ActorType.USER else None,
        actor_api_key=actor.api_key if actor.type == ActorType.API_KEY else None,
        actor_label=actor.label[:200],
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        team=team,
        before=_json_safe(before),
        after=_json_safe(after),
        reason=reason,
        ip=actor.ip,
    )


def _append(events: list[AuditEvent]) -> list[AuditEvent]:
    """Chain ``events`` after the current head, in order, and store them."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record() must be called inside the service's transaction.atomic block")
    if not events:
        return events
    _lock_chain()
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    for event in events:
        event.prev_hash = last or GENESIS_HASH
        event.hash = last = event.compute_hash()
    if len(events) == 1:
        events[0].save(force_insert=True)
    else:
        AuditEvent.objects.bulk_create(events)
    for event in events:
        live.publish(
            {"type": "audit.created", "id": event.pk, "action": event.action},
            team_id=event.team_id,
        )
    return events


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    checked: int
    head_hash: str
    broken_at: int | None = None
    problem: str = ""

    def __str__(self) -> str:
        if self.intact:
            return f"intact: {self.checked} events, head hash {self.head_hash}"
        return f"broken at event #{self.broken_at}: {self.problem} ({self.checked} events checked before it)"


def audit_verify(*, chunk_size: int = 2000) -> ChainReport:
    """Walk the whole chain in id order and report the first broken link."""
    expected_prev = GENESIS_HASH
    checked = 0
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=chunk_size):
        if event.prev_hash != expected_prev:
            return ChainReport(
                intact=False,
                checked=checked,
                head_hash=expected_prev,
                broken_at=event.pk,
                problem="its previous-hash does not match the event before it (a row was removed, "
                "inserted or re-ordered)",
            )
        if event.compute_hash() != event.hash:
            return ChainReport(
                intact=False,
                checked=checked,
                head_hash=expected_prev,
                broken_at=event.pk,
                problem="its content does not match its hash (the row was changed)",
            )
        expected_prev = event.hash
        checked += 1
    return ChainReport(intact=True, checked=checked, head_hash=expected_prev)


def audit_verify_snapshot() -> ChainReport:
    """``audit_verify`` over one consistent snapshot while writers carry on.

    PostgreSQL: a repeatable-read, read-only transaction. SQLite: the walk is one SELECT, which
    WAL already reads from a single snapshot (an atomic block would take the write lock).
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return audit_verify()  # (inside a transaction: its snapshot already holds)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return audit_verify()
