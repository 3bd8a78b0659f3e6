"""Approvers at work in real browsers, on requests made by real managed runs: a run parks on an
approval, the request arrives in the approvers' queues live, each decides from the keyboard
(approve, approve with edits, reject with a reason), and the run's page, open elsewhere, follows
each decision as it happens. Two approvers racing: one decision counts, the other is told who was
faster. And the calibration chart, drawn from collected (hashed, compressed) static files under
the strict CSP, as in production."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import Page, expect

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide, approval_request_create, escalation_policy_save
from cockpit.audit import Actor
from cockpit.models import AuditEvent, Team
from cockpit.roles import Role
from cockpit.services import group_members_set
from fleet.models import Agent, ModelProvider, ProviderKind, Run, RunStatus, Tier
from fleet.sandbox.models import Refund
from fleet.services import run_create, tools_sync
from tests.browser.conftest import sign_in
from tests.factories import UserFactory
from tests.fleet.conftest import make_agent  # noqa: F401  (fixture)
from tests.support import processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]
SYSTEM = Actor.system("tests")
WAIT = 20_000  # ms: a run has to be picked up by the worker, reach its approval and park


@pytest.fixture
def runs_worker(django_db_blocker) -> Iterator[processes.Process]:  # noqa: ANN001
    worker = processes.start_worker(name="approvals-runs", queues="runs", extra=["--pool", "threads"], concurrency=4)
    yield worker
    worker.stop()


@pytest.fixture
def deciders(team: Team) -> dict[str, User]:
    """ana, ben and cleo decide Alpha's requests at L1 (five minutes, so nothing escalates
    during a test); dev at L2; oscar operates the runs."""
    people = {
        name: UserFactory(username=name, roles=[(team, Role.APPROVER)]) for name in ("ana", "ben", "cleo", "dev")
    }
    people["oscar"] = UserFactory(username="oscar", roles=[(team, Role.OPERATOR)])
    first, _ = Group.objects.get_or_create(name="alpha L1")
    second, _ = Group.objects.get_or_create(name="alpha L2")
    group_members_set(actor=SYSTEM, group=first, users=[people["ana"], people["ben"], people["cleo"]])
    group_members_set(actor=SYSTEM, group=second, users=[people["dev"]])
    escalation_policy_save(
        actor=SYSTEM,
        team=team,
        name="Alpha approvals",
        levels=[{"group": first, "sla_seconds": 300, "channels": []}, {"group": second, "sla_seconds": 600}],
    )
    return people


@pytest.fixture
def refunder(make_agent) -> Agent:  # noqa: ANN001, F811
    """A tier 3 (assisted) agent: its side effects wait for a person (the default policy)."""
    ModelProvider.objects.get_or_create(name="sim", defaults={"kind": ProviderKind.SIMULATED, "options": {}})
    tools_sync()
    return make_agent("test-approval", tier=Tier.ASSISTED)


def open_page(browser, url: str, username: str, password: str) -> Page:  # noqa: ANN001
    """A signed-in page in a browser context of its own (its own session and websocket)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda error: pytest.fail(f"{username}'s page: {error}"))
    sign_in(page, username, password)
    return page


def open_queue(page: Page, path: str = "/approvals/") -> None:
    page.goto(path)
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")


def park(agent: Agent, label: str) -> tuple[Run, ApprovalRequest]:
    """Start a run that asks to refund ``label``; return it with its request once it waits."""
    run, _ = run_create(actor=SYSTEM, agent=agent, input={"label": label})
    deadline = time.monotonic() + WAIT / 1000
    while time.monotonic() < deadline:
        request = ApprovalRequest.objects.filter(run=run).first()
        if request is not None and Run.objects.get(pk=run.pk).status == RunStatus.WAITING_APPROVAL:
            return run, request
        time.sleep(0.1)
    raise AssertionError(f"run #{run.pk} did not park on its approval: {Run.objects.get(pk=run.pk).status}")


