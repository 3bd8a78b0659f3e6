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
