"""Traces: OTLP ingestion, the span store and the trace views."""
