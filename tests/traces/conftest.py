from __future__ import annotations

import gzip
from typing import Any

import pytest
from django.test import Client

from cockpit.audit import Actor
from cockpit.services import api_key_create
from tests.support import otel


@pytest.fixture
def ingest_key(team) -> str:  # noqa: ANN001
    return api_key_create(actor=Actor.system("tests"), team=team, name="otel", scopes=["ingest"])[1]


@pytest.fixture
def capture() -> otel.Capture:
    return otel.Capture()


def post(
    client: Client,
    key: str | None,
    body: bytes,
    *,
    json: bool = False,
    gzipped: bool = False,
    header: str = "authorization",
    **extra: Any,
):  # noqa: ANN201
    headers: dict[str, str] = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header == "authorization" else key
    if gzipped:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    content_type = extra.pop("content_type", "application/json" if json else "application/x-protobuf")
    return client.generic("POST", "/v1/traces", body, content_type=content_type, headers=headers, **extra)
