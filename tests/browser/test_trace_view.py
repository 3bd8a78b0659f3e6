"""An incident reviewer opens a 2,000-span trace: the page stays light (only the rows in view are
in the page), a folded run of 37 tool calls opens, an LLM call shows its conversation, the
approval shows who decided and after how long, the narrative tells the story — and spans that
arrive while the trace is open appear without a reload."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from cockpit.roles import Role
from tests.browser.conftest import sign_in
from tests.traces import explorer_spans
from traces import store
from traces.models import Span

pytestmark = pytest.mark.django_db(transaction=True)


def test_reviewer_reads_a_2000_span_trace(page, make_user, team, password) -> None:  # noqa: ANN001
    make_user(Role.VIEWER, team, username="rita")
    trace = explorer_spans.agent_trace(team, spans=2000)
    assert trace.span_count >= 2000

    sign_in(page, "rita", password)
    page.goto(f"/traces/{trace.pk}/")
    tree = page.locator("[data-tv-scroll]")
    expect(tree.locator(".tv-row").first).to_contain_text("invoke_agent support-desk")
    expect(page.locator("[data-tv-count]")).to_contain_text(f"{trace.span_count:,} spans")
    # Virtualised: a few dozen rows in the page, not thousands.
    assert tree.locator(".tv-row").count() < 120

    # Repeats are folded: the first turn's 37 lookups are one row, which opens.
    group = tree.locator(".tv-row.is-group").filter(has_text="× 37").first
    expect(group).to_contain_text("execute_tool lookup")
    expect(group).to_contain_text("1 failed")
    lookups = tree.locator(".tv-row:not(.is-group)").filter(has_text="execute_tool lookup")
    expect(lookups).to_have_count(0)
    group.locator("[data-toggle]").click()
    expect(lookups.first).to_be_visible()
    assert lookups.count() >= 15
    expect(group).to_have_attribute("aria-expanded", "true")

    # An LLM call shows its prompt and completion as a conversation.
    tree.locator(".tv-row").filter(has_text="chat gpt-4o").first.click()
    detail = page.locator("#span-detail")
    expect(detail.locator(".msg-user")).to_contain_text("Customer question 0: where is order #1000?")
    expect(detail.locator(".msg-assistant")).to_contain_text("left the warehouse yesterday")
    expect(detail).to_contain_text("$0.0021")
    assert re.search(r"#span-[0-9a-f]{16}$", page.url)
    # The keyboard moves through the rows: down from the call is the folded run.
    page.keyboard.press("ArrowDown")
    expect(tree.locator(".tv-row.is-selected")).to_contain_text("× 37")
    expect(detail).to_contain_text("37 similar spans in a row")

    # A link to a span deep in a folded run opens the run and selects the span.
    deep = Span.objects.filter(trace_id=trace.trace_id, name="execute_tool lookup").order_by("start_time")[200]
    page.goto(f"/traces/{trace.pk}/#span-{deep.span_id}")
    expect(detail.locator("[data-span-detail]")).to_have_attribute("data-span-detail", deep.span_id)
    expect(tree.locator(".tv-row.is-selected")).to_be_visible()

    # Approvals sit inline on the timeline with who and how long.
    page.fill("[data-tv-find]", "approval")
    page.press("[data-tv-find]", "Enter")
    expect(tree.locator(".tv-row.is-selected")).to_contain_text("approved by Dana after 4 min")
    expect(detail).to_contain_text("photo confirms the damage")

    # The narrative, for people who do not read spans.
    page.get_by_role("tab", name="Narrative").click()
    expect(page.locator("#tv-panel-timeline")).to_be_hidden()
    steps = page.locator("#trace-narrative .narrative li[data-span-id]")
    expect(steps.first).to_be_visible()
    # A step of the story opens its span on the timeline.
    step = steps.nth(2)
    span_id = step.get_attribute("data-span-id")
    step.click()
    expect(page.locator("#tv-panel-timeline")).to_be_visible()
    expect(page.locator("#span-detail [data-span-detail]")).to_have_attribute("data-span-detail", span_id)
    assert page.url.endswith(f"#span-{span_id}")

    # Spans arriving for the open trace show up without a reload.
    page.get_by_role("tab", name="Timeline").click()
    page.evaluate("window.__marker = 'same page'")
    late = [
        explorer_spans.tool(trace.trace_id, trace.root_span_id, 900_000 + n, "late.lookup", t0=trace.started_at)
        for n in range(3)
    ]
    store.write(team, late, now=trace.started_at)
    expect(page.locator("[data-tv-count]")).to_contain_text(f"{trace.span_count + 3:,} spans")
    expect(page.locator("#trace-header")).to_contain_text(f"{trace.span_count + 3:,}")
    assert page.evaluate("window.__marker") == "same page"


def test_trace_list_announces_new_traces_without_reshuffling(page, make_user, team, password) -> None:  # noqa: ANN001
    make_user(Role.VIEWER, team, username="rick")
    first = explorer_spans.agent_trace(team, spans=60)
    sign_in(page, "rick", password)
    page.goto("/traces/")
    rows = page.locator("#trace-rows tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(first.title)

    explorer_spans.agent_trace(team, spans=60)
    bar = page.locator(".trace-arrivals-bar")
    expect(bar).to_contain_text("1 new trace")
    expect(rows).to_have_count(1)  # the reader's rows stay where they are
    bar.click()
    expect(rows).to_have_count(2)
