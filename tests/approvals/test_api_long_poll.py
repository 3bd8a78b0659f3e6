"""Long-polling a request (``GET /api/v1/approvals/{id}?wait=…``): it returns when the request
changes — decided, escalated, expired — and while it waits it holds no database connection, so
many waiting agents never starve the other requests."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connections
from django.test import Client

from approvals.models import ApprovalRequest
from approvals.services import approval_decide, approval_request_create, approvals_sweep
from cockpit.audit import Actor
from cockpit.models import ApiKey
from cockpit.services import api_key_create
from fleet.models import AgentKind, Tier
from tests.support import processes

SYSTEM = Actor.system("tests")


def _key(team, name: str = "crm agent") -> str:  # noqa: ANN001
    return api_key_create(actor=SYSTEM, team=team, name=name, scopes=["approvals"])[1]


def _pending(make_agent) -> ApprovalRequest:  # noqa: ANN001
    agent = make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.ASSISTED)
    return approval_request_create(actor=SYSTEM, agent=agent, action="crm.merge_accounts", arguments={}, risk="high")[
        0
    ]


class Poller(threading.Thread):
    """One long-poll in its own thread: ``body`` once it returns."""

    def __init__(self, get: Any) -> None:
        super().__init__(daemon=True)
        self._get = get
        self.body: dict | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.body = self._get()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_returns_when_the_request_escalates(team, approvers, make_agent) -> None:
    key = _key(team)
    request = _pending(make_agent)
    url = f"/api/v1/approvals/{request.pk}?wait=25"
    poller = Poller(lambda: Client().get(url, HTTP_AUTHORIZATION=f"Bearer {key}").json())
    time.sleep(0.5)  # (if the sweep comes first, the poll sees L2 at once: the same answer)
    with time_machine.travel(request.deadline + timedelta(seconds=1), tick=False):
        assert approvals_sweep() == 1
    poller.join(20)
    assert not poller.is_alive() and poller.error is None
    assert (poller.body["status"], poller.body["level"]) == ("pending", 2)


@pytest.mark.django_db(transaction=True)
def test_waiting_long_polls_hold_no_database_connection(team, approvers, make_agent) -> None:
    """Six agents long-poll a server whose pool has two connections: all six get in, a plain GET
    answers while they wait, and each of them sees the decision."""
    request = _pending(make_agent)
    keys = [_key(team, f"agent {n}") for n in range(6)]
    web, base = processes.start_web(env={"COCKPIT_DB_POOL_SIZE": "2", "COCKPIT_DB_POOL_TIMEOUT": "30"})

    def get(path: str, key: str, timeout: float = 60) -> dict:
        call = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(call, timeout=timeout) as response:
            assert response.status == 200
            return json.loads(response.read())

    try:
        polls = [Poller(lambda k=k: get(f"/api/v1/approvals/{request.pk}?wait=30", k)) for k in keys]
        # Each long-poll has authenticated (its key records its first use): none is stuck
        # waiting for a connection that another long-poll holds.
        deadline = time.monotonic() + 25
        while ApiKey.objects.filter(last_used_at__isnull=True).exists():
            assert time.monotonic() < deadline, "long-polls are waiting for a database connection"
            time.sleep(0.1)
        plain = get(f"/api/v1/approvals/{request.pk}", keys[0], timeout=25)
        assert plain["status"] == "pending"
        assert all(p.is_alive() for p in polls)  # the plain GET answered while all six wait
        approval_decide(actor=Actor.for_user(approvers["ana"]), request=request, approve=True)
        for poll in polls:
            poll.join(25)
        assert [p.error for p in polls] == [None] * 6
        assert [p.body["status"] for p in polls] == ["approved"] * 6
    finally:
        web.stop()
