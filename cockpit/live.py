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
import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from cockpit.lib.validation import is_id

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


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` is not the name of a topic (``org`` or ``<kind>.<id>`` of a registered
    kind), or ``None``. A well-named topic may still be refused by ``can_subscribe``."""
    if topic == ORG_TOPIC:
        return None
    kind, _, ident = topic.partition(".")
    if kind not in _topic_checks or not is_id(ident):
        return f"{topic[:100]!r} is not a topic: topics are 'org' or <kind>.<id>, e.g. 'team.3'."
    return None


def can_subscribe(user: User | AnonymousUser, topic: str) -> bool:
    """The one permission gate between a browser and a group (runs in ``connect``/subscribe)."""
    from cockpit import access

    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if topic == ORG_TOPIC:
        return access.for_user(user).is_org_wide
    if topic_problem(topic) is not None:
        return False
    kind, _, ident = topic.partition(".")
    return _topic_checks[kind](user, ident)


def publish(
    event: dict[str, Any],
    *,
    team_id: int | None,
    topics: Iterable[str] = (),
    coalesce: str | None = None,
    team_wide: bool = True,
) -> None:
    """Send ``event`` once the surrounding transaction commits (at once outside one).

    ``team_id`` routes it to the team's group (``None``: the organisation group) unless
    ``team_wide`` is false; ``topics`` adds object groups such as ``run.42``. Events with the
    same ``coalesce`` key replace one another while waiting to be sent (a busy run's steps
    become one event, not fifty).
    """
    if "type" not in event:
        raise ValueError("a live event needs a 'type'")
    team_group = team_topic(team_id) if team_id is not None else ORG_TOPIC
    groups = [*([team_group] if team_wide else []), *topics]
    transaction.on_commit(lambda: _sender.send(groups, event, coalesce), robust=True)


Queued = tuple[str | None, list[str], dict[str, Any]]


class _Sender:
    """Sends events from a private event-loop thread, one per process, in the order published.

    ``send`` only queues the event (microseconds, so a busy worker is not slowed down); the
    thread sends one event after the other over channel-layer connections it keeps (a channel
    layer holds connections per event loop: ``async_to_sync`` would open a new one per event).
    The thread is re-created after a fork (Celery's prefork pool). If the broker is down or too
    slow, events are dropped with a warning: state is in the database, and pages re-fetch
    everything when they reconnect.
    """

    MAX_PENDING = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Queued] | None = None
        self._latest: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self._pid = 0
        self._pending = 0
        self._down_until = 0.0
        self.dropped = 0

    def _get_loop(
        self,
    ) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue[Queued]]:
        with self._lock:
            if self._loop is None or self._queue is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                queue: asyncio.Queue[Queued] = asyncio.Queue()
                threading.Thread(target=self._run, args=(loop, queue), name="live-bus", daemon=True).start()
                self._loop, self._queue, self._pid, self._pending = loop, queue, os.getpid(), 0
                self._latest = {}
            return self._loop, self._queue

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Queued],
    ) -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._drain(queue))

    async def _drain(self, queue: asyncio.Queue[Queued]) -> None:
        while True:
            key, groups, event = await queue.get()
            if key is not None:
                with self._lock:
                    groups, event = self._latest.pop(key, (groups, event))
            try:
                if time.monotonic() < self._down_until:
                    self.dropped += 1
                    continue
                await asyncio.wait_for(self._send(groups, event), SEND_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - any failure of the bus is survivable
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
            finally:
                with self._lock:
                    self._pending -= 1

    async def _send(self, groups: list[str], event: dict[str, Any]) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        message = {"type": "live.event", "event": event}
        await asyncio.gather(*(layer.group_send(group, message) for group in groups))

    def send(self, groups: list[str], event: dict[str, Any], coalesce: str | None = None) -> None:
        loop, queue = self._get_loop()
        with self._lock:
            if coalesce is not None and coalesce in self._latest:
                self._latest[coalesce] = (groups, event)  # the queued one will carry this instead
                return
            if self._pending >= self.MAX_PENDING:
                self.dropped += 1
                return
            self._pending += 1
            if coalesce is not None:
                self._latest[coalesce] = (groups, event)
        loop.call_soon_threadsafe(queue.put_nowait, (coalesce, groups, event))

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every queued event has been sent (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending > 0 and self._pid == os.getpid():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True


_sender = _Sender()
# A short-lived process (a management command) delivers its events before it exits.
atexit.register(_sender.flush)


def flush(timeout: float = 2.0) -> bool:
    """Wait for this process's queued events to be sent (tests, benchmarks, commands)."""
    return _sender.flush(timeout)


# --- Long-polls --------------------------------------------------------------------------------

# A long-poll reads its object again this often even without an event (events are hints).
LONG_POLL_RECHECK_SECONDS = 5.0


def _read_and_release[T](read: Callable[[], T]) -> T:
    """One read, then the thread's connection goes back to the pool (not inside a transaction:
    tests run in one)."""
    try:
        return read()
    finally:
        if not connection.in_atomic_block:
            connection.close()


async def hold_until[T](
    topic: str,
    read: Callable[[], T],
    done: Callable[[T, T], bool],
    *,
    seconds: float,
    recheck: float = LONG_POLL_RECHECK_SECONDS,
) -> T:
    """Hold a long-poll for up to ``seconds``: the first result of ``read()`` (a sync,
    permission-checked read) for which ``done(first, latest)`` is true, else the last one.

    It subscribes to ``topic`` before the first read (no change slips between) and reads again
    whenever the topic's live event arrives, and every ``recheck`` seconds in case one was lost.
    While it waits it holds no database connection (each read gives its connection back), so
    hundreds of waiting clients need none; if the broker fails it goes on re-reading without it.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(topic, channel)
    receiving = asyncio.ensure_future(layer.receive(channel))
    loop = asyncio.get_running_loop()
    try:
        first = latest = await sync_to_async(_read_and_release)(read)
        deadline = loop.time() + seconds
        while not done(first, latest) and (remaining := deadline - loop.time()) > 0:
            # asyncio.wait, not wait_for: a cancelled receive would unsubscribe the channel.
            finished, _ = await asyncio.wait({receiving}, timeout=min(remaining, recheck))
            if finished:
                failed = receiving.exception() is not None
                receiving = loop.create_future() if failed else asyncio.ensure_future(layer.receive(channel))
            latest = await sync_to_async(_read_and_release)(read)
        return latest
    finally:
        receiving.cancel()  # (the layer drops the channel when its receive is cancelled)
        with contextlib.suppress(asyncio.CancelledError):
            await receiving
        await layer.group_discard(topic, channel)
