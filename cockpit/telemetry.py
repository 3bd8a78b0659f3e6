"""OpenTelemetry set-up for the web (ASGI) and worker processes.

Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, with the SDK's standard variables for headers
and timeouts; otherwise tracing is configured with no exporter. Apps add span processors of
their own (for example a sink into Cockpit's span store) with ``register_span_processor`` from
``AppConfig.ready()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_lock = threading.Lock()
_provider: TracerProvider | None = None
_processor_factories: list[Callable[[], SpanProcessor]] = []


def register_span_processor(factory: Callable[[], SpanProcessor]) -> None:
    """Add a processor to every provider configured from now on (call from ``ready()``)."""
    _processor_factories.append(factory)


def exporter_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def configure_tracing(service_name: str) -> TracerProvider:
    """Install the process's tracer provider once; later calls return it."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        from django.conf import settings

        resource = Resource.create(
            {"service.name": service_name, "service.namespace": settings.OTEL_SERVICE_NAME}
        )
        provider = TracerProvider(resource=resource)
        if exporter_endpoint():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        for factory in _processor_factories:
            provider.add_span_processor(factory())
        trace.set_tracer_provider(provider)
        _provider = provider
        return provider
