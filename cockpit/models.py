"""Platform models: teams and who belongs to them, API keys for machines, the audit log."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC
from functools import cache
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone

from cockpit.roles import Role, TeamPerm

GENESIS_HASH = "0" * 64


class Team(models.Model):
    """A unit of ownership: agents, runs, budgets and API keys belong to exactly one team."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        # view_team comes from Django's defaults; the rest are Cockpit's.
        permissions = [(p.value, p.label) for p in TeamPerm if p != TeamPerm.VIEW]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user holding one role in one team (a user may hold several roles in several teams)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    granted_at = models.DateTimeField(default=timezone.now)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team", "role"], name="membership_unique_role"),
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="membership_role_valid"),
        ]
        ordering = ["team__name", "user__username", "role"]

    def __str__(self) -> str:
        return f"{self.user} — {self.role} of {self.team}"


class Scope(models.TextChoices):
    INGEST = "ingest", "Send spans to /v1/traces"
    READ = "read", "Read traces, runs and audit events"
    RUNS = "runs", "Register and report runs, poll directives"
    APPROVALS = "approvals", "Request approvals and poll decisions"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A machine credential (an agent, a collector) scoped to one team and a set of scopes.

    Only a SHA-256 of the key is stored; the key is shown once, when created. The prefix
    (``ck_`` + 8 characters) is stored in clear so a key can be recognised in lists and logs.
    """

    PREFIX_LEN = 8

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"ck_{self.prefix}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @staticmethod
    def hash_secret(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()


class ActorType(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    SYSTEM = "system", "System"


class AuditEvent(models.Model):
    """One audited change. Append-only: rows are never updated or deleted.

    Rows form hash chains, one per team (``chain`` is the team's id, 0 for rows of no team; on
    PostgreSQL every row of one transaction goes to the chain of its first row, so that a
    transaction waits for one chain only). Each row stores its position in the chain, the hash
    of the row before it, and an HMAC of its own content, position and that previous hash,
    keyed with ``COCKPIT_AUDIT_KEY``, which is not in the database: whoever can write to the
    table cannot forge a row or re-hash the chain after an edit. ``audit_verify`` walks every
    chain and checks it against the last signed anchor (``cockpit.audit_anchor``), which
    catches rows deleted from the end and an emptied table. On PostgreSQL plain triggers (not
    django-pgtrigger's, which a session can switch off) refuse UPDATE, DELETE and TRUNCATE.
    Foreign keys carry no database constraint and never cascade: deleting a user, key or team
    never touches the log.
    """

    at = models.DateTimeField(default=timezone.now)
    actor_type = models.CharField(max_length=8, choices=ActorType.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_api_key = models.ForeignKey(
        ApiKey,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    team = models.ForeignKey(
        Team,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    reason = models.TextField(blank=True)
    # Text, not inet: PostgreSQL would re-spell some addresses and change the hashed content.
    ip = models.CharField(max_length=45, blank=True)
    chain = models.BigIntegerField()
    seq = models.PositiveBigIntegerField()
    prev_hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=16)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["team", "-at"], name="audit_team_at"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            models.Index(fields=["action", "-at"], name="audit_action_at"),
            models.Index(fields=["-at"], name="audit_at"),
        ]
        constraints = [
            # Two rows can never claim one place in a chain, whatever a writer read.
            models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} by {self.actor_label}"

    def content(self) -> dict[str, Any]:
        """The hashed content of the row: every column but ``id`` and the hashes."""
        return {
            "at": self.at.astimezone(UTC).isoformat(),
            "actor_type": self.actor_type,
            "actor_user": self.actor_user_id,
            "actor_api_key": self.actor_api_key_id,
            "actor_label": self.actor_label,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "object_repr": self.object_repr,
            "team": self.team_id,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "ip": self.ip,
        }

    def compute_hash(self, key: bytes) -> str:
        """The HMAC-SHA256, under ``key``, of the row's place in its chain, the previous row's
        hash and the row's content."""
        payload = json.dumps(self.content(), sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
        message = f"{self.chain}:{self.seq}:{self.prev_hash}:{payload}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def sign(self) -> None:
        """Set ``key_id`` and ``hash`` with the current audit key."""
        self.key_id, key = audit_signing_key()
        self.hash = self.compute_hash(key)

    def hash_is_valid(self) -> bool:
        key = audit_keys().get(self.key_id)
        return key is not None and hmac.compare_digest(self.compute_hash(key), self.hash)


def audit_key_id(key: bytes) -> str:
    """A short public name of an audit key (stored with each row), which reveals nothing of it."""
    return hashlib.sha256(b"cockpit-audit-key-id:" + key).hexdigest()[:12]


@cache
def _keys(current: str, old: tuple[str, ...]) -> tuple[tuple[str, bytes], dict[str, bytes]]:
    encoded = [k.encode() for k in (current, *old)]
    return (audit_key_id(encoded[0]), encoded[0]), {audit_key_id(k): k for k in encoded}


def audit_signing_key() -> tuple[str, bytes]:
    """``(key_id, key)`` new rows and anchors are signed with (``COCKPIT_AUDIT_KEY``)."""
    return _keys(settings.COCKPIT_AUDIT_KEY, tuple(settings.COCKPIT_AUDIT_OLD_KEYS))[0]


def audit_keys() -> dict[str, bytes]:
    """Every key rows may be signed with, by key id: the current one and the retired ones
    (``COCKPIT_AUDIT_OLD_KEYS``) that older rows were signed with."""
    return _keys(settings.COCKPIT_AUDIT_KEY, tuple(settings.COCKPIT_AUDIT_OLD_KEYS))[1]
