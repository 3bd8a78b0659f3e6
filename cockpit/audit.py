"""The audit log: who did what, to which object, when, from where, and why.

Services call ``audit_record`` inside their own ``transaction.atomic`` block, so the audit row
commits or rolls back with the change it describes. Rows form keyed hash chains, one per team
(see ``AuditEvent``); ``audit_anchor`` checks what was appended since the last signed anchor and
writes a new one (``cockpit.audit_anchor``); ``audit_verify`` walks every chain and checks it
against the last anchor.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model, Q
from django.utils import timezone

from cockpit import live
from cockpit.audit_anchor import Anchor, AnchorError, ChainHead, anchor_last, anchor_make, anchor_store
from cockpit.models import GENESIS_HASH, ActorType, ApiKey, AuditEvent, Team, audit_keys

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.http import HttpRequest

# The advisory-lock namespace of the audit chains (any constant works; it only has to be the
# same in every process). A chain's lock is (namespace, chain).
_CHAIN_LOCK_CLASS = 0x636F636B  # "cock"
logger = logging.getLogger("cockpit.audit")


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


def _lock_chain(team_id: int | None) -> int:
    """Take the chain a new row goes to, and hold it until commit so that each row of the chain
    sees its true predecessor; returns the chain.

    PostgreSQL: rows go to their team's chain (0: rows of no team), under a transaction-scoped
    advisory lock of that chain alone, so writers of different teams never wait for each other.
    A transaction keeps every row it writes in the chain of its first row (remembered in a
    transaction-local setting, undone with a rolled-back savepoint as the lock is), so it never
    holds two chains and two transactions can never deadlock on them. SQLite: transactions begin
    IMMEDIATE (see settings), so the writer already holds the database's write lock.
    """
    wanted = team_id or 0
    if connection.vendor != "postgresql":
        return wanted
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH c AS (SELECT COALESCE(NULLIF(current_setting('cockpit.audit_chain', true), '')::bigint, %s)"
            " AS chain) SELECT chain, pg_advisory_xact_lock(%s, (chain %% 2147483647)::int),"
            " set_config('cockpit.audit_chain', chain::text, true) FROM c",
            [wanted, _CHAIN_LOCK_CLASS],
        )
        return cursor.fetchone()[0]


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
    # A transaction keeps all its rows in the chain of its first row (see _lock_chain).
    chain = _lock_chain(events[0].team_id)
    # Under the chain's lock, with a fresh snapshot (READ COMMITTED): the chain's true head.
    head = AuditEvent.objects.filter(chain=chain).order_by("-seq").values_list("seq", "hash").first()
    seq, prev = head if head else (0, GENESIS_HASH)
    for event in events:
        seq += 1
        event.chain, event.seq, event.prev_hash = chain, seq, prev
        event.sign()
        prev = event.hash
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
    heads: dict[int, ChainHead] = field(default_factory=dict)
    broken_at: int | None = None
    problem: str = ""
    anchor: Anchor | None = None  # the anchor the chains were checked against

    def __str__(self) -> str:
        if not self.intact:
            where = f"broken at event #{self.broken_at}" if self.broken_at is not None else "broken"
            return f"{where}: {self.problem} ({self.checked} events checked before it)"
        chains = f"{len(self.heads)} chain{'' if len(self.heads) == 1 else 's'}"
        if self.anchor is None:
            held = "no anchor yet, so rows deleted from the end of a chain would go unnoticed"
        else:
            held = f"every row of the anchor of {self.anchor.at:%Y-%m-%d %H:%M:%S} UTC is there"
        return f"intact: {self.checked} events in {chains}; {held}"


def _chain_name(chain: int) -> str:
    return f"team #{chain}'s chain" if chain else "the chain of rows of no team"


def _walk(events: Iterable[AuditEvent], *, anchor: Anchor | None, resume: bool) -> ChainReport:
    """Check ``events`` (ordered by chain, then number) link by link, and that every row
    ``anchor`` recorded is still there. ``resume``: ``events`` start at the anchored rows (and
    at the first row of chains the anchor does not know), not at the first row of each chain."""
    anchored = anchor.chains if anchor else {}
    anchor_at = f"{anchor.at:%Y-%m-%d %H:%M:%S} UTC" if anchor else ""
    keys = audit_keys()
    heads: dict[int, ChainHead] = {}
    checked = 0
    chain: int | None = None
    expected_seq, expected_prev = 1, GENESIS_HASH

    def broken(event_id: int | None, problem: str) -> ChainReport:
        return ChainReport(intact=False, checked=checked, heads=heads, broken_at=event_id, problem=problem)

    for event in events:
        if event.chain != chain:
            chain = event.chain
            mark = anchored.get(chain) if resume else None
            expected_seq, expected_prev = (mark.seq, "") if mark else (1, GENESIS_HASH)
        if expected_prev and event.prev_hash != expected_prev:
            return broken(
                event.pk,
                "its previous-hash does not match the event before it (a row was removed, inserted or re-ordered)",
            )
        if event.seq != expected_seq:
            return broken(
                event.pk,
                f"it is row {event.seq} of {_chain_name(chain)} where row {expected_seq} was expected "
                "(rows before it were removed)",
            )
        if event.key_id not in keys:
            return broken(
                event.pk,
                f"it is signed with a key this deployment does not know (key id {event.key_id!r}; "
                "a retired key belongs in COCKPIT_AUDIT_OLD_KEYS)",
            )
        if not event.hash_is_valid():
            return broken(
                event.pk,
                "its content does not match its hash (the row was changed, or written without the audit key)",
            )
        mark = anchored.get(chain)
        if mark is not None and mark.seq == event.seq and mark.hash != event.hash:
            return broken(event.pk, f"it is not the row the anchor of {anchor_at} recorded")
        heads[chain] = ChainHead(seq=event.seq, id=event.pk, hash=event.hash)
        expected_seq, expected_prev = event.seq + 1, event.hash
        checked += 1
    for chain_, mark in sorted(anchored.items()):
        head = heads.get(chain_)
        if head is None or head.seq < mark.seq:
            now = f"ends at row {head.seq}" if head else "has no rows"
            return broken(
                mark.id,
                f"the anchor of {anchor_at} recorded {_chain_name(chain_)} up to row "
                f"{mark.seq} (event #{mark.id}), but it now {now}: rows were deleted from its end, or "
                "the table was emptied",
            )
    return ChainReport(intact=True, checked=checked, heads=heads, anchor=anchor)


def audit_verify(*, chunk_size: int = 2000, anchor: Anchor | None | AnchorError = None) -> ChainReport:
    """Walk every chain from its first row and report the first broken link, or an anchored
    row that is gone. ``anchor``: the last anchor, read by the caller before its snapshot of
    the table began (``audit_verify_snapshot`` does); None when there is none yet."""
    if isinstance(anchor, AnchorError):
        return ChainReport(intact=False, checked=0, problem=str(anchor))
    events = AuditEvent.objects.order_by("chain", "seq").iterator(chunk_size=chunk_size)
    return _walk(events, anchor=anchor, resume=False)


def _last_anchor() -> Anchor | None | AnchorError:
    try:
        return anchor_last()
    except AnchorError as exc:
        return exc


def _in_snapshot[T](read: Callable[[], T]) -> T:
    """``read()`` over one consistent snapshot while writers carry on.

    PostgreSQL: a repeatable-read, read-only transaction. SQLite: a walk is one SELECT, which
    WAL already reads from a single snapshot (an atomic block would take the write lock).
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return read()  # (inside a transaction: its snapshot already holds)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return read()


