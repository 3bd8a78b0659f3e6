"""``POST /v1/traces``: the OTLP/HTTP traces endpoint.

Point any OpenTelemetry exporter at Cockpit (``OTEL_EXPORTER_OTLP_ENDPOINT=https://cockpit…``
and ``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer ck_…``); the key's team owns the spans
and it needs the ``ingest`` scope. Answers follow the OTLP/HTTP specification: 200 with the
number of rejected spans (partial success), 400 for a body that does not decode, 401/403 for
the key, 413 for a body too large as sent or once gunzipped, 415 for another encoding, and 503
with ``Retry-After`` when this process is already storing as much as it may — never a 500 for
anything a client sends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from cockpit.models import Scope
from cockpit.services import api_key_authenticate
from traces import otlp
from traces.services import spans_ingest

logger = logging.getLogger(__name__)

_slots = threading.BoundedSemaphore(int(settings.COCKPIT["OTLP_CONCURRENCY"]))
RETRY_AFTER_SECONDS = 2


def _reply(kind: str, status: int, body: bytes, retry_after: int | None = None) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=kind)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def _key_from(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    return request.headers.get("X-Api-Key", "").strip()


def _authenticate(request: HttpRequest):  # noqa: ANN202
    raw = _key_from(request)
    if not raw:
        raise otlp.OtlpError(401, "Send an API key with the 'ingest' scope: Authorization: Bearer ck_…")
    api_key = api_key_authenticate(raw)
    if api_key is None:
        raise otlp.OtlpError(401, "Invalid API key.")
    if not api_key.is_active:
        raise otlp.OtlpError(401, "This API key has been revoked.")
    if not api_key.has_scope(Scope.INGEST):
        raise otlp.OtlpError(403, f"This API key lacks the 'ingest' scope (it has: {', '.join(api_key.scopes)}).")
    return api_key


def read_body(request: HttpRequest, limit: int) -> bytes:
    """The body as sent, refusing more than ``limit`` bytes (the ASGI guard has usually refused
    it already, before it was read)."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise otlp.OtlpError(413, f"The body is larger than {limit:,} bytes.")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise otlp.OtlpError(413, f"The body is larger than {limit:,} bytes.")
    return body


@csrf_exempt
def otlp_traces(request: HttpRequest) -> HttpResponse:
    kind = otlp.PROTOBUF
    try:
        if request.method != "POST":
            response = _reply(otlp.JSON, 405, otlp.failure(otlp.JSON, 400, "Use POST."))
            response["Allow"] = "POST"
            return response
        kind = otlp.media_type(request.content_type or "")
        api_key = _authenticate(request)
        body = read_body(request, int(settings.COCKPIT["OTLP_MAX_BODY_BYTES"]))
        data = otlp.decompress(
            body, request.headers.get("Content-Encoding", ""), int(settings.COCKPIT["OTLP_MAX_INFLATED_BYTES"])
        )
        export = otlp.parse(data, kind)
        if not _slots.acquire(timeout=settings.COCKPIT["OTLP_QUEUE_SECONDS"]):
            raise otlp.OtlpError(
                503, "Cockpit is storing as many spans as it can: retry shortly.", retry_after=RETRY_AFTER_SECONDS
            )
        try:
            result = spans_ingest(team=api_key.team, request=export)
        finally:
            _slots.release()
    except otlp.OtlpError as exc:
        return _reply(kind, exc.status, otlp.failure(kind, exc.status, exc.message), exc.retry_after)
    except (OperationalError, InterfaceError) as exc:
        logger.warning("OTLP ingest: the database is unavailable (%s); asking the client to retry", exc)
        return _reply(
            kind, 503, otlp.failure(kind, 503, "The span store is unavailable: retry shortly."), RETRY_AFTER_SECONDS
        )
    except (DataError, IntegrityError) as exc:
        # Normalisation should make every span storable; if one is not, say so rather than
        # have the exporter retry it forever.
        logger.exception("OTLP ingest: a request could not be stored")
        return _reply(kind, 400, otlp.failure(kind, 400, f"The spans could not be stored: {exc}"))
    return _reply(kind, 200, otlp.success(kind, result.rejected, result.message))


def _otlp_too_large(headers: dict[bytes, bytes], limit: int) -> tuple[str, bytes]:
    kind = otlp.JSON if headers.get(b"content-type", b"").startswith(otlp.JSON.encode()) else otlp.PROTOBUF
    return kind, otlp.failure(kind, 413, f"The body is larger than {limit:,} bytes.")


class BodyLimit:
    """ASGI middleware: refuses a body over the size limit before it is read into memory or
    spooled to disk — by its Content-Length, or (chunked) as soon as it grows past the limit.
    By default for OTLP; ``prefix``, ``limit`` and ``reply`` (content type and body of the 413)
    guard other paths (the REST API: ``cockpit/asgi.py``)."""

    def __init__(  # noqa: ANN001
        self,
        app,
        path: str = "/v1/traces",
        *,
        prefix: bool = False,
        limit: Callable[[], int] = lambda: int(settings.COCKPIT["OTLP_MAX_BODY_BYTES"]),
        reply: Callable[[dict[bytes, bytes], int], tuple[str, bytes]] = _otlp_too_large,
    ) -> None:
        self.app = app
        self.path = path
        self.prefix = prefix
        self.limit = limit
        self.reply = reply

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        path = scope.get("path", "")
        guarded = path.startswith(self.path) if self.prefix else path == self.path
        if scope["type"] != "http" or not guarded:
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, *self.reply(headers, limit))
            return
        received = 0
        exceeded = False
        started = False

        async def limited_receive():  # noqa: ANN202
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message) -> None:  # noqa: ANN001
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            await self._too_large(send, *self.reply(headers, limit))

    @staticmethod
    async def _too_large(send, kind: str, body: bytes) -> None:  # noqa: ANN001
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", kind.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
