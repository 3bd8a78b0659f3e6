"""The live bus: events go out after commit, only to connections allowed to see them."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from cockpit import live
from cockpit.roles import Role
from cockpit.tasks import live_probe
from tests.support.live import connect, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]
NOT_A_TOPIC = "is not a topic: topics are 'org' or <kind>.<id>, e.g. 'team.3'."


@pytest.fixture
def viewer_cookie(make_user, team) -> str:
    return session_cookie(make_user(Role.VIEWER, team))


@pytest.fixture
def outsider_cookie(make_user, other_team) -> str:
    return session_cookie(make_user(Role.ADMIN, other_team))


async def test_anonymous_connections_are_closed() -> None:
    communicator, connected, code = await connect(None, ["team.1"])
    assert not connected and code == 4401


async def test_foreign_origin_is_refused(viewer_cookie, team) -> None:
    communicator, connected, _ = await connect(viewer_cookie, [f"team.{team.pk}"], origin="https://evil.example")
    assert not connected


async def test_only_permitted_topics_are_joined(viewer_cookie, team, other_team) -> None:
    wanted = [f"team.{team.pk}", f"team.{other_team.pk}", "org", "run.1", "team.x", "nonsense"]
    communicator, connected, _ = await connect(viewer_cookie, wanted)
    assert connected
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "error",
        "detail": "Some topics are not topics: see 'errors'.",
        "errors": [
            {"field": f"topics.{i}", "message": f"{t!r} {NOT_A_TOPIC}"} for i, t in ((4, "team.x"), (5, "nonsense"))
        ],
    }
    reply = await communicator.receive_json_from(timeout=5)
    assert reply == {
        "type": "subscribed",
        "topics": [f"team.{team.pk}"],
        "denied": [f"team.{other_team.pk}", "org", "run.1"],
    }
    await communicator.disconnect()


async def test_subscribe_later_passes_the_same_check(viewer_cookie, team, other_team) -> None:
    communicator, _, _ = await connect(viewer_cookie, [])
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to({"action": "subscribe", "topics": [f"team.{other_team.pk}", f"team.{team.pk}"]})
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "subscribed",
        "topics": [f"team.{team.pk}"],
        "denied": [f"team.{other_team.pk}"],
    }
    await communicator.disconnect()


async def test_published_event_reaches_the_team_and_no_one_else(
    viewer_cookie, outsider_cookie, team, other_team
) -> None:
    mine, _, _ = await connect(viewer_cookie, [f"team.{team.pk}"])
    theirs, _, _ = await connect(outsider_cookie, [f"team.{other_team.pk}", f"team.{team.pk}"])
    await mine.receive_json_from(timeout=5)
    assert (await theirs.receive_json_from(timeout=5))["denied"] == [f"team.{team.pk}"]

    await sync_to_async(live.publish)({"type": "apikey.changed", "id": 7}, team_id=team.pk)

    assert await mine.receive_json_from(timeout=5) == {"type": "apikey.changed", "id": 7}
    assert await theirs.receive_nothing(timeout=0.5)
    await mine.disconnect()
    await theirs.disconnect()


async def test_nothing_is_announced_before_commit_or_after_rollback(viewer_cookie, team) -> None:
    communicator, _, _ = await connect(viewer_cookie, [f"team.{team.pk}"])
    await communicator.receive_json_from(timeout=5)

    def rolled_back() -> None:
        try:
            with transaction.atomic():
                live.publish({"type": "apikey.changed", "id": 1}, team_id=team.pk)
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass

    def committed() -> None:
        with transaction.atomic():
            live.publish({"type": "apikey.changed", "id": 2}, team_id=team.pk)
            time.sleep(0.3)  # still inside: nothing may have been sent yet

    await sync_to_async(rolled_back)()
    assert await communicator.receive_nothing(timeout=0.3)
    task = asyncio.ensure_future(sync_to_async(committed)())
    assert await communicator.receive_nothing(timeout=0.2)
    await task
    assert await communicator.receive_json_from(timeout=5) == {"type": "apikey.changed", "id": 2}
    await communicator.disconnect()


async def test_event_from_a_worker_process_reaches_the_browser(
    worker_process, eager_off, viewer_cookie, outsider_cookie, team, other_team
) -> None:
    """The cross-process path: a Celery worker process publishes through the real channel layer
    to a websocket connected to the ASGI app; a connection without permission gets nothing."""
    mine, _, _ = await connect(viewer_cookie, [f"team.{team.pk}"])
    theirs, _, _ = await connect(outsider_cookie, [f"team.{team.pk}", f"team.{other_team.pk}"])
    await mine.receive_json_from(timeout=5)
    await theirs.receive_json_from(timeout=5)

    probe = uuid.uuid4().hex
    await sync_to_async(live_probe.delay)(probe=probe, sent_at=time.time(), team_id=team.pk)

    event = await mine.receive_json_from(timeout=20)
    assert event["type"] == "system.probe" and event["probe"] == probe
    assert event["worker_at"] >= event["sent_at"]
    assert await theirs.receive_nothing(timeout=1)
    await mine.disconnect()
    await theirs.disconnect()
