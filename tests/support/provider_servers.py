"""Real local HTTP servers that speak the model providers' wire formats, for adapter tests.

Each server listens on 127.0.0.1 (a free port), answers from a queue of scripted replies and
records every request it receives, so a test can script "429 with Retry-After: 2" or "answer
after 3 s" and then assert exactly what the adapter sent. Nothing is mocked: the SDKs go through
their real HTTP stack. With no scripted reply left, a server gives its ``default`` reply (a
successful answer).

The servers speak HTTP/1.0: every connection closes after its response, so a client keeps no
pooled connection that could outlive ``stop()``.

Use the fixtures (``openai_server``, ``anthropic_server``) from a test module or a conftest.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    """One scripted answer: the status, body and headers, sent after ``delay`` seconds. A dict
    body is sent as JSON, a string as plain text (like a proxy's error page)."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body (None when there was none)


class ScriptedServer:
    """An HTTP server answering ``POST <route>`` from a queue of ``Reply`` objects (other paths
    get ``not_found``; other methods get the standard library's 501)."""

    def __init__(self, *, route: str, default: Reply, not_found: Reply) -> None:
        self.route = route
        self.default = default
        self.not_found = not_found
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"provider-server-{self.port}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies, given in the order the next requests get them."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (later connections are refused) and drop delayed replies unsent.

        Stopping twice is harmless (a test may stop its server before the fixture does)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def _answer(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body))
            if path != self.route:
                return self.not_found
            return self._replies.popleft() if self._replies else self.default


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = server._answer(self.path, headers, raw)
            if reply.delay and server._stopping.wait(reply.delay):
                return
            if isinstance(reply.body, str):
                content_type, payload = "text/plain", reply.body.encode()
            else:
                content_type, payload = "application/json", json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


# --- OpenAI-compatible ``/v1/chat/completions`` ------------------------------------------------


class OpenAIServer(ScriptedServer):
    def __init__(self) -> None:
        super().__init__(
            route="/v1/chat/completions",
            default=openai_completion("Hello from the OpenAI-compatible test server."),
            not_found=openai_error(404, "No such route on the test server."),
        )

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url`` (the API root, including ``/v1``)."""
        return f"{self.url}/v1"


def openai_completion(
    content: str | None,
    *,
    model: str = "test-model",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    finish_reason: str = "stop",
    completion_id: str = "chatcmpl-test-1",
    refusal: str | None = None,
    delay: float = 0.0,
) -> Reply:
    """A successful chat completion with one choice (or none when ``content`` is None)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    message = {"role": "assistant", "content": content, "refusal": refusal}
    choices = (
        [{"index": 0, "message": message, "finish_reason": finish_reason}]
        if content is not None or refusal is not None
        else []
    )
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
    return Reply(200, body, delay=delay)


def openai_error(status: int, message: str, *, headers: dict[str, str] | None = None, delay: float = 0.0) -> Reply:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""
    body = {"error": {"message": message, "type": "test_error", "code": None}}
    return Reply(status, body, headers or {}, delay)


# --- Anthropic ``/v1/messages`` ---------------------------------------------------------------


class AnthropicServer(ScriptedServer):
    def __init__(self) -> None:
        super().__init__(
            route="/v1/messages",
            default=anthropic_message("Hello from the Anthropic test server."),
            not_found=anthropic_error(404, "not_found_error", "No such route on the test server."),
        )

    @property
    def base_url(self) -> str:
        """What an Anthropic client takes as ``base_url`` (the host; the SDK adds ``/v1``)."""
        return self.url


def anthropic_message(
    *texts: str,
    model: str = "claude-test",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read_input_tokens: int | None = None,
    cache_creation_input_tokens: int | None = None,
    thinking_tokens: int | None = None,
    stop_reason: str = "end_turn",
    message_id: str = "msg_test_1",
    delay: float = 0.0,
) -> Reply:
    """A successful message whose content is one text block per item of ``texts``."""
    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cache_read_input_tokens is not None:
        usage["cache_read_input_tokens"] = cache_read_input_tokens
    if cache_creation_input_tokens is not None:
        usage["cache_creation_input_tokens"] = cache_creation_input_tokens
    if thinking_tokens is not None:
        usage["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
    body = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text} for text in texts],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    return Reply(200, body, delay=delay)


def anthropic_error(
    status: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    delay: float = 0.0,
) -> Reply:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Reply(status, body, headers or {}, delay)


# --- Fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    server = AnthropicServer()
    server.start()
    yield server
    server.stop()
