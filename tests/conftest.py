from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection

from cockpit.celery import app as celery_app
from cockpit.models import Team
from cockpit.roles import Role
from cockpit.telemetry import configure_tracing
from tests.factories import PASSWORD, TeamFactory, UserFactory
from tests.support import processes

pytest_plugins = ["tests.support.provider_servers", "tests.support.browser"]

# Unit tests of services run tasks in-process; tests that cross processes start real workers
# (see tests/support/processes.py) and switch this off.
celery_app.conf.task_always_eager = True
celery_app.conf.task_eager_propagates = True
configure_tracing("cockpit-tests")


def _flush_past_the_audit_trigger() -> None:
    """Tests that commit (``transaction=True``) end with a TRUNCATE of every table, which the
    audit log's trigger refuses, as it should anywhere else: the test database's owner lifts it
    for that one statement, in the flush's transaction."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    sql_flush = DatabaseOperations.sql_flush

    def flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):  # noqa: ANN001, ANN202
        statements = sql_flush(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if "cockpit_auditevent" not in tables or not statements:
            return statements
        trigger = "TRIGGER cockpit_audit_append_only"
        return [
            f"ALTER TABLE cockpit_auditevent DISABLE {trigger}",
            *statements,
            f"ALTER TABLE cockpit_auditevent ENABLE {trigger}",
        ]

    DatabaseOperations.sql_flush = flush


_flush_past_the_audit_trigger()


@pytest.fixture(autouse=True)
def _audit_anchor_dir(settings, tmp_path_factory) -> None:  # noqa: ANN001
    """Each test reads and writes audit anchors of its own (its database is its own too)."""
    settings.COCKPIT_AUDIT_ANCHOR_DIR = tmp_path_factory.mktemp("audit-anchors")


@pytest.fixture
def team(db: None) -> Team:
    return TeamFactory(slug="alpha", name="Alpha")


@pytest.fixture
def other_team(db: None) -> Team:
    return TeamFactory(slug="beta", name="Beta")


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def make_user(db: None):  # noqa: ANN201
    """``make_user(role, team)`` → a user holding ``role`` in ``team`` (or no role)."""

    def make(role: str | None = None, team: Team | None = None, **fields: object):  # noqa: ANN202
        return UserFactory(roles=[(team, role)] if role and team else [], **fields)

    return make


@pytest.fixture
def admin_user(make_user, team):  # noqa: ANN001, ANN201
    return make_user(Role.ADMIN, team, username="alice-admin")


@pytest.fixture
def superuser(db: None):  # noqa: ANN201
    return UserFactory(username="root", is_superuser=True, is_staff=True)


@pytest.fixture
def eager_off() -> Iterator[None]:
    """Tasks go through the real broker to a worker process for the duration of the test."""
    celery_app.conf.task_always_eager = False
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = True


@pytest.fixture(scope="session")
def worker_process(django_db_setup, django_db_blocker) -> Iterator[processes.Process]:  # noqa: ANN001
    """A real Celery worker on the test database, shared by the session's tests. It leaves the
    runs queue alone: tests of the runtime start (and kill) run workers of their own."""
    with django_db_blocker.unblock():
        worker = processes.start_worker(queues="default,escalations,notifications,ingest,rollups,maintenance")
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def web_process(django_db_setup, django_db_blocker) -> Iterator[tuple[processes.Process, str]]:  # noqa: ANN001
    """daphne serving the full ASGI app (HTTP and websockets) on the test database."""
    with django_db_blocker.unblock():
        web, url = processes.start_web()
    yield web, url
    web.stop()


@pytest.fixture
def on_postgres() -> bool:
    return connection.vendor == "postgresql"
