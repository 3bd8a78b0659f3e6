"""The audit log: written with the change, append-only, and tamper-evident."""

from __future__ import annotations

import hashlib
import json
import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse

from cockpit import webhooks
from cockpit.audit import Actor, audit_anchor, audit_record, audit_verify, audit_verify_snapshot
from cockpit.models import GENESIS_HASH, AuditEvent, audit_signing_key
from cockpit.services import api_key_create, team_create
from cockpit.tasks import maintenance_audit_anchor
from tests.support.receivers import Receiver

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
postgres_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the audit triggers are PostgreSQL's; CI runs this on PostgreSQL"
)


def make_events(team, n: int = 5) -> list[AuditEvent]:
    for i in range(n):
        api_key_create(actor=ACTOR, team=team, name=f"k{i}", scopes=["read"])
    return list(AuditEvent.objects.order_by("id"))


def raw_sql(sql: str, params: list) -> None:
    """Tamper with the table the way an insider with write access would: as the table's owner,
    lift the append-only trigger for one statement (on SQLite there is none)."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE cockpit_auditevent DISABLE TRIGGER cockpit_audit_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE cockpit_auditevent ENABLE TRIGGER cockpit_audit_append_only")


def test_each_row_links_to_the_previous_one(team) -> None:
    events = make_events(team)
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    report = audit_verify()
    assert report.intact and report.checked == len(events)
    assert report.heads[team.pk].hash == events[-1].hash and report.heads[team.pk].seq == len(events)


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
    new_hash = target.compute_hash(audit_signing_key()[1])
    raw_sql(
        "UPDATE cockpit_auditevent SET reason = %s, hash = %s WHERE id = %s",
        ["edited", new_hash, target.pk],
    )
    assert audit_verify().broken_at == events[2].pk


def test_audit_verify_command_output_and_exit_status(team) -> None:
    events = make_events(team, 3)
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("intact: 3 events in 1 chain; no anchor yet")
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


@postgres_only
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE cockpit_auditevent SET reason = 'x' WHERE id = %s",
        "DELETE FROM cockpit_auditevent WHERE id = %s",
        "TRUNCATE cockpit_auditevent",
    ],
)
def test_postgres_refuses_update_delete_and_truncate(team, sql) -> None:
    event = make_events(team, 1)[0]
    with (
        pytest.raises(DatabaseError, match="The audit log is append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [event.pk] if "%s" in sql else None)
    assert AuditEvent.objects.get(pk=event.pk).reason == ""


@postgres_only
def test_pgtrigger_ignore_does_not_switch_the_protection_off(team) -> None:
    """django-pgtrigger's triggers step aside for any session that sets pgtrigger.ignore; the
    audit log's must not."""
    event = make_events(team, 1)[0]
    names = "{pgtrigger_audit_append_only_bc751,cockpit_audit_append_only}"
    for sql in ("DELETE FROM cockpit_auditevent WHERE id = %s", "TRUNCATE cockpit_auditevent"):
        with (
            pytest.raises(DatabaseError, match="The audit log is append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT set_config('pgtrigger.ignore', %s, true)", [names])
            cursor.execute(sql, [event.pk] if "%s" in sql else None)
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def rehash_from(event_id: int) -> None:
    """What an insider without the audit key does after editing a row: recompute every hash from
    that row on, the way the chain was hashed before it was keyed (plain SHA-256)."""
    prev = None
    for event in AuditEvent.objects.filter(chain=AuditEvent.objects.get(pk=event_id).chain).order_by("id"):
        if event.pk < event_id:
            prev = event.hash
            continue
        event.prev_hash = prev or GENESIS_HASH
        payload = json.dumps(event.content(), sort_keys=True, separators=(",", ":"))
        event.hash = hashlib.sha256(f"{event.prev_hash}{payload}".encode()).hexdigest()
        raw_sql(
            "UPDATE cockpit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
            [event.prev_hash, event.hash, event.pk],
        )
        prev = event.hash


def test_an_edited_row_stays_caught_after_the_chain_is_rehashed(team) -> None:
    events = make_events(team)
    raw_sql("UPDATE cockpit_auditevent SET reason = %s WHERE id = %s", ["approved by the CFO", events[2].pk])
    rehash_from(events[2].pk)
    report = audit_verify()
    assert not report.intact
    assert report.broken_at == events[2].pk
    assert "content does not match its hash" in report.problem


def test_a_row_written_with_another_key_is_caught(team, settings) -> None:
    events = make_events(team, 2)
    settings.COCKPIT_AUDIT_KEY = "a-different-key-of-at-least-32-characters"
    report = audit_verify()
    assert not report.intact and report.broken_at == events[0].pk
    assert "a key this deployment does not know" in report.problem


def test_a_retired_key_still_verifies_its_rows(team, settings) -> None:
    """Key rotation: the former key moves to COCKPIT_AUDIT_OLD_KEYS; old rows and the anchor
    signed with it verify, new rows are signed with the new key, one chain throughout."""
    old_key = settings.COCKPIT_AUDIT_KEY
    events = make_events(team, 2)
    audit_anchor()
    settings.COCKPIT_AUDIT_KEY = "the-new-audit-key-of-at-least-32-characters"
    settings.COCKPIT_AUDIT_OLD_KEYS = [old_key]
    newer = api_key_create(actor=ACTOR, team=team, name="after", scopes=["read"])[0]
    latest = AuditEvent.objects.get(object_id=str(newer.pk), action="api_key.create")
    assert latest.key_id != events[0].key_id and latest.prev_hash == events[-1].hash
    report = audit_verify_snapshot()
    assert report.intact and report.anchor is not None, str(report)
    assert audit_anchor()[1] is not None


def test_verify_catches_rows_deleted_from_the_end_after_an_anchor(team) -> None:
    events = make_events(team)
    report, anchor = audit_anchor()
    assert report.intact and anchor is not None and anchor.chains[team.pk].id == events[-1].pk
    raw_sql("DELETE FROM cockpit_auditevent WHERE id = %s", [events[-1].pk])
    report = audit_verify_snapshot()
    assert not report.intact
    assert report.broken_at == events[-1].pk
    assert "rows were deleted from its end" in report.problem and "now ends at row 4" in report.problem


def test_verify_catches_an_emptied_table_after_an_anchor(team) -> None:
    make_events(team)
    audit_anchor()
    raw_sql("DELETE FROM cockpit_auditevent", [])
    report = audit_verify_snapshot()
    assert not report.intact and "has no rows" in report.problem


@postgres_only
def test_verify_catches_a_truncated_table_after_an_anchor(team) -> None:
    make_events(team)
    audit_anchor()
    raw_sql("TRUNCATE cockpit_auditevent", [])
    err = StringIO()
    with pytest.raises(SystemExit):
        call_command("audit_verify", stdout=StringIO(), stderr=err)
    assert "the table was emptied" in err.getvalue()


def test_an_anchor_is_not_written_over_a_deleted_end(team, settings) -> None:
    """The next anchor must not bless the loss: it checks the rows since the last one first."""
    events = make_events(team)
    audit_anchor()
    raw_sql("DELETE FROM cockpit_auditevent WHERE id = %s", [events[-1].pk])
    api_key_create(actor=ACTOR, team=team, name="later", scopes=["read"])  # the chain goes on
    report, anchor = audit_anchor()
    assert anchor is None and not report.intact
    assert report.broken_at is not None
    files = list(settings.COCKPIT_AUDIT_ANCHOR_DIR.glob("anchors-*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in files) == 1
    assert not audit_verify_snapshot().intact


def test_anchors_extend_one_another_and_are_logged(team, settings, caplog) -> None:
    make_events(team, 2)
    first = audit_anchor()[1]
    events = make_events(team, 2)
    with caplog.at_level("INFO", logger="cockpit.audit"):
        report, second = audit_anchor()
    assert report.intact and second is not None
    assert second.previous == first.signature and second.count == 4 == len(events)
    assert second.chains[team.pk].hash == events[-1].hash
    assert any(second.signature in record.getMessage() for record in caplog.records)
    (path,) = settings.COCKPIT_AUDIT_ANCHOR_DIR.glob("anchors-*.jsonl")
    assert [json.loads(line)["signature"] for line in path.read_text().splitlines()] == [
        first.signature,
        second.signature,
    ]


def test_a_forged_anchor_is_refused(team, settings) -> None:
    make_events(team, 2)
    audit_anchor()
    (path,) = settings.COCKPIT_AUDIT_ANCHOR_DIR.glob("anchors-*.jsonl")
    data = json.loads(path.read_text().splitlines()[-1])
    data["chains"][str(team.pk)][0] = 1  # pretend the chain was shorter
    path.write_text(path.read_text() + json.dumps(data) + "\n")
    report = audit_verify_snapshot()
    assert not report.intact and "signature does not match" in report.problem
    assert audit_anchor()[1] is None


def test_anchor_goes_to_the_webhook_signed_and_a_failing_one_loses_nothing(team, settings) -> None:
    receiver = Receiver(statuses=[200, 503])
    try:
        settings.COCKPIT_AUDIT_ANCHOR_WEBHOOK = receiver.url
        settings.COCKPIT_AUDIT_ANCHOR_WEBHOOK_SECRET = "hook-secret"
        make_events(team, 2)
        anchor = audit_anchor()[1]
        (sent,) = receiver.requests
        body = json.loads(sent.body)
        assert body["type"] == "audit.anchor" and body["signature"] == anchor.signature
        assert webhooks.verify(
            "hook-secret", sent.headers["x-cockpit-timestamp"], sent.body, sent.headers["x-cockpit-signature"]
        )
        later = audit_anchor()[1]  # the receiver answers 503: the file still has it
        assert later is not None and len(receiver.requests) == 2
        assert audit_verify_snapshot().anchor == later
    finally:
        receiver.stop()


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
    events = list(AuditEvent.objects.order_by("chain", "seq"))
    assert [e.action for e in events[-6:]] == ["x.before", "x.batch0", "x.batch1", "x.batch2", "x.batch3", "x.after"]
    assert [e.pk for e in batch] == [e.pk for e in events[-5:-1]]
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    assert audit_verify().intact


def _hold_audit_open(team, started: threading.Event, release: threading.Event, log: list[str]) -> None:
    """A service that has written its audit row and has not committed yet."""
    try:
        with transaction.atomic():
            audit_record(actor=ACTOR, action="test.hold", team=team)
            started.set()
            release.wait(timeout=30)
            log.append("holder committed")
    finally:
        started.set()
        connection.close()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_writers_of_other_teams_do_not_wait_for_an_open_audit_transaction(team, other_team) -> None:
    started, release, log = threading.Event(), threading.Event(), []
    holder = threading.Thread(target=_hold_audit_open, args=(team, started, release, log))
    holder.start()
    try:
        assert started.wait(timeout=30)
        api_key_create(actor=ACTOR, team=other_team, name="other", scopes=["read"])
        log.append("other team written")
    finally:
        release.set()
        holder.join()
    assert log == ["other team written", "holder committed"]
    assert audit_verify().intact


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_writers_of_one_team_wait_their_turn(team) -> None:
    started, release, log = threading.Event(), threading.Event(), []
    holder = threading.Thread(target=_hold_audit_open, args=(team, started, release, log))
    holder.start()
    try:
        assert started.wait(timeout=30)
        writer = threading.Thread(
            target=lambda: (
                api_key_create(actor=ACTOR, team=team, name="same", scopes=["read"]),
                log.append("same team written"),
                connection.close(),
            )
        )
        writer.start()
        writer.join(timeout=0.5)  # not a timing assertion: it may be anywhere before the release
        log.append("released")
        release.set()
        writer.join()
    finally:
        release.set()
        holder.join()
    assert log == ["released", "holder committed", "same team written"]
    events = list(AuditEvent.objects.filter(chain=team.pk).order_by("seq"))
    assert [e.action for e in events] == ["test.hold", "api_key.create"] and events[1].prev_hash == events[0].hash


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_transactions_writing_to_two_teams_in_opposite_orders_do_not_deadlock(team, other_team) -> None:
    """Each transaction keeps its rows in the chain of its first row, so it never waits for a
    second chain while holding one."""
    first_written = {team.pk: threading.Event(), other_team.pk: threading.Event()}
    errors: list[BaseException] = []

    def write(mine, theirs) -> None:
        try:
            with transaction.atomic():
                audit_record(actor=ACTOR, action="test.first", team=mine)
                first_written[mine.pk].set()
                assert first_written[theirs.pk].wait(timeout=30)
                audit_record(actor=ACTOR, action="test.second", team=theirs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            first_written[mine.pk].set()
            connection.close()

    threads = [
        threading.Thread(target=write, args=(team, other_team)),
        threading.Thread(target=write, args=(other_team, team)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seconds = AuditEvent.objects.filter(action="test.second")
    assert {(e.team_id, e.chain) for e in seconds} == {(other_team.pk, team.pk), (team.pk, other_team.pk)}
    report = audit_verify()
    assert report.intact and report.checked == 4


def test_a_rolled_back_savepoint_gives_its_chain_back(team, other_team) -> None:
    """The chain a transaction is bound to is undone with the savepoint that bound it."""
    with transaction.atomic():
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            audit_record(actor=ACTOR, action="test.undone", team=team)
            1 / 0  # noqa: B018
        event = audit_record(actor=ACTOR, action="test.kept", team=other_team)
    assert event.chain == other_team.pk and event.seq == 1
    assert audit_verify().intact


def test_the_system_page_shows_a_deleted_end_caught_by_the_anchor_task_and_the_check(
    client, superuser, team, django_capture_on_commit_callbacks
) -> None:
    client.force_login(superuser)
    chain = make_events(team)[-1].chain  # (in a test, every row is of one transaction: one chain)
    events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
    maintenance_audit_anchor()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("system"), {"check": "audit"})
    page = client.get(reverse("system")).content.decode()
    assert "intact: " in page and "every row of the anchor of" in page
    raw_sql("DELETE FROM cockpit_auditevent WHERE chain = %s AND seq > 3", [chain])
    maintenance_audit_anchor()  # the next anchor refuses, and says so
    page = client.get(reverse("system")).content.decode()
    assert f"broken at event #{events[-1].pk}" in page and "rows were deleted from its end" in page
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("system"), {"check": "audit"})
    assert "now ends at row 3" in client.get(reverse("system")).content.decode()
