"""Connect to the live bus (``/ws/live/``) as a signed-in browser would, in-process, over the
real channel layer."""

from __future__ import annotations

from typing import Any

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client


def session_cookie(user: Any) -> str:
    """A session for ``user`` (call from sync code)."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


async def connect(
    cookie: str | None, topics: list[str], *, origin: str = "http://testserver"
) -> tuple[WebsocketCommunicator, bool, Any]:
    from cockpit.asgi import application

    headers = [(b"origin", origin.encode()), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    communicator = WebsocketCommunicator(application, f"/ws/live/?topics={','.join(topics)}", headers=headers)
    connected, detail = await communicator.connect(timeout=5)
    return communicator, connected, detail
