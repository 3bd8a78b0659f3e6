"""The browser's end of the live bus (``/ws/live/``).

A signed-in browser connects with the topics its page needs (``?topics=team.3,run.42``) and may
add more later (``{"action": "subscribe", "topics": [...]}``). Every topic passes
``live.can_subscribe`` before the connection joins its group; refused topics are reported back,
never joined. Events are forwarded as they come: ``{"type": "run.changed", "run": 42}``.

What is not a topic name (``team.²``) or not JSON is answered with an error frame in the API's
error shape, ``{"type": "error", "detail": …, "errors": [{"field": "topics.0", "message": …}]}``,
and the connection stays open.
"""

from __future__ import annotations

import json
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
        query = parse_qs(self.scope.get("query_string", b"").decode(errors="replace"))
        requested = [t for raw in query.get("topics", []) for t in raw.split(",") if t]
        await self.accept()
        allowed, denied = await self._check(requested)
        for topic in allowed:
            await self.channel_layer.group_add(topic, self.channel_name)
            self.topics.add(topic)
        await self.send_json({"type": "subscribed", "topics": sorted(self.topics), "denied": denied})

    async def disconnect(self, code: int) -> None:
        for topic in getattr(self, "topics", ()):
            await self.channel_layer.group_discard(topic, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        try:
            content = json.loads(text_data if text_data is not None else (bytes_data or b""))
        except (ValueError, RecursionError):
            await self._error('A frame is a JSON object, e.g. {"action": "ping"}.', "", "This is not JSON.")
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("action") == "ping":
            await self.send_json({"type": "pong"})
        elif content.get("action") == "subscribe" and isinstance(content.get("topics"), list):
            allowed, denied = await self._check(content["topics"])
            for topic in allowed:
                if topic not in self.topics:
                    await self.channel_layer.group_add(topic, self.channel_name)
                    self.topics.add(topic)
            await self.send_json({"type": "subscribed", "topics": sorted(allowed), "denied": denied})

    async def live_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    async def _check(self, topics: list[Any]) -> tuple[list[str], list[str]]:
        """Well-named topics → (allowed, denied); the others are answered with an error frame."""
        errors = []
        named = []
        for index, topic in enumerate(topics):
            problem = live.topic_problem(topic) if isinstance(topic, str) else "A topic is a string."
            if problem:
                errors.append({"field": f"topics.{index}", "message": problem})
            else:
                named.append(topic)
        if errors:
            await self.send_json(
                {"type": "error", "detail": "Some topics are not topics: see 'errors'.", "errors": errors}
            )
        wanted = list(dict.fromkeys(named))[: MAX_TOPICS - len(self.topics)]
        return await database_sync_to_async(_check_topics)(self.scope["user"], wanted)

    async def _error(self, detail: str, field: str, message: str) -> None:
        await self.send_json({"type": "error", "detail": detail, "errors": [{"field": field, "message": message}]})


def _check_topics(user: Any, topics: list[str]) -> tuple[list[str], list[str]]:
    access.forget(user)  # roles may have changed since the page loaded
    allowed = [t for t in topics if live.can_subscribe(user, t)]
    denied = [t for t in topics if t not in allowed]
    return allowed, denied
