"""Signed checkpoints ("anchors") of the audit chains' heads, kept outside the database.

Whoever can write to the audit table could delete the newest rows of a chain, or empty the
table, and what is left would still be a valid chain. An anchor records, at one moment, how far
every chain reached (its last row's number, id and hash) with an HMAC signature under the audit
key; ``audit_verify`` then requires every anchored row to still be there, unchanged. Anchors are
written by a beat task (``cockpit.tasks.audit_anchor``) as one JSON line each:

* to a file of the day under ``COCKPIT_AUDIT_ANCHOR_DIR`` (``anchors-YYYY-MM-DD.jsonl``),
* to the log (logger ``cockpit.audit``, level INFO), so that a log shipper copies it off the host,
* and, when ``COCKPIT_AUDIT_ANCHOR_WEBHOOK`` is set, to that URL (signed like every webhook).

This module only makes, signs, stores and reads anchors; ``cockpit.audit`` decides when.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from cockpit import webhooks
from cockpit.models import audit_keys, audit_signing_key

logger = logging.getLogger("cockpit.audit")

FORMAT = 1


class AnchorError(Exception):
    """The newest anchor cannot be read, or its signature does not hold."""


@dataclass(frozen=True)
class ChainHead:
    """How far one chain reached: its last row's number in the chain, id and hash."""

    seq: int
    id: int
    hash: str


@dataclass(frozen=True)
class Anchor:
    at: datetime
    chains: dict[int, ChainHead]
    previous: str  # the signature of the anchor before this one ("" for the first)
    key_id: str
    signature: str = ""

    @property
    def count(self) -> int:
        """Rows in the anchored chains (each chain is numbered from 1 without gaps)."""
        return sum(head.seq for head in self.chains.values())

    @property
    def head_id(self) -> int:
        return max((head.id for head in self.chains.values()), default=0)

    def body(self) -> dict[str, Any]:
        """Everything the signature covers."""
        return {
            "format": FORMAT,
            "at": self.at.astimezone(UTC).isoformat(),
            "count": self.count,
            "head_id": self.head_id,
            "chains": {str(c): [h.seq, h.id, h.hash] for c, h in sorted(self.chains.items())},
            "previous": self.previous,
            "key_id": self.key_id,
        }

    def line(self) -> str:
        return json.dumps({**self.body(), "signature": self.signature}, separators=(",", ":"))


def _signature(body: dict[str, Any], key: bytes) -> str:
    message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, b"cockpit-audit-anchor:" + message, hashlib.sha256).hexdigest()


def anchor_make(*, chains: dict[int, ChainHead], previous: Anchor | None, at: datetime) -> Anchor:
    key_id, key = audit_signing_key()
    unsigned = Anchor(at=at, chains=dict(chains), previous=previous.signature if previous else "", key_id=key_id)
    return replace(unsigned, signature=_signature(unsigned.body(), key))


def anchor_parse(line: str) -> Anchor:
    """An anchor from its JSON line; ``AnchorError`` unless it is well-formed and its signature
    holds under one of the audit keys."""
    try:
        data = json.loads(line)
        anchor = Anchor(
            at=datetime.fromisoformat(data["at"]),
            chains={int(c): ChainHead(int(s), int(i), str(h)) for c, (s, i, h) in data["chains"].items()},
            previous=str(data["previous"]),
            key_id=str(data["key_id"]),
            signature=str(data["signature"]),
        )
        format_ = data["format"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AnchorError(f"it is not an anchor ({type(exc).__name__}: {exc})") from None
    if format_ != FORMAT:
        raise AnchorError(f"it has format {format_!r}, this version reads {FORMAT}")
    key = audit_keys().get(anchor.key_id)
    if key is None:
        raise AnchorError(f"it is signed with a key this deployment does not know (key id {anchor.key_id})")
    if not hmac.compare_digest(_signature(anchor.body(), key), anchor.signature):
        raise AnchorError("its signature does not match its content (it was changed, or not made by Cockpit)")
    return anchor


def anchor_directory() -> Path:
    return Path(settings.COCKPIT_AUDIT_ANCHOR_DIR)


def anchor_last() -> Anchor | None:
    """The newest anchor in the anchor folder, or None when there is none yet."""
    directory = anchor_directory()
    files = sorted(directory.glob("anchors-*.jsonl")) if directory.is_dir() else []
    for path in reversed(files):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            try:
                return anchor_parse(lines[-1])
            except AnchorError as exc:
                raise AnchorError(f"the last anchor in {path} cannot be trusted: {exc}") from None
    return None


def anchor_store(anchor: Anchor) -> Path:
    """Append the anchor to the file of its day (flushed to disk), log it, and send it to the
    webhook if one is set. The file and the log come first: a webhook that is down loses
    nothing (the next anchor carries the same heads or later ones)."""
    directory = anchor_directory()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"anchors-{anchor.at.astimezone(UTC):%Y-%m-%d}.jsonl"
    line = anchor.line()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.info("audit anchor %s", line)
    url = settings.COCKPIT_AUDIT_ANCHOR_WEBHOOK
    if url:
        try:
            webhooks.post(
                url, settings.COCKPIT_AUDIT_ANCHOR_WEBHOOK_SECRET, {"type": "audit.anchor", **json.loads(line)}
            )
        except (webhooks.DeliveryError, PermissionError) as exc:
            logger.warning("audit anchor not delivered to the webhook: %s", exc)
    return path
