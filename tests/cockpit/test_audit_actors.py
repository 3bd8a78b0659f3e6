"""The audit names who really did it: every operator action, from every entry point, records the
authenticated principal (the session's user, or the API key and its owner) in the audit row, in
the object's history and on the page the live event makes the browser re-fetch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

import tests.fleet.agents  # noqa: F401  (test agents and tools)
from approvals.models import ApprovalRequest
from cockpit.models import AuditEvent
from cockpit.roles import Role
from fleet import services as fleet_services
from fleet.models import Run, RunEvent, RunStatus, Tier
from tests.approvals import conftest as approvals_fixtures
from tests.factories import UserFactory
from tests.fleet import conftest as fleet_fixtures
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db

# The fleet's and the approvals' fixtures: agents, runs, approvers at L1–L3, the Cedar gate.
_fleet_basics = approvals_fixtures._fleet_basics
approvers = approvals_fixtures.approvers
make_agent = fleet_fixtures.make_agent
start = fleet_fixtures.start


@pytest.fixture
def olivia(team):  # noqa: ANN001, ANN201
    return UserFactory(username="olivia", roles=[(team, Role.OPERATOR)])


def paused_rows(run: Run) -> list[tuple[str, str | None]]:
    """(actor label, actor username) of the run's history rows that made it paused."""
    return [
        (e.actor_label, e.actor_user.username if e.actor_user else None)
        for e in RunEvent.objects.filter(run=run, kind=RunEvent.Kind.STATUS, to_status=RunStatus.PAUSED)
    ]


# --- The demo's bug: olivia's pause, shown as andre's ------------------------------------------


def test_a_pause_asked_while_waiting_stays_the_operators_when_an_approver_decides(
    client, make_agent, start, approvers, olivia
) -> None:
    """olivia pauses a run that waits for approval; ana (an approver) approves; the run parks as
    paused. The history, the run page and the audit say olivia paused it, never ana."""
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED), label="refund-1"))
    request = ApprovalRequest.objects.get(run=run)
    client.force_login(olivia)
    assert client.post(reverse("run-pause", args=[run.pk]), {"reason": "checking the amount"}).status_code == 302
    client.force_login(approvers["ana"])
    assert client.post(reverse("approval-approve", args=[request.pk]), {"note": ""}).status_code in (200, 302)

    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.status_reason == "checking the amount"
    assert paused_rows(run) == [("olivia", "olivia")]
    approval_row = RunEvent.objects.get(run=run, kind=RunEvent.Kind.APPROVAL)
    assert (approval_row.actor_label, approval_row.actor_user) == ("ana", approvers["ana"])
    audited = {
        (e.action, e.actor_label)
        for e in AuditEvent.objects.filter(action__in=["run.pause", "approval.approve"], team=run.team)
    }
    assert audited == {("run.pause", "olivia"), ("approval.approve", "ana")}

    client.force_login(olivia)
    page = client.get(reverse("run-detail", args=[run.pk]), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="run-timeline")
    paused_entry = page.content.decode().split("status-paused")[1].split("</li>")[0]
    assert "olivia" in paused_entry and "ana" not in paused_entry


def test_a_pause_a_worker_honours_stays_the_operators(make_agent, start, client, olivia) -> None:
    """The worker parks the run at its next step; the history row that says so names olivia."""
    run = start(make_agent("test-linear"), n=3)
    claimed = fleet_services.run_claim(run_id=run.pk, owner="worker-1")
    assert claimed is not None and claimed.status == RunStatus.RUNNING
    client.force_login(olivia)
    client.post(reverse("run-pause", args=[run.pk]), {"reason": "looks odd"})
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    run = execute(run)
    assert run.status == RunStatus.PAUSED and run.status_reason == "looks odd"
    assert paused_rows(run) == [("olivia", "olivia")]
