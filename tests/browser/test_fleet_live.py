"""A person signs in, sees the fleet overview, and watches it change without reloading."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from cockpit.audit import Actor
from cockpit.roles import Role
from cockpit.services import api_key_create
from tests.browser.conftest import sign_in
from tests.support import processes

pytestmark = pytest.mark.django_db(transaction=True)


def test_counter_changes_live_when_an_event_is_published_elsewhere(page, make_user, team, password) -> None:
    make_user(Role.ADMIN, team, username="olga")
    sign_in(page, "olga", password)

    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
    counter = page.locator("[data-flash-key=api_keys]")
    expect(counter).to_have_text("0")

    # Another process (this test, through the service) creates a key: the page hears of it on
    # the live bus and re-fetches the counters, with no reload.
    page.evaluate("window.__marker = 'same page'")
    api_key_create(actor=Actor.system("tests"), team=team, name="collector", scopes=["ingest"])

    expect(counter).to_have_text("1")
    assert page.evaluate("window.__marker") == "same page"


def test_page_shows_reconnecting_and_catches_up_after_a_web_restart(browser, make_user, team, password) -> None:
    """The web process restarts: the indicator says "Reconnecting…"; an event published
    meanwhile is missed, yet once the page reconnects every live fragment is re-fetched and
    the page is right again."""
    make_user(Role.ADMIN, team, username="vic")
    web, url = processes.start_web()
    port = int(url.rsplit(":", 1)[1])
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=url)
    try:
        page = context.new_page()
        sign_in(page, "vic", password)
        indicator = page.locator("[data-live-indicator]")
        counter = page.locator("[data-flash-key=api_keys]")
        expect(indicator).to_have_attribute("data-state", "live")

        web.stop()
        expect(indicator).to_have_attribute("data-state", "reconnecting")
        expect(indicator).to_have_text("Reconnecting…")
        api_key_create(actor=Actor.system("tests"), team=team, name="while-away", scopes=["read"])
        expect(counter).to_have_text("0")  # nobody was there to hear it

        web, _ = processes.start_web(port)
        expect(indicator).to_have_attribute("data-state", "live", timeout=30_000)
        expect(counter).to_have_text("1")
    finally:
        context.close()
        web.stop()
