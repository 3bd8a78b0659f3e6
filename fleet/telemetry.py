"""The runtime's OpenTelemetry spans, with the GenAI semantic conventions.

A run is one trace (``Run.trace_id``): an ``invoke_agent {agent}`` root span and, under it, one
span per step — ``chat {model}`` for LLM calls, ``execute_tool {tool}`` for tools — and spans
for approvals and operator actions. A run may execute in several workers over hours (pauses,
approvals, crashes), so spans are emitted when each piece ends, with its real start and end
times, under a root span whose id is derived from the trace id and which is emitted last.
Span ids are derived from (run, step) too, so a span emitted twice after a crash is stored once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from cockpit.telemetry import forced_ids

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from fleet.models import Run, RunEvent, Step

logger = logging.getLogger(__name__)
SCOPE = "cockpit.fleet"
BATCH_THREAD_PREFIX = "OtelBatch"  # the SDK's BatchSpanProcessor names its worker thread so
MAX_ATTRIBUTE_CHARS = 8000
_tracer = trace.get_tracer(SCOPE)


def _derived_id(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def root_span_id(run: Run) -> int:
    return _derived_id(run.trace_id, "root")


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _json(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "…[truncated]"


def _parent(run: Run) -> Any:
    parent = SpanContext(
        trace_id=int(run.trace_id, 16),
        span_id=root_span_id(run),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


def _agent_attributes(run: Run) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        gen_ai.GEN_AI_AGENT_ID: f"{run.team.slug}/{run.agent.slug}",
        gen_ai.GEN_AI_AGENT_NAME: run.agent.name,
        gen_ai.GEN_AI_CONVERSATION_ID: str(run.pk),
        "cockpit.run_id": run.pk,
        "cockpit.team": run.team.slug,
    }
    if run.version is not None:
        attributes[gen_ai.GEN_AI_AGENT_VERSION] = run.version.version
    if run.agent.entrypoint:
        attributes[gen_ai.GEN_AI_WORKFLOW_NAME] = run.agent.entrypoint
    return attributes


def emit_step(run: Run, step: Step) -> None:
    """One span for a finished (or failed) step."""
    attributes = _agent_attributes(run) | {
        "cockpit.step.seq": step.seq,
        "cockpit.step.kind": step.kind,
    }
    if step.kind == "llm":
        name = f"chat {step.model.partition('/')[2] or step.model}"
        request = step.input or {}
        output = step.output or {}
        attributes |= {
            gen_ai.GEN_AI_OPERATION_NAME: "chat",
            gen_ai.GEN_AI_PROVIDER_NAME: step.provider or "unknown",
            gen_ai.GEN_AI_REQUEST_MODEL: (request.get("model") or step.model).partition("/")[2] or step.model,
            gen_ai.GEN_AI_RESPONSE_MODEL: output.get("response_model") or step.model.partition("/")[2],
            gen_ai.GEN_AI_USAGE_INPUT_TOKENS: step.tokens_in,
            gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: step.tokens_out,
            gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: step.cached_tokens,
            gen_ai.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: step.cache_write_tokens,
            # No GenAI attribute counts audio tokens yet: OpenInference's names (traces.semconv reads them).
            "llm.token_count.prompt_details.audio": step.input_audio_tokens,
            "llm.token_count.completion_details.audio": step.output_audio_tokens,
            gen_ai.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: step.reasoning_tokens,
            gen_ai.GEN_AI_INPUT_MESSAGES: _json(request.get("messages", [])),
            "cockpit.step.name": step.name,
            "cockpit.simulated": step.simulated,
        }
        if request.get("temperature") is not None:
            attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] = request["temperature"]
        if "content" in output:
            attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES] = _json(
                [{"role": "assistant", "parts": [{"type": "text", "content": output["content"]}]}]
            )
        kind = SpanKind.CLIENT
    elif step.kind == "tool":
        name = f"execute_tool {step.name}"
        attributes |= {
            gen_ai.GEN_AI_OPERATION_NAME: "execute_tool",
            gen_ai.GEN_AI_TOOL_NAME: step.name,
            gen_ai.GEN_AI_TOOL_CALL_ID: step.idempotency_key,
            gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS: _json(step.input),
        }
        if step.output is not None:
            attributes[gen_ai.GEN_AI_TOOL_CALL_RESULT] = _json(step.output)
        if step.compensates is not None:
            attributes["cockpit.compensates_step"] = step.compensates
        kind = SpanKind.INTERNAL
    else:
        name = f"{step.kind} {step.name}"
        attributes |= {
            "cockpit.step.name": step.name,
            f"cockpit.{step.kind}.input": _json(step.input),
        }
        if step.output is not None:
            attributes[f"cockpit.{step.kind}.output"] = _json(step.output)
        kind = SpanKind.INTERNAL
    if step.cost is not None:
        attributes["cockpit.cost_usd"] = float(step.cost)
    attributes["cockpit.attempts"] = step.attempts
    with forced_ids(span_id=_derived_id(run.trace_id, "step", step.seq)):
        span = _tracer.start_span(
            name,
            context=_parent(run),
            kind=kind,
            attributes=attributes,
            start_time=_ns(step.started_at),
        )
    if step.status == "failed":
        span.set_status(Status(StatusCode.ERROR, step.error[:500]))
        span.set_attribute("error.type", (step.output or {}).get("error_type", "StepFailed"))
    span.end(end_time=_ns(step.ended_at or step.started_at))


def emit_event(run: Run, event: RunEvent, name: str, attributes: dict[str, Any]) -> None:
    """A zero-length span for something that happened to the run (an operator action)."""
    with forced_ids(span_id=_derived_id(run.trace_id, "event", event.pk)):
        span = _tracer.start_span(
            name,
            context=_parent(run),
            attributes=_agent_attributes(run) | attributes,
            start_time=_ns(event.at),
        )
    span.end(end_time=_ns(event.at))


def emit_run(run: Run) -> None:
    """The root ``invoke_agent`` span, once the run has ended."""
    attributes = _agent_attributes(run) | {
        gen_ai.GEN_AI_OPERATION_NAME: "invoke_agent",
        "cockpit.run.status": run.status,
        "cockpit.run.kind": run.kind,
        gen_ai.GEN_AI_USAGE_INPUT_TOKENS: run.tokens_in,
        gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS: run.tokens_out,
        "cockpit.cost_usd": float(run.cost),
    }
    with forced_ids(span_id=root_span_id(run), trace_id=int(run.trace_id, 16)):
        span = _tracer.start_span(
            f"invoke_agent {run.agent.name}",
            context=Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(run.started_at or run.created_at),
        )
    if run.status != "succeeded":
        span.set_status(Status(StatusCode.ERROR, (run.error or run.status_reason or run.status)[:500]))
    span.end(end_time=_ns(run.ended_at or run.updated_at))


def expected_span_ids(run: Run) -> dict[str, Any]:
    """The spans an ended run's trace must hold: its root, and one per finished step."""
    expected: dict[str, Any] = {f"{root_span_id(run):016x}": None}
    for step in run.steps.filter(ended_at__isnull=False).order_by("seq"):
        expected[f"{_derived_id(run.trace_id, 'step', step.seq):016x}"] = step
    return expected


