"""OpenTelemetry set-up for the web (ASGI) and worker processes.

Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, with the SDK's standard variables for headers
and timeouts; otherwise tracing is configured with no exporter. Apps add span processors of
their own (for example a sink into Cockpit's span store) with ``register_span_processor`` from
``AppConfig.ready()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

_lock = threading.Lock()
_provider: TracerProvider | None = None
_processor_factories: list[Callable[[], SpanProcessor]] = []


_forced_span_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("forced_span_id", default=None)
_forced_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("forced_trace_id", default=None)


class _IdGenerator(RandomIdGenerator):
    """Random ids, unless a caller asks for given ones (see ``forced_ids``)."""

    def generate_span_id(self) -> int:
        forced = _forced_span_id.get()
        return forced if forced is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_trace_id.get()
        return forced if forced is not None else super().generate_trace_id()


@contextlib.contextmanager
def forced_ids(*, span_id: int, trace_id: int | None = None) -> Iterator[None]:
    """Spans started inside get this span id (and, for a root span, this trace id). Used for
    spans whose id must be known before they exist (a run's root span, parent of steps that end
    earlier) and for spans that may be emitted twice after a crash, so the store keeps one."""
    span_token = _forced_span_id.set(span_id)
    trace_token = _forced_trace_id.set(trace_id)
    try:
        yield
    finally:
        _forced_span_id.reset(span_token)
        _forced_trace_id.reset(trace_token)


def register_span_processor(factory: Callable[[], SpanProcessor]) -> None:
    """Add a processor to every provider configured from now on (call from ``ready()``)."""
    _processor_factories.append(factory)


def exporter_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_tracing(service_name: str) -> TracerProvider:
    """Install the process's tracer provider once; later calls return it."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        from django.conf import settings

        resource = Resource.create({"service.name": service_name, "service.namespace": settings.OTEL_SERVICE_NAME})
        provider = TracerProvider(resource=resource, id_generator=_IdGenerator())
        if exporter_endpoint():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        for factory in _processor_factories:
            provider.add_span_processor(factory())
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider
