"""A stock OTLPSpanExporter, configured the way any agent's deployment would be (environment
variables only), exporting to a real Cockpit web process."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from cockpit.audit import Actor
from cockpit.services import api_key_create
from tests.support import otel
from traces.models import Span, Trace

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_stock_exporter_works_unchanged(team, web_process, monkeypatch, compression) -> None:
    key = api_key_create(actor=Actor.system("tests"), team=team, name="otel", scopes=["ingest"])[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", web_process[1])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-api-key={key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
    exporter = OTLPSpanExporter()
    assert exporter._compression.value == compression  # the exporter did read the variable
    provider = TracerProvider(resource=Resource.create({"service.name": "langgraph-app"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    capture = otel.Capture()
    capture.tracer = provider.get_tracer("app")
    otel.langgraph_trace(capture)
    assert provider.force_flush(10_000)
    provider.shutdown()
    summary = Trace.objects.get()
    assert (summary.team, summary.root_name, summary.span_count, summary.service_name) == (
        team,
        "LangGraph",
        6,
        "langgraph-app",
    )
    assert Span.objects.filter(span_type="llm", model="claude-sonnet-4-5", cache_read_tokens=1024).exists()


def test_a_stock_exporter_is_told_when_its_key_is_wrong(team, web_process) -> None:
    exporter = OTLPSpanExporter(endpoint=f"{web_process[1]}/v1/traces", headers={"Authorization": "Bearer ck_wrong"})
    capture = otel.Capture()
    otel.genai_refund_trace(capture)
    assert exporter.export(capture.spans) == SpanExportResult.FAILURE
    assert not Span.objects.exists()
