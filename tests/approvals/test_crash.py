"""A worker killed anywhere in the approval path never turns into a decision nobody made.

Real worker processes execute a run up to its approval and are killed (SIGKILL) at each point of
that path (see ``fleet.runtime.faults``); another worker takes the run over. After each kill,
and again after the takeover, the run, its request and the decision API agree: one request,
the run waiting for it, and a decision through the API that the run then follows."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from approvals.models import ApprovalRequest, ApprovalStatus
from cockpit.audit import Actor
from fleet import services
from fleet.models import FINAL_RUN_STATUSES, Run, RunEvent, RunStatus, Step, StepKind, StepStatus, Tier
from fleet.sandbox.models import Refund
from fleet.tasks import run_execute
from tests.support import processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]

LEASE = 2  # seconds: the killed worker's lease runs out this soon
BOUND = 90  # seconds: a generous bound on every wait, not a measurement


def wait_for(condition: Callable[[], bool], what: str, *, sweep: bool = False) -> None:
    """Poll ``condition`` until it holds; with ``sweep``, doing meanwhile what beat's run sweeper
    does in production (re-enqueue runs whose lease ran out)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if condition():
            return
        if sweep:
            for run_id in services.runs_to_recover(grace_seconds=LEASE):
                run_execute.delay(run_id)
        time.sleep(0.2)
    raise AssertionError(f"not within {BOUND}s: {what}")


def assert_agree(run: Run) -> ApprovalRequest | None:
    """The run, its approval step and its request tell the same story: either nothing was asked
    yet (the run is still running), or one request is pending and the run waits for it."""
    run.refresh_from_db()
    requests = list(ApprovalRequest.objects.filter(run=run))
    steps = list(Step.objects.filter(run=run, kind=StepKind.APPROVAL))
    if run.status == RunStatus.RUNNING:
        assert requests == [] and steps == [], (run.status, requests, steps)
        return None
    assert run.status == RunStatus.WAITING_APPROVAL, (run.status, run.status_reason)
    assert len(requests) == 1 and len(steps) == 1, (requests, steps)
    request, step = requests[0], steps[0]
    assert request.status == ApprovalStatus.PENDING and step.status == StepStatus.WAITING
    assert request.step_seq == step.seq
    return request


@pytest.mark.parametrize(
    ("point", "decision"),
    [
        ("approval.before_request", "approve"),
        ("approval.after_request", "reject"),
        ("approval.after_park", "approve"),
    ],
)
def test_a_worker_killed_in_the_approval_path_leaves_one_request_and_the_run_waiting_for_it(
    point, decision, make_agent, approvers, eager_off, settings, client
) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "RUN_LEASE_SECONDS": LEASE}
    env = {"COCKPIT_RUN_LEASE_SECONDS": str(LEASE)}
    agent = make_agent("test-approval", tier=Tier.ASSISTED)

    doomed = processes.start_worker(name="doomed", concurrency=1, queues="runs", env={**env, "COCKPIT_KILL_AT": point})
    try:
        run, _ = services.run_create(actor=Actor.system("tests"), agent=agent, input={"label": "crash"})
        doomed.wait_for_output(f"kill point reached: {point}", timeout=BOUND)
    finally:
        doomed.kill()  # the whole worker: it must not take the run up again itself
    assert_agree(run)

    rescuer = processes.start_worker(name="rescuer", concurrency=1, queues="runs", env=env)
    try:
        wait_for(lambda: assert_agree(run) is not None, "the run waits for its approval", sweep=True)
        request = assert_agree(run)
        assert request is not None
        if point != "approval.after_park":  # taken over from the dead worker, and it says so
            takeover = run.events.filter(kind=RunEvent.Kind.NOTE, reason__startswith="resumed after worker loss")
            assert takeover.count() == 1

        client.force_login(approvers["ana"])
        body = {"decision": decision, "reason": "" if decision == "approve" else "duplicate ticket"}
        response = client.post(f"/api/v1/approvals/{request.pk}/decision", body, content_type="application/json")
        assert response.status_code == 200, response.content
        again = client.post(
            f"/api/v1/approvals/{request.pk}/decision",
            {"decision": "reject", "reason": "too late"},
            content_type="application/json",
        )
        assert again.status_code == 409, again.content

        wait_for(lambda: Run.objects.get(pk=run.pk).status in FINAL_RUN_STATUSES, "the run ends", sweep=True)
    finally:
        rescuer.stop()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, (run.status, run.error)
    assert ApprovalRequest.objects.filter(run=run).count() == 1
    if decision == "approve":
        assert run.result["refunded"] is True and Refund.objects.filter(ticket_ref="crash").count() == 1
    else:
        assert run.result == {"refunded": False, "why": "rejected by ana: duplicate ticket"}
        assert not Refund.objects.exists()
