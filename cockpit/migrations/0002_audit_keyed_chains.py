"""Audit log: keyed hash chains, one per team, guarded by triggers a session cannot switch off.

* ``chain``, ``seq`` and ``key_id`` are added, and the existing rows, which formed one chain of
  plain SHA-256 hashes, are checked, then re-chained per team and signed with the audit key
  (``COCKPIT_AUDIT_KEY``). A broken legacy chain stops the migration, so that re-signing never
  launders a tampered log; ``COCKPIT_AUDIT_RESIGN_BROKEN=1`` re-signs it anyway, after the
  operator has looked at (and kept) the evidence.
* django-pgtrigger's ``audit_append_only`` trigger, which ``SET pgtrigger.ignore`` switches
  off in any session, is replaced with plain triggers refusing UPDATE, DELETE and TRUNCATE.

The hashing here is frozen as it is at this migration, on purpose: the model's may change later.
"""

import hashlib
import hmac
import json
import os
from datetime import UTC

import pgtrigger.migrations
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import migrations, models

GENESIS_HASH = "0" * 64

PROTECT_SQL = """
CREATE OR REPLACE FUNCTION cockpit_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'The audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME;
END
$$;
CREATE TRIGGER cockpit_audit_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON cockpit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION cockpit_audit_refuse_change();
"""

UNPROTECT_SQL = """
DROP TRIGGER IF EXISTS cockpit_audit_append_only ON cockpit_auditevent;
DROP FUNCTION IF EXISTS cockpit_audit_refuse_change();
"""


def _payload(row) -> str:
    content = {
        "at": row.at.astimezone(UTC).isoformat(),
        "actor_type": row.actor_type,
        "actor_user": row.actor_user_id,
        "actor_api_key": row.actor_api_key_id,
        "actor_label": row.actor_label,
        "action": row.action,
        "object_type": row.object_type,
        "object_id": row.object_id,
        "object_repr": row.object_repr,
        "team": row.team_id,
        "before": row.before,
        "after": row.after,
        "reason": row.reason,
        "ip": row.ip,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)


def rechain(apps, schema_editor) -> None:
    AuditEvent = apps.get_model("cockpit", "AuditEvent")
    key = settings.COCKPIT_AUDIT_KEY.encode()
    key_id = hashlib.sha256(b"cockpit-audit-key-id:" + key).hexdigest()[:12]
    expected = GENESIS_HASH
    for row in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        legacy = hashlib.sha256(f"{row.prev_hash}{_payload(row)}".encode()).hexdigest()
        if (row.prev_hash != expected or legacy != row.hash) and os.environ.get("COCKPIT_AUDIT_RESIGN_BROKEN") != "1":
            raise RuntimeError(
                f"The audit chain is broken at event #{row.id}: it cannot be re-signed without hiding "
                "that. Keep a copy of the cockpit_auditevent table as evidence, then run the "
                "migration with COCKPIT_AUDIT_RESIGN_BROKEN=1 to re-sign the rows as they are."
            )
        expected = row.hash
    heads: dict[int, tuple[int, str]] = {}
    batch = []
    for row in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        chain = row.team_id or 0
        seq, prev = heads.get(chain, (0, GENESIS_HASH))
        row.chain, row.seq, row.prev_hash, row.key_id = chain, seq + 1, prev, key_id
        message = f"{row.chain}:{row.seq}:{row.prev_hash}:{_payload(row)}".encode()
        row.hash = hmac.new(key, message, hashlib.sha256).hexdigest()
        heads[chain] = (row.seq, row.hash)
        batch.append(row)
        if len(batch) == 1000:
            AuditEvent.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "key_id", "hash"])
            batch = []
    AuditEvent.objects.bulk_update(batch, ["chain", "seq", "prev_hash", "key_id", "hash"])


def protect(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PROTECT_SQL, params=None)


def unprotect(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNPROTECT_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("cockpit", "0001_initial"),
    ]

    operations = [
        pgtrigger.migrations.RemoveTrigger(
            model_name="auditevent",
            name="audit_append_only",
        ),
        migrations.AddField(
            model_name="auditevent",
            name="chain",
            field=models.BigIntegerField(default=0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="seq",
            field=models.PositiveBigIntegerField(default=0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(default="", max_length=16),
            preserve_default=False,
        ),
        migrations.RunPython(rechain, migrations.RunPython.noop, elidable=False),
        migrations.AddConstraint(
            model_name="auditevent",
            constraint=models.UniqueConstraint(fields=("chain", "seq"), name="audit_chain_seq"),
        ),
        migrations.RunPython(protect, unprotect),
    ]
