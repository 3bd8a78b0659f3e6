"""The audit log: written with the change, append-only, and tamper-evident."""

from __future__ import annotations

import threading
from io import StringIO

import pgtrigger
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from cockpit.audit import Actor, audit_record, audit_verify
from cockpit.models import GENESIS_HASH, AuditEvent
from cockpit.services import api_key_create, team_create

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def make_events(team, n: int = 5) -> list[AuditEvent]:
    for i in range(n):
        api_key_create(actor=ACTOR, team=team, name=f"k{i}", scopes=["read"])
    return list(AuditEvent.objects.order_by("id"))


def raw_sql(sql: str, params: list) -> None:
    """Tamper with the table the way an attacker with database access would."""
    with pgtrigger.ignore("cockpit.AuditEvent:audit_append_only"), connection.cursor() as cursor:
        cursor.execute(sql, params)


def test_each_row_links_to_the_previous_one(team) -> None:
    events = make_events(team)
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    report = audit_verify()
    assert report.intact and report.checked == len(events) and report.head_hash == events[-1].hash


def test_actor_and_address_are_recorded(team, admin_user) -> None:
    api_key, _ = api_key_create(
        actor=Actor.for_user(admin_user, ip="203.0.113.9"), team=team, name="k", scopes=["read"]
    )
    event = AuditEvent.objects.get(action="api_key.create", object_id=str(api_key.pk))
    assert (event.actor_type, event.actor_user, event.actor_label, event.ip) == (
        "user",
        admin_user,
        "alice-admin",
        "203.0.113.9",
    )
    assert event.after == {"name": "k", "prefix": api_key.display_prefix, "scopes": ["read"]}


def test_verify_names_the_first_changed_row(team) -> None:
    events = make_events(team)
    raw_sql("UPDATE cockpit_auditevent SET reason = %s WHERE id = %s", ["nothing to see", events[2].pk])
    report = audit_verify()
    assert not report.intact
    assert report.broken_at == events[2].pk
    assert "content does not match its hash" in report.problem
    assert report.checked == 2


def test_verify_notices_a_removed_row(team) -> None:
    events = make_events(team)
    raw_sql("DELETE FROM cockpit_auditevent WHERE id = %s", [events[1].pk])
    report = audit_verify()
    assert not report.intact and report.broken_at == events[2].pk
    assert "previous-hash does not match" in report.problem


def test_verify_notices_a_rewritten_hash(team) -> None:
    """Recomputing one row's hash does not help: the next row still points at the old one."""
    events = make_events(team)
    target = AuditEvent.objects.get(pk=events[1].pk)
    target.reason = "edited"
    new_hash = target.compute_hash()
    raw_sql(
        "UPDATE cockpit_auditevent SET reason = %s, hash = %s WHERE id = %s",
        ["edited", new_hash, target.pk],
    )
    assert audit_verify().broken_at == events[2].pk


def test_audit_verify_command_output_and_exit_status(team) -> None:
    events = make_events(team, 3)
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("intact: 3 events")
    raw_sql("UPDATE cockpit_auditevent SET action = %s WHERE id = %s", ["team.delete", events[0].pk])
    err = StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify", stdout=StringIO(), stderr=err)
    assert exit_info.value.code == 1
    assert f"broken at event #{events[0].pk}" in err.getvalue()


def test_audit_rows_are_written_in_the_services_transaction(team) -> None:
    """A change that rolls back takes its audit row with it (and vice versa)."""
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        team_create(actor=ACTOR, slug="gamma", name="Gamma")
        assert AuditEvent.objects.filter(action="team.create", object_repr="Gamma").exists()
        1 / 0  # noqa: B018 - whatever fails later in the same transaction
    assert not AuditEvent.objects.filter(action="team.create", object_repr="Gamma").exists()
    assert audit_verify().intact


@pytest.mark.django_db(transaction=True)
def test_audit_record_refuses_to_run_outside_a_transaction(team) -> None:
    """An audit row written outside the change's transaction could survive a rolled-back change."""
    with pytest.raises(RuntimeError, match="inside the service's transaction.atomic"):
        audit_record(actor=ACTOR, action="x.y", team=team)
    assert not AuditEvent.objects.filter(action="x.y").exists()


def test_postgres_rejects_update_and_delete(team) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("django-pgtrigger installs no trigger on SQLite; CI runs this on PostgreSQL")
    event = make_events(team, 1)[0]
    for sql in (
        "UPDATE cockpit_auditevent SET reason = 'x' WHERE id = %s",
        "DELETE FROM cockpit_auditevent WHERE id = %s",
    ):
        with (
            pytest.raises(DatabaseError, match="Cannot update or delete rows from cockpit_auditevent"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).reason == ""


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_unbroken_chain(team) -> None:
    """Many services appending at once: the chain must stay linear (no two rows share a
    predecessor), whatever the interleaving."""
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(5):
                api_key_create(actor=ACTOR, team=team, name=f"w{n}-{i}", scopes=["read"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = audit_verify()
    assert report.intact, str(report)
    assert report.checked == AuditEvent.objects.count() >= 30


def test_a_batch_of_rows_is_chained_in_order_between_single_ones(team) -> None:
    """``audit_record_many`` (the escalation sweeper's expiries) links each row to the one before
    it, exactly as the same rows written one by one would be."""
    from cockpit.audit import audit_record_many

    with transaction.atomic():
        audit_record(actor=ACTOR, action="x.before", team=team)
        batch = audit_record_many([{"actor": ACTOR, "action": f"x.batch{i}", "team": team} for i in range(4)])
        audit_record(actor=ACTOR, action="x.after", team=team)
        assert audit_record_many([]) == []
    events = list(AuditEvent.objects.order_by("id"))
    assert [e.action for e in events[-6:]] == ["x.before", "x.batch0", "x.batch1", "x.batch2", "x.batch3", "x.after"]
    assert [e.pk for e in batch] == [e.pk for e in events[-5:-1]]
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    assert audit_verify().intact
