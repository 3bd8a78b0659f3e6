"""The browser's end of the live bus (``/ws/live/``).

A signed-in browser connects with the topics its page needs (``?topics=team.3,run.42``) and may
add more later (``{"action": "subscribe", "topics": [...]}``). Every topic passes
``live.can_subscribe`` before the connection joins its group; refused topics are reported back,
never joined. Events are forwarded as they come: ``{"type": "run.changed", "run": 42}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from cockpit import access, live

MAX_TOPICS = 200


class LiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=4401)
            return
        self.topics: set[str] = set()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        requested = [t for raw in query.get("topics", []) for t in raw.split(",") if t]
        allowed, denied = await self._check(requested)
        for topic in allowed:
            await self.channel_layer.group_add(topic, self.channel_name)
            self.topics.add(topic)
        await self.accept()
        await self.send_json({"type": "subscribed", "topics": sorted(self.topics), "denied": denied})

    async def disconnect(self, code: int) -> None:
        for topic in getattr(self, "topics", ()):
            await self.channel_layer.group_discard(topic, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("action") == "ping":
            await self.send_json({"type": "pong"})
        elif content.get("action") == "subscribe" and isinstance(content.get("topics"), list):
            allowed, denied = await self._check([t for t in content["topics"] if isinstance(t, str)])
            for topic in allowed:
                if topic not in self.topics:
                    await self.channel_layer.group_add(topic, self.channel_name)
                    self.topics.add(topic)
            await self.send_json({"type": "subscribed", "topics": sorted(allowed), "denied": denied})

    async def live_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    async def _check(self, topics: list[str]) -> tuple[list[str], list[str]]:
        wanted = list(dict.fromkeys(topics))[: MAX_TOPICS - len(self.topics)]
        return await database_sync_to_async(_check_topics)(self.scope["user"], wanted)


def _check_topics(user: Any, topics: list[str]) -> tuple[list[str], list[str]]:
    access.forget(user)  # roles may have changed since the page loaded
    allowed = [t for t in topics if live.can_subscribe(user, t)]
    denied = [t for t in topics if t not in allowed]
    return allowed, denied
