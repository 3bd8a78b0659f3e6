"""Live bus latency: a Celery worker process publishes, a websocket client connected to daphne
receives. Measures worker → websocket (publish to receipt) and request → websocket (task sent
to the broker until the event reaches the browser)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from tests.bench.util import summary_ms

TITLE = "Live bus: worker process → channel layer → daphne → websocket"
EVENTS = 300


def run() -> list[str]:
    import websockets
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.test import Client

    from cockpit.celery import app
    from cockpit.models import Team
    from cockpit.roles import Role
    from cockpit.tasks import live_probe
    from tests.support import processes

    app.conf.task_always_eager = False
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    from cockpit.audit import Actor
    from cockpit.services import membership_grant

    membership_grant(actor=Actor.system("bench"), user=user, team=team, role=Role.VIEWER)
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    worker = processes.start_worker(concurrency=2)
    web, url = processes.start_web()
    try:
        host = url.removeprefix("http://")
        worker_to_ws: list[float] = []
        end_to_end: list[float] = []

        async def measure() -> None:
            async with websockets.connect(
                f"ws://{host}/ws/live/?topics=team.{team.pk}",
                additional_headers={"Cookie": cookie, "Origin": url},
            ) as ws:
                assert json.loads(await ws.recv())["topics"] == [f"team.{team.pk}"]
                for i in range(EVENTS + 20):
                    probe = uuid.uuid4().hex
                    await sync_to_async(live_probe.delay)(probe=probe, sent_at=time.time(), team_id=team.pk)
                    while True:
                        event = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                        if event.get("probe") == probe:
                            break
                    received = time.time()
                    if i >= 20:  # warm-up: connections, imports, first queries
                        worker_to_ws.append(received - event["worker_at"])
                        end_to_end.append(received - event["sent_at"])

        asyncio.run(measure())
    finally:
        web.stop()
        worker.stop()
    return [
        f"worker → websocket   {summary_ms(worker_to_ws)}",
        f"                     (n={len(worker_to_ws)}; target p95 < 100 ms)",
        f"enqueue → websocket  {summary_ms(end_to_end)}",
        "                     (adds the broker hop and the worker picking the task up)",
    ]