def reconcile(run: Run) -> bool:
    """Re-emit whatever spans of an ended run the store lacks (a worker that died took its
    unsent batch with it; the journal still has the steps), store them now, and say whether the
    trace is complete. Emitting a span twice is harmless: the store keeps one."""
    from fleet import seams

    flush()
    stored = seams.current.span_sink.stored_span_ids(run)
    if stored is None:
        return True  # no trace store installed: nothing to complete
    missing = {span_id: step for span_id, step in expected_span_ids(run).items() if span_id not in stored}
    if not missing:
        return True
    for step in missing.values():
        if step is None:
            emit_run(run)
        else:
            emit_step(run, step)
    flush()
    stored = seams.current.span_sink.stored_span_ids(run) or set()
    return all(span_id in stored for span_id in missing)


def flush(timeout_millis: int = 5000) -> None:
    """Hand every finished span to the sink now (tests; a process about to exit)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(timeout_millis)


class SinkExporter(SpanExporter):
    """Hands the runtime's finished spans to the span sink seam (the trace store)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from django.db import connection

        from fleet import seams

        ours = [s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == SCOPE]
        try:
            if ours:
                seams.current.span_sink.write(ours)
        except Exception:  # noqa: BLE001 - reported to the SDK, which logs it; reconcile() catches up
            logger.exception("runtime spans could not be stored; they are re-emitted when their run ends")
            return SpanExportResult.FAILURE
        finally:
            # The processor's own thread gives its connection back between batches. A flush
            # exports in the calling thread, whose connection (a test's transaction, a run's
            # thread) is left alone.
            if threading.current_thread().name.startswith(BATCH_THREAD_PREFIX):
                connection.close()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None