def audit_verify_snapshot() -> ChainReport:
    """``audit_verify`` against the last anchor (read first: the snapshot is then at least as
    new as the anchor) over one consistent snapshot."""
    anchor = _last_anchor()
    return _in_snapshot(lambda: audit_verify(anchor=anchor))


def audit_anchor() -> tuple[ChainReport, Anchor | None]:
    """Check the rows appended since the last anchor (and that every row it recorded is still
    there), and when all holds, sign and store a new anchor of every chain's head.

    Only the new rows are walked, so this stays cheap however long the log; ``audit_verify``
    (nightly) walks everything. When the check fails no anchor is written: the last good one
    keeps showing what was lost until someone looks (the error is logged)."""
    last = _last_anchor()
    if isinstance(last, AnchorError):
        report = audit_verify(anchor=last)
    else:

        def read() -> ChainReport:
            events = AuditEvent.objects.order_by("chain", "seq")
            if last is not None and last.chains:
                since = ~Q(chain__in=list(last.chains))
                for chain, mark in last.chains.items():
                    since |= Q(chain=chain, seq__gte=mark.seq)
                events = events.filter(since)
            return _walk(events.iterator(chunk_size=2000), anchor=last, resume=True)

        report = _in_snapshot(read)
    if not report.intact or isinstance(last, AnchorError):
        logger.error("audit chain %s; no new anchor written", report)
        return report, None
    anchor = anchor_make(chains=report.heads, previous=last, at=timezone.now())
    anchor_store(anchor)
    return report, anchor