def watch_run(browser, url: str, run: Run, password: str) -> Page:  # noqa: ANN001
    """oscar's page on the run, showing it waiting for the decision."""
    page = open_page(browser, url, "oscar", password)
    page.goto(f"/fleet/runs/{run.pk}/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
    expect(page.locator("#run-header").get_by_text("Waiting for approval", exact=True)).to_be_visible()
    expect(page.locator(".approval-box.is-waiting")).to_be_visible()
    return page


def test_three_approvers_decide_from_the_keyboard_and_the_run_pages_follow(
    browser, web_process, worker_process, runs_worker, eager_off, deciders, refunder, password
) -> None:
    url = web_process[1]

    # ana waits on her queue; a run parks on its approval; the request arrives without a reload.
    ana = open_page(browser, url, "ana", password)
    open_queue(ana)
    rows = ana.locator("[data-approval-row]")
    expect(rows).to_have_count(0)
    first_run, first = park(refunder, "refund-1")
    expect(rows).to_have_count(1, timeout=WAIT)
    expect(ana.locator(f'[data-approval-row="{first.pk}"]')).to_contain_text("test.effect")
    expect(ana.locator("#toasts")).to_contain_text("Test-Approval wants to run test.effect")
    watching = watch_run(browser, url, first_run, password)

    # j, a, Enter: three keystrokes.
    ana.keyboard.press("j")
    pane = ana.locator("#approval-pane")
    expect(pane).to_have_attribute("data-approval-id", str(first.pk))
    expect(pane.locator("[data-approval-arguments]")).to_contain_text("refund-1")
    expect(pane).to_contain_text("the parcel arrived broken")  # why, from the run's decision step
    ana.keyboard.press("a")
    ana.keyboard.press("Enter")
    expect(pane.locator("[data-approval-outcome]")).to_contain_text("Approved")
    expect(rows).to_have_count(0)
    # The run page: the approval is decided, by whom; the run goes on and refunds.
    timeline = watching.locator("#run-timeline")
    expect(timeline.locator(".approval-box")).to_contain_text("approved by ana", timeout=WAIT)
    expect(watching.locator("#run-header").get_by_text("Succeeded", exact=True)).to_be_visible(timeout=WAIT)
    assert Refund.objects.filter(ticket_ref="refund-1").count() == 1

    # ben: j, e, the arguments edited, Ctrl+Enter. The run executes what ben approved.
    ben = open_page(browser, url, "ben", password)
    open_queue(ben)
    second_run, second = park(refunder, "refund-2")
    ben_rows = ben.locator("[data-approval-row]")
    expect(ben_rows).to_have_count(1, timeout=WAIT)
    watching.goto(f"/fleet/runs/{second_run.pk}/")
    expect(watching.locator(".approval-box.is-waiting")).to_be_visible()
    ben.keyboard.press("j")
    ben_pane = ben.locator("#approval-pane")
    expect(ben_pane).to_have_attribute("data-approval-id", str(second.pk))
    ben.keyboard.press("e")
    arguments = ben_pane.locator("[data-approval-edit-input]")
    expect(arguments).to_be_focused()
    arguments.fill('{"label": "refund-2-half"}')
    ben.keyboard.press("Control+Enter")
    expect(ben_pane.locator("[data-approval-outcome]")).to_contain_text("Approved with edits")
    diff = ben_pane.locator(".args-diff .arg-changed")
    expect(diff).to_contain_text("refund-2")
    expect(diff).to_contain_text("refund-2-half")
    expect(ben_rows).to_have_count(0)
    box = watching.locator("#run-timeline .approval-box")
    expect(box).to_contain_text("approved by ben", timeout=WAIT)
    expect(box).to_contain_text("refund-2-half")  # "Edited to"
    expect(watching.locator("#run-header").get_by_text("Succeeded", exact=True)).to_be_visible(timeout=WAIT)
    assert list(Refund.objects.filter(ticket_ref__startswith="refund-2").values_list("ticket_ref", flat=True)) == [
        "refund-2-half"
    ]

    # cleo: j, r, the reason, Enter. The run takes its rejection path; nothing is refunded.
    cleo = open_page(browser, url, "cleo", password)
    open_queue(cleo)
    third_run, third = park(refunder, "refund-3")
    cleo_rows = cleo.locator("[data-approval-row]")
    expect(cleo_rows).to_have_count(1, timeout=WAIT)
    watching.goto(f"/fleet/runs/{third_run.pk}/")
    expect(watching.locator(".approval-box.is-waiting")).to_be_visible()
    cleo.keyboard.press("j")
    cleo_pane = cleo.locator("#approval-pane")
    expect(cleo_pane).to_have_attribute("data-approval-id", str(third.pk))
    cleo.keyboard.press("r")
    expect(cleo_pane.locator("[data-approval-reject-input]")).to_be_focused()
    cleo.keyboard.type("the order was already refunded")
    cleo.keyboard.press("Enter")
    expect(cleo_pane.locator("[data-approval-outcome]")).to_contain_text("Rejected")
    expect(cleo_rows).to_have_count(0)
    box = watching.locator("#run-timeline .approval-box")
    expect(box).to_contain_text("rejected by cleo", timeout=WAIT)
    expect(box).to_contain_text("the order was already refunded")
    expect(watching.locator("#run-timeline")).to_contain_text("told the customer no refund", timeout=WAIT)
    assert not Refund.objects.filter(ticket_ref="refund-3").exists()

    decided = {r.pk: (r.status, r.decided_by_label) for r in ApprovalRequest.objects.all()}
    assert decided == {
        first.pk: (ApprovalStatus.APPROVED, "ana"),
        second.pk: (ApprovalStatus.APPROVED_WITH_EDITS, "ben"),
        third.pk: (ApprovalStatus.REJECTED, "cleo"),
    }


def test_two_approvers_race_and_the_slower_one_is_told_who_decided(
    browser, web_process, worker_process, runs_worker, eager_off, deciders, refunder, password
) -> None:
    url = web_process[1]
    run, request = park(refunder, "refund-race")
    path = f"/approvals/?selected={request.pk}"
    ana, ben, cleo = (open_page(browser, url, name, password) for name in ("ana", "ben", "cleo"))
    for page in (ana, ben, cleo):
        open_queue(page, path)
        expect(page.locator("#approval-pane")).to_have_attribute("data-approval-id", str(request.pk))

    # ben is halfway through rejecting it when ana approves it.
    ben.keyboard.press("r")
    ben.keyboard.type("not sure about this one")
    ana.keyboard.press("a")
    ana.keyboard.press("Enter")
    expect(ana.locator("[data-approval-outcome]")).to_contain_text("Approved")

    # cleo was only looking: her pane changes by itself.
    expect(cleo.locator("[data-approval-outcome]")).to_contain_text("already decided by ana")
    expect(cleo.locator("[data-approval-decide]")).to_have_count(0)
    # ben's form was left alone while he typed; his rejection is refused, saying who was faster.
    ben.keyboard.press("Enter")
    expect(ben.locator("#approval-pane")).to_contain_text(re.compile(r"already (approved|decided) by ana", re.I))
    expect(ben.locator("[data-approval-decide]")).to_have_count(0)

    request.refresh_from_db()
    assert (request.status, request.decided_by_label) == (ApprovalStatus.APPROVED, "ana")
    assert list(
        AuditEvent.objects.filter(action__startswith="approval.", object_id=str(request.pk)).values_list(
            "action", flat=True
        )
    ) == ["approval.approve"]
    expect(cleo.locator("[data-approval-row]")).to_have_count(0)


# --- Production static files ------------------------------------------------------------------


@pytest.fixture
def collected_web(tmp_path: Path, django_db_blocker) -> Iterator[str]:  # noqa: ANN001
    """daphne serving static files as in production: collected (hashed names, gzip) into a
    STATIC_ROOT of its own, not read through the finders."""
    env = {"COCKPIT_STATIC": "collected", "COCKPIT_VAR_DIR": str(tmp_path), "DEBUG": "false"}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=processes.BASE_DIR,
        env={**os.environ, **env},
        check=True,
    )
    port = processes.free_port()
    web = processes.Process(
        "web-collected",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "cockpit.asgi:application"],
        env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or web.proc.poll() is not None:
                    raise RuntimeError(f"daphne did not start:\n{web.output()[-3000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        web.stop()


def test_the_calibration_chart_draws_from_collected_static_files_under_the_csp(
    browser, collected_web, deciders, refunder, password
) -> None:
    for confidence, approve in ((0.95, True), (0.9, True), (0.55, False), (0.75, True)):
        request, _ = approval_request_create(
            actor=SYSTEM,
            agent=refunder,
            action="test.effect",
            arguments={"label": "x"},
            confidence=confidence,
            risk="high",
            notify=False,
        )
        approval_decide(actor=SYSTEM, request=request, approve=approve, reason="" if approve else "no")
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=collected_web)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        scripts: dict[str, tuple[int, str | None, str | None]] = {}
        page.on(
            "response",
            lambda r: (
                scripts.__setitem__(
                    r.url.rsplit("/", 1)[-1],
                    (r.status, r.headers.get("content-encoding"), r.headers.get("cache-control")),
                )
                if "/static/" in r.url
                else None
            ),
        )
        sign_in(page, "ana", password)
        response = page.goto(f"/approvals/agents/{refunder.pk}/calibration/")
        assert response is not None
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
        plot = page.locator("#reliability-plot")
        expect(plot.locator(".main-svg").first).to_be_visible()
        expect(plot.locator(".scatterlayer .trace")).to_have_count(2)
        expect(plot.locator(".barlayer .point")).to_have_count(10)
        # plotly.js came from the collected files: hashed, compressed, cached for good.
        [plotly] = [name for name in scripts if re.fullmatch(r"plotly\.min\.[0-9a-f]{12}\.js", name)]
        status, encoding, cache = scripts[plotly]
        assert (status, encoding) == (200, "gzip") and cache is not None and "immutable" in cache
        assert problems == [], f"the page reported errors: {problems}"
    finally:
        context.close()
