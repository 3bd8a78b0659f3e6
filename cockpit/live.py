"""The live bus: services publish small typed events; browsers re-fetch what changed.

An event is a small dict with a ``type`` and ids only, never data the receiver may not see:
``{"type": "run.changed", "run": 42}``. ``publish`` sends it to channel-layer groups *after the
current transaction commits* (nothing is announced that could still roll back). The websocket
consumer (``cockpit.consumers.LiveConsumer``) joins a browser to a group only after the group's
permission check passes; the browser then re-fetches the affected fragment through the normal,
permission-checked view.

Groups ("topics") are named ``<kind>.<id>``:

* ``team.<id>`` — every event about the team's objects (the default for ``publish``);
* ``org`` — events that belong to no team (organisation-wide users only);
* anything an app registers with ``register_topic`` (e.g. ``run.<id>`` for one run's page).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from channels.layers import get_channel_layer
from django.db import transaction

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)

ORG_TOPIC = "org"
SEND_TIMEOUT_SECONDS = 1.0
# After a failed send, events are dropped (and counted) for this long instead of each waiting
# for the timeout: an unreachable broker must not slow down every write.
BACKOFF_SECONDS = 5.0

TopicCheck = Callable[["User | AnonymousUser", str], bool]
_topic_checks: dict[str, TopicCheck] = {}


def team_topic(team_id: int) -> str:
    return f"team.{team_id}"


def register_topic(kind: str, check: TopicCheck) -> None:
    """Declare the topic kind ``<kind>.<id>``; ``check(user, id)`` says who may subscribe."""
    if not kind.isidentifier():
        raise ValueError(f"topic kind {kind!r} must be an identifier")
    _topic_checks[kind] = check


def can_subscribe(user: User | AnonymousUser, topic: str) -> bool:
    """The one permission gate between a browser and a group (runs in ``connect``/subscribe)."""
    from cockpit import access

    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if topic == ORG_TOPIC:
        return access.for_user(user).is_org_wide
    kind, _, ident = topic.partition(".")
    check = _topic_checks.get(kind)
    if check is None or not ident or len(topic) > 90:
        return False
    return check(user, ident)


def publish(event: dict[str, Any], *, team_id: int | None, topics: Iterable[str] = ()) -> None:
    """Send ``event`` once the surrounding transaction commits (at once outside one).

    ``team_id`` routes it to the team's group (``None``: the organisation group); ``topics``
    adds object groups such as ``run.42``.
    """
    if "type" not in event:
        raise ValueError("a live event needs a 'type'")
    groups = [team_topic(team_id) if team_id is not None else ORG_TOPIC, *topics]
    transaction.on_commit(lambda: _sender.send(groups, event), robust=True)


class _Sender:
    """Sends from a private event loop thread, one per process.

    A channel layer keeps connections per event loop, so sending from one long-lived loop
    reuses them (``async_to_sync`` would open a fresh loop and connection per event). The
    thread is re-created after a fork (Celery's prefork pool).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._down_until = 0.0
        self.dropped = 0

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="live-bus", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    async def _send(self, groups: list[str], event: dict[str, Any]) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        message = {"type": "live.event", "event": event}
        await asyncio.gather(*(layer.group_send(group, message) for group in groups))

    def send(self, groups: list[str], event: dict[str, Any]) -> None:
        """Blocks until sent (a millisecond or two) so events leave in order. A broker outage
        costs a logged warning and dropped events (pages catch up when they reconnect), never
        the write that was just committed."""
        if time.monotonic() < self._down_until:
            self.dropped += 1
            return
        future = asyncio.run_coroutine_threadsafe(self._send(groups, event), self._get_loop())
        try:
            future.result(timeout=SEND_TIMEOUT_SECONDS)
        except Exception as exc:
            future.cancel()
            self.dropped += 1
            self._down_until = time.monotonic() + BACKOFF_SECONDS
            logger.warning(
                "live bus unreachable (%s: %s); dropping events for %.0f s (%d dropped so far). "
                "Nothing is lost: state is in the database and pages re-fetch on reconnect.",
                type(exc).__name__,
                exc,
                BACKOFF_SECONDS,
                self.dropped,
            )


_sender = _Sender()
