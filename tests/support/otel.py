"""Real OpenTelemetry SDK pipelines producing the traces agents send, and their OTLP bodies.

``capture()`` gives a tracer whose finished spans are kept in memory; ``protobuf(spans)`` and
``json_body(spans)`` encode them exactly as the stock OTLP/HTTP exporters do (JSON with hex ids,
as the OTLP specification requires). The shapes below are modelled on what the frameworks'
instrumentations emit: GenAI semantic conventions (current and deprecated names), LangGraph via
OpenInference, and a LlamaIndex-style retrieval pipeline via OpenInference.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

T0 = 1_760_000_000_000_000_000  # a fixed start (ns), so durations are exact


class Capture:
    def __init__(self, service: str = "support-bot") -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests.support.otel")

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        start_ms: int,
        end_ms: int,
        attributes: dict[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        error: str | None = None,
    ) -> Iterator[Any]:
        span = self.tracer.start_span(name, kind=kind, attributes=attributes or {}, start_time=T0 + start_ms * 10**6)
        with self.tracer_context(span):
            yield span
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
            span.record_exception(RuntimeError(error), timestamp=T0 + end_ms * 10**6)
        span.end(end_time=T0 + end_ms * 10**6)

    @contextlib.contextmanager
    def tracer_context(self, span: Any) -> Iterator[None]:
        from opentelemetry import context, trace

        token = context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            context.detach(token)


def protobuf(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def json_body(spans: list[ReadableSpan]) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping with trace and span ids as hex."""
    document = json_format.MessageToDict(encode_spans(spans))
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if span.get(field):
                        span[field] = base64.b64decode(span[field]).hex()
    return json.dumps(document).encode()


def trace_id_of(spans: list[ReadableSpan]) -> str:
    return f"{spans[0].context.trace_id:032x}"


# --- Shapes -----------------------------------------------------------------------------------


def genai_refund_trace(capture: Capture, *, deprecated: bool = False, agent: str = "refund-helper") -> None:
    """An agent (OpenAI Agents SDK style, GenAI conventions): invoke_agent > chat, execute_tool,
    chat. ``deprecated`` uses the older names SDKs still emit (gen_ai.system, prompt_tokens)."""
    usage = (
        {"gen_ai.system": "openai", "gen_ai.usage.prompt_tokens": 812, "gen_ai.usage.completion_tokens": 96}
        if deprecated
        else {"gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 96}
    )
    agent_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "gen_ai.agent.id": agent}
    with capture.span(f"invoke_agent {agent}", 0, 5200, agent_attrs):
        with capture.span(
            "chat gpt-4o",
            10,
            1800,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o",
                "gen_ai.input.messages": json.dumps(
                    [
                        {
                            "role": "user",
                            "parts": [
                                {
                                    "type": "text",
                                    "content": "Ticket #123: my order arrived broken, I want my money back.",
                                }
                            ],
                        }
                    ]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "name": "payments.refund",
                                    "arguments": {"amount": 80, "currency": "EUR"},
                                }
                            ],
                        }
                    ]
                ),
                **usage,
            },
        ):
            pass
        with capture.span(
            "execute_tool payments.refund",
            1850,
            2400,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "payments.refund",
                "gen_ai.tool.call.arguments": json.dumps({"amount": 80, "currency": "EUR", "ticket": "123"}),
                "gen_ai.tool.call.result": json.dumps({"refund_id": "R-9"}),
            },
        ):
            pass
        with capture.span(
            "chat gpt-4o",
            2450,
            5100,
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", **usage},
        ):
            pass


def langgraph_trace(capture: Capture) -> None:
    """LangGraph through openinference-instrumentation-langchain: a graph of chain nodes, an LLM
    node and a tool node, one tool call failing."""
    with capture.span(
        "LangGraph",
        0,
        4000,
        {"openinference.span.kind": "CHAIN", "input.value": '{"messages": []}', "session.id": "thread-42"},
    ):
        with (
            capture.span("agent", 5, 1500, {"openinference.span.kind": "CHAIN"}),
            capture.span(
                "ChatAnthropic",
                10,
                1490,
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "claude-sonnet-4-5",
                    "llm.provider": "anthropic",
                    "llm.token_count.prompt": 1500,
                    "llm.token_count.completion": 220,
                    "llm.token_count.prompt_details.cache_read": 1024,
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "Look up the weather in Paris",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "Calling get_weather",
                },
            ),
        ):
            pass
        with capture.span("tools", 1510, 3900, {"openinference.span.kind": "CHAIN"}):
            with capture.span(
                "get_weather",
                1520,
                2500,
                {"openinference.span.kind": "TOOL", "tool.name": "get_weather", "input.value": '{"city": "Paris"}'},
                error="TimeoutError: upstream",
            ):
                pass
            with capture.span(
                "get_weather",
                2600,
                3800,
                {
                    "openinference.span.kind": "TOOL",
                    "tool.name": "get_weather",
                    "input.value": '{"city": "Paris"}',
                    "output.value": '{"temp": 18}',
                },
            ):
                pass


def openinference_rag_trace(capture: Capture) -> None:
    """A LlamaIndex-style query through OpenInference: retrieve (with an embedding), then answer."""
    with capture.span(
        "query", 0, 3000, {"openinference.span.kind": "CHAIN", "input.value": "What is our refund policy?"}
    ):
        with (
            capture.span("retrieve", 10, 400, {"openinference.span.kind": "RETRIEVER"}),
            capture.span(
                "embedding",
                15,
                120,
                {"openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small"},
            ),
        ):
            pass
        with capture.span(
            "llm",
            410,
            2990,
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.system": "openai",
                "llm.token_count.prompt": 2048,
                "llm.token_count.completion": 150,
                "output.value": "Refunds within 30 days.",
            },
        ):
            pass
