"""Signed webhook delivery, shared by every app that notifies a receiver over HTTP.

Requests carry ``X-Cockpit-Timestamp`` (Unix seconds) and, when a secret is set,
``X-Cockpit-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``. A receiver
recomputes the HMAC with the shared secret over the raw body, compares in constant time, and
rejects timestamps older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

TIMEOUT_SECONDS = 10


class DeliveryError(Exception):
    """Worth trying again later (the receiver was down, answered 5xx or 429, timed out)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_seconds: int = 300) -> bool:
    """What a receiver does (and tests check): the signature matches and is fresh."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    return age <= max_age_seconds and hmac.compare_digest(sign(secret, timestamp, body), signature)


def post(url: str, secret: str, payload: dict[str, Any], *, timeout: float = TIMEOUT_SECONDS) -> None:
    """POST ``payload`` as JSON, signed with ``secret`` (unsigned when it is empty).

    Raises ``DeliveryError`` when trying again may help, ``PermissionError`` when the receiver
    refuses the message (4xx other than 429: sending it again would not change that).
    """
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Cockpit-Timestamp": timestamp, "User-Agent": "Cockpit"}
    if secret:
        headers["X-Cockpit-Signature"] = sign(secret, timestamp, body)
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{url}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise DeliveryError(f"{url} answered {response.status_code}")
    if response.status_code >= 400:
        raise PermissionError(f"{url} refused the message with {response.status_code}")
