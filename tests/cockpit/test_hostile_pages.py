"""Hostile filter values on the list pages, and hostile topics on the live bus: a 400 with the
form's error shown (never a 500), an error frame on a connection that stays open."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cockpit.roles import Role
from tests.support.live import connect, session_cookie

BAD_OFFSETS = ["2026-01-01T00:00:00-23:59", "2026-01-01T00:00:00+20:00"]
PAGES = ["runs", "traces", "audit"]


@pytest.fixture
def admin(client, admin_user):  # noqa: ANN001, ANN201
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("value", BAD_OFFSETS)
def test_offsets_postgresql_refuses_are_a_form_error(admin, page, field, value) -> None:
    response = admin.get(reverse(page), {field: value})
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert "UTC offset" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("field", ["team", "agent", "actor", "q", "model", "after", "before", "action"])
def test_nul_bytes_in_filters_are_a_form_error(admin, page, field) -> None:
    response = admin.get(reverse(page), {field: "a\x00b"})
    form = response.context["form"]
    if field not in form.fields:
        assert response.status_code == 200
        return
    assert response.status_code == 400 and field in form.errors


@pytest.mark.django_db
@pytest.mark.parametrize("above", ["²", "9" * 40, "-1", "a\x00"])
def test_the_arrivals_fragment_takes_any_above(admin, above) -> None:
    response = admin.get(reverse("traces"), {"above": above}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="trace-arrivals")
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("page", PAGES)
def test_real_offsets_still_filter(admin, page) -> None:
    response = admin.get(reverse(page), {"since": "2026-01-01T00:00:00+15:59"})
    assert response.status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("topic", ["team.²", "run.٣", "team." + "9" * 40, "team.a\x00", "team.-1"])
async def test_a_hostile_topic_gets_an_error_frame_and_the_connection_stays(make_user, team, topic) -> None:
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(lambda: session_cookie(make_user(Role.VIEWER, team)))()
    communicator, connected, _ = await connect(cookie, [])
    assert connected
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"action": "subscribe", "topics": [topic, f"team.{team.pk}"]})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error" and reply["errors"][0]["field"] == "topics.0", reply
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "subscribed",
        "topics": [f"team.{team.pk}"],
        "denied": [],
    }
    await communicator.send_json_to({"action": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_hostile_topic_on_connect_is_answered_too(make_user, team) -> None:
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(lambda: session_cookie(make_user(Role.VIEWER, team)))()
    communicator, connected, _ = await connect(cookie, ["team.²", f"team.{team.pk}"])
    assert connected
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "error" and reply["errors"][0]["field"] == "topics.0", reply
    subscribed = await communicator.receive_json_from(timeout=5)
    assert subscribed["topics"] == [f"team.{team.pk}"]
    await communicator.send_json_to({"action": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_frame_that_is_not_json_gets_an_error_frame(make_user, team) -> None:
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(lambda: session_cookie(make_user(Role.VIEWER, team)))()
    communicator, _, _ = await connect(cookie, [])
    await communicator.receive_json_from(timeout=5)
    await communicator.send_to(text_data="{not json")
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.send_json_to({"action": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}
    await communicator.disconnect()
