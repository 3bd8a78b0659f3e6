"""In a real browser: an approver works the queue from the keyboard ("j, a, Enter"), decided
requests leave the list live, a new one arrives with a toast; the calibration plot draws under
the strict CSP with no console error (the ``page`` fixture fails on any)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide, approval_request_create
from fleet.models import Tier
from tests.approvals.test_views_queue import ask
from tests.factories import SYSTEM
from tests.support.browser import sign_in

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def status_of(request: ApprovalRequest) -> str:
    return ApprovalRequest.objects.get(pk=request.pk).status


def test_an_approver_decides_three_requests_from_the_keyboard(page, make_agent, approvers, password) -> None:  # noqa: F811
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    first, second, third = (ask(agent, arguments={"label": f"refund-{n}"}) for n in (1, 2, 3))
    sign_in(page, "ana", password)
    page.goto("/approvals/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
    rows = page.locator("[data-approval-row]")
    expect(rows).to_have_count(3)
    pane = page.locator("#approval-pane")

    # j, a, Enter: the first request is approved, and leaves the list without a reload.
    page.keyboard.press("j")
    expect(pane).to_have_attribute("data-approval-id", str(first.pk))
    expect(rows.first).to_have_class("aq-row is-selected")
    page.keyboard.press("a")
    expect(pane.locator("[data-approval-approve]")).to_be_focused()
    page.keyboard.press("Enter")
    expect(pane.locator("[data-approval-outcome]")).to_contain_text("Approved")
    expect(page.locator("#toasts")).to_contain_text(f"Approved: #{first.pk} test.effect")
    expect(rows).to_have_count(2)
    assert status_of(first) == ApprovalStatus.APPROVED

    # Keys typed into a field stay in the field.
    page.keyboard.press("j")
    expect(pane).to_have_attribute("data-approval-id", str(second.pk))
    page.locator("#approve-note").fill("")
    page.locator("#approve-note").press("j")
    expect(page.locator("#approve-note")).to_have_value("j")
    expect(pane).to_have_attribute("data-approval-id", str(second.pk))
    page.keyboard.press("Escape")

    # r: the reason, then Enter.
    page.keyboard.press("r")
    reason = pane.locator("[data-approval-reject-input]")
    expect(reason).to_be_focused()
    page.keyboard.type("already refunded")
    page.keyboard.press("Enter")
    expect(pane.locator("[data-approval-outcome]")).to_contain_text("Rejected")
    assert ApprovalRequest.objects.get(pk=second.pk).decision_reason == "already refunded"
    expect(rows).to_have_count(1)

    # e: the arguments, edited, then Ctrl+Enter.
    page.keyboard.press("j")
    expect(pane).to_have_attribute("data-approval-id", str(third.pk))
    page.keyboard.press("e")
    arguments = pane.locator("[data-approval-edit-input]")
    expect(arguments).to_be_focused()
    arguments.fill('{"label": "refund-3-halved"}')
    page.keyboard.press("Control+Enter")
    expect(pane.locator("[data-approval-outcome]")).to_contain_text("Approved with edits")
    third.refresh_from_db()
    assert (third.status, third.edited_arguments) == (ApprovalStatus.APPROVED_WITH_EDITS, {"label": "refund-3-halved"})
    expect(rows).to_have_count(0)

    # ? shows the keys; Esc closes the help.
    page.keyboard.press("?")
    expect(page.locator("[data-keys-help]")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("[data-keys-help]")).to_be_hidden()


def test_a_new_request_arrives_with_a_toast_and_a_decided_one_leaves(page, make_agent, approvers, password) -> None:  # noqa: F811
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    elsewhere = ask(agent)
    sign_in(page, "ana", password)
    page.goto("/approvals/")
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
    rows = page.locator("[data-approval-row]")
    expect(rows).to_have_count(1)

    created, _ = approval_request_create(
        actor=SYSTEM, agent=agent, action="test.effect", arguments={"label": "new"}, risk="high"
    )  # notifies L1, ana's level: a toast
    expect(rows).to_have_count(2)
    expect(page.locator("#toasts")).to_contain_text("Test-Approval wants to run test.effect")
    expect(page.locator("#toasts a")).to_have_attribute("href", f"/approvals/?selected={created.pk}")

    approval_decide(actor=SYSTEM, request=elsewhere, approve=False, reason="decided elsewhere")
    expect(rows).to_have_count(1)
    expect(page.locator(f'[data-approval-row="{created.pk}"]')).to_be_visible()


def test_the_reliability_plot_draws_under_the_strict_csp(page, make_agent, approvers, password) -> None:  # noqa: F811
    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    for confidence, approve in ((0.95, True), (0.9, True), (0.55, False), (0.75, True)):
        request = ask(agent, confidence=confidence)
        approval_decide(actor=SYSTEM, request=request, approve=approve, reason="" if approve else "no")
    sign_in(page, "ana", password)
    page.goto(f"/approvals/agents/{agent.pk}/calibration/")
    plot = page.locator("#reliability-plot")
    expect(plot.locator(".main-svg").first).to_be_visible()
    expect(plot.locator(".scatterlayer .trace")).to_have_count(2)  # the diagonal and the agent's line
    expect(plot.locator(".barlayer .point")).to_have_count(10)
    # Plotly's own rules are in place (layers stacked, not one under the other).
    assert (
        page.evaluate("getComputedStyle(document.querySelector('#reliability-plot .main-svg')).position") == "absolute"
    )


def test_countdowns_turn_amber_then_red(page, make_agent, approvers, password) -> None:  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    agent = make_agent("test-approval", tier=Tier.ASSISTED)
    calm, close, late = (ask(agent, arguments={"label": name}) for name in ("calm", "close", "late"))
    now = timezone.now()
    ApprovalRequest.objects.filter(pk=calm.pk).update(deadline=now + timedelta(minutes=10))
    ApprovalRequest.objects.filter(pk=close.pk).update(deadline=now + timedelta(seconds=40))  # under a minute
    ApprovalRequest.objects.filter(pk=late.pk).update(deadline=now - timedelta(seconds=5))  # no sweeper here
    sign_in(page, "ana", password)
    page.goto("/approvals/")

    def clock(request: ApprovalRequest):  # noqa: ANN202
        return page.locator(f'[data-approval-row="{request.pk}"] [data-countdown]')

    expect(clock(calm)).to_have_text(re.compile(r"^(10:00|9:\d\d)$"))
    expect(clock(calm)).to_have_class("countdown")
    expect(clock(close)).to_have_text(re.compile(r"^0:[0-4]\d$"))
    expect(clock(close)).to_have_class("countdown is-amber")
    expect(clock(late)).to_have_text(re.compile(r"^\u22120:\d\d$"))  # "−0:05": overdue, in a narrow row
    expect(clock(late)).to_have_class("countdown is-red")
    expect(clock(late)).to_have_attribute("aria-label", re.compile(r"^overdue by 0:\d\d$"))
    # Soonest deadline first: the overdue one on top.
    expect(page.locator("[data-approval-row]").first).to_have_attribute("data-approval-row", str(late.pk))
    page.locator(f'[data-approval-row="{late.pk}"]').click()
    expect(page.locator("#approval-pane [data-countdown]")).to_have_text(re.compile(r"^overdue 0:\d\d$"))
