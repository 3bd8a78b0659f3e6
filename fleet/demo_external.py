"""The demo's external agents: programs that run outside Cockpit and use it exactly as a customer's
agent would — the runs API for directives, the approvals API before a risky action, and OTLP for
their spans (the stock OpenTelemetry exporter). Nothing here imports Cockpit.

* **CRM sync** (``crm-sync``, in the fleet): a LangGraph-style graph that finds duplicate CRM
  accounts with a model and merges them — the merge needs a human's approval;
* **lead scorer** (not in the fleet): sends OpenInference-shaped spans only, so it shows up under
  Traces → Discovered agents until someone adopts it.

    python -m fleet.demo_external --url http://127.0.0.1:8000 --key-file var/demo-external.key
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CRM_AGENT = "crm-sync"
ACCOUNTS = ["Acme GmbH", "Globex Ltd", "Initech SA", "Umbrella BV", "Hooli Inc", "Stark Retail", "Wayne Foods"]
MAX_APPROVAL_WAIT_SECONDS = 15 * 60


class Stopped(Exception):
    """The run was cancelled, or this program is stopping."""


class Demo:
    def __init__(self, url: str, key: str, interval: float, seed: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.api = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=40)
        self.key = key
        self.interval = interval
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.crm = self._tracer("crm-sync", "1.4.0")
        self.scorer = self._tracer("lead-scorer", "0.9.2")

    def _tracer(self, service: str, version: str) -> Tracer:
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": version}))
        exporter = OTLPSpanExporter(endpoint=f"{self.url}/v1/traces", headers={"x-api-key": self.key})
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self._providers = [*getattr(self, "_providers", []), provider]
        return provider.get_tracer("demo-agent", version)

    # --- The loop -----------------------------------------------------------------------------

    def run_forever(self) -> None:
        n = 0
        while not self.stopping.is_set():
            work = self.crm_sync if n % 2 == 0 else self.lead_scoring
            threading.Thread(target=self._guarded, args=(work,), daemon=True, name=f"demo-{n}").start()
            n += 1
            self.stopping.wait(self.interval * self.rng.uniform(0.7, 1.3))

    def _guarded(self, work: Any) -> None:
        try:
            work()
        except Stopped:
            pass
        except httpx.HTTPError as exc:
            print(f"demo agent: Cockpit did not answer ({exc}); trying again later", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a demo agent logs and carries on
            print(f"demo agent: {type(exc).__name__}: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self.stopping.set()
        for provider in self._providers:
            provider.shutdown()

    def pause(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise Stopped

    # --- CRM sync: runs API + approvals API + OTLP --------------------------------------------

    def crm_sync(self) -> None:
        ref = f"crm-{uuid.uuid4().hex[:10]}"
        since = time.strftime("%H:%M", time.gmtime(time.time() - 900))
        created = self.api.post(
            "/runs",
            json={"agent": CRM_AGENT, "input_summary": f"Accounts changed since {since} UTC", "external_ref": ref},
            headers={"Idempotency-Key": ref},
        )
        created.raise_for_status()
        run = CrmRun(self, created.json(), ref)
        try:
            run.execute()
        except Stopped:
            run.report_status("cancelled", reason="cancelled by an operator")
            raise
        except Exception as exc:
            run.report_status("failed", reason=str(exc)[:300])
            raise

    # --- Lead scorer: spans only (a shadow agent) ---------------------------------------------

    def lead_scoring(self) -> None:
        lead = f"L-{self.rng.randint(10000, 99999)}"
        with self.scorer.start_as_current_span(
            "LeadScoringAgent",
            attributes={"openinference.span.kind": "AGENT", "agent.name": "lead-scorer", "input.value": lead},
        ) as root:
            with self.scorer.start_as_current_span(
                "fetch_lead", attributes={"openinference.span.kind": "TOOL", "tool.name": "hubspot.get_lead"}
            ) as span:
                span.set_attribute("input.value", json.dumps({"lead_id": lead}))
                self.pause(self.rng.uniform(0.1, 0.4))
                span.set_attribute("output.value", json.dumps({"company": self.rng.choice(ACCOUNTS), "visits": 14}))
            prompt = self.rng.randint(600, 1400)
            completion = self.rng.randint(40, 120)
            with self.scorer.start_as_current_span(
                "ChatAnthropic",
                kind=SpanKind.CLIENT,
                attributes={
                    "openinference.span.kind": "LLM",
                    "llm.provider": "anthropic",
                    "llm.model_name": "claude-3-5-haiku-latest",
                    "llm.token_count.prompt": prompt,
                    "llm.token_count.completion": completion,
                    "llm.input_messages.0.message.role": "system",
                    "llm.input_messages.0.message.content": "Score B2B leads from 0 to 100. Answer with JSON.",
                    "llm.input_messages.1.message.role": "user",
                    "llm.input_messages.1.message.content": f"Lead {lead}: 14 visits, pricing page twice.",
                },
            ) as span:
                self.pause(self.rng.uniform(0.4, 1.2))
                score = self.rng.randint(20, 95)
                span.set_attribute("llm.output_messages.0.message.role", "assistant")
                span.set_attribute("llm.output_messages.0.message.content", json.dumps({"score": score}))
            root.set_attribute("output.value", json.dumps({"lead": lead, "score": score}))


class CrmRun:
    """One run of the CRM sync graph, reported as it goes."""

    def __init__(self, demo: Demo, run: dict[str, Any], ref: str) -> None:
        self.demo = demo
        self.id = run["id"]
        # Spans started under the run's trace context join the trace Cockpit keeps for the run.
        self.context = TraceContextTextMapPropagator().extract({"traceparent": run["traceparent"]})
        self.ref = ref
        self.rng = demo.rng
        self.tracer = demo.crm
        self.overrides: dict[str, Any] = {}

    def execute(self) -> None:
        attributes = {
            "gen_ai.agent.id": CRM_AGENT,
            "gen_ai.agent.name": "CRM sync (LangGraph)",
            "gen_ai.conversation.id": self.ref,
            "gen_ai.workflow.name": "crm_dedupe_graph",
        }
        with self.tracer.start_as_current_span(
            "crm_dedupe_graph", context=self.context, attributes=attributes
        ) as root:
            self.agent_attributes = attributes
            changed = self.step_tool("crm.list_changed_accounts", {"since_minutes": 15}, self._changed_accounts)
            decision = self.step_llm(changed)
            if not decision["duplicates"]:
                root.set_attribute("output.value", "no duplicates")
                self.report_status("succeeded", result={"merged": 0})
                return
            pair = decision["duplicates"][0]
            arguments = {"keep": pair[0], "merge": pair[1], "move_contacts": True}
            outcome = self.step_approval("crm.merge_accounts", arguments, decision)
            if outcome["status"] in ("approved", "approved_with_edits"):
                final = outcome.get("edited_arguments") or arguments
                self.step_tool("crm.merge_accounts", final, lambda args: {"merged_into": args["keep"]})
                self.report_status("succeeded", result={"merged": 1})
            else:
                root.set_status(Status(StatusCode.ERROR, f"merge {outcome['status']}"))
                reason = outcome.get("decision_reason") or outcome["status"]
                self.report_status("failed", reason=f"merge not approved: {reason}")

    # --- Steps ----------------------------------------------------------------------------------

    def directive(self) -> None:
        """Between steps: go on, wait while paused, stop if cancelled."""
        while True:
            answer = self.demo.api.get(f"/runs/{self.id}/directive", params={"wait": 0}).json()
            self.overrides = answer.get("overrides") or {}
            if answer["directive"] == "continue":
                return
            if answer["directive"] in ("cancel", "stop"):
                raise Stopped
            self.demo.api.get(f"/runs/{self.id}/directive", params={"wait": 25})  # paused: wait for a change

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=self.agent_attributes | attributes) as span:
            yield span

    def step_tool(self, tool: str, arguments: dict[str, Any], do: Any) -> Any:
        self.directive()
        started = time.monotonic()
        with self.span(
            f"execute_tool {tool}",
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.call.id": f"{self.ref}-{tool}",
                "gen_ai.tool.call.arguments": json.dumps(arguments),
            },
        ) as span:
            self.demo.pause(self.rng.uniform(0.2, 0.8))
            result = do(arguments)
            span.set_attribute("gen_ai.tool.call.result", json.dumps(result))
        self.report_step("tool", tool, input=arguments, output=result, duration=time.monotonic() - started)
        return result

    def _changed_accounts(self, arguments: dict[str, Any]) -> dict[str, Any]:
        accounts = self.rng.sample(ACCOUNTS, 4)
        if self.rng.random() < 0.8:
            accounts.append(accounts[0].replace(" ", "  ").upper())  # a near-duplicate to find
        return {"accounts": accounts}

    def step_llm(self, changed: dict[str, Any]) -> dict[str, Any]:
        self.directive()
        model = str(self.overrides.get("model") or "gpt-4o-mini").rpartition("/")[2]
        started = time.monotonic()
        accounts = changed["accounts"]
        duplicates = [[a, b] for a in accounts for b in accounts if a != b and a.lower().split() == b.lower().split()]
        duplicates = duplicates[:1]
        confidence = round(self.rng.uniform(0.55, 0.97), 2)
        answer = {"duplicates": duplicates, "confidence": confidence}
        prompt, completion = self.rng.randint(900, 2400), self.rng.randint(60, 220)
        messages = [
            {"role": "system", "parts": [{"type": "text", "content": "Find duplicate CRM accounts. Answer in JSON."}]},
            {"role": "user", "parts": [{"type": "text", "content": json.dumps(accounts)}]},
        ]
        with self.span(
            f"chat {model}",
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "gen_ai.usage.input_tokens": prompt,
                "gen_ai.usage.output_tokens": completion,
                "gen_ai.input.messages": json.dumps(messages),
            },
        ) as span:
            self.demo.pause(self.rng.uniform(0.6, 1.8))
            output = [{"role": "assistant", "parts": [{"type": "text", "content": json.dumps(answer)}]}]
            span.set_attribute("gen_ai.output.messages", json.dumps(output))
        self.report_step(
            "llm",
            "find_duplicates",
            model=f"openai/{model}",
            tokens_in=prompt,
            tokens_out=completion,
            input={"accounts": accounts},
            output=answer,
            duration=time.monotonic() - started,
        )
        return answer

    def step_approval(self, action: str, arguments: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
        self.directive()
        started = time.monotonic()
        keep, merge = arguments["keep"], arguments["merge"]
        with self.span(
            f"approval {action}",
            **{"cockpit.approval.input": json.dumps({"action": action, "arguments": arguments})},
        ) as span:
            asked = self.demo.api.post(
                "/approvals",
                json={
                    "agent": CRM_AGENT,
                    "action": action,
                    "arguments": arguments,
                    "reasoning": f"{merge!r} looks like a duplicate of {keep!r} (same name, different spacing).",
                    "confidence": decision["confidence"],
                    "risk": "high",
                    "side_effect": True,
                    "external_ref": self.ref,
                },
                headers={"Idempotency-Key": f"{self.ref}-merge"},
            )
            asked.raise_for_status()
            outcome = asked.json()
            deadline = time.monotonic() + MAX_APPROVAL_WAIT_SECONDS
            while outcome["status"] == "pending" and time.monotonic() < deadline:
                if self.demo.stopping.is_set():
                    raise Stopped
                outcome = self.demo.api.get(f"/approvals/{outcome['id']}", params={"wait": 30}).json()
            span.set_attribute(
                "cockpit.approval.output",
                json.dumps({k: outcome.get(k) for k in ("status", "decided_by", "decision_reason", "policy")}),
            )
            if outcome["status"] not in ("approved", "approved_with_edits"):
                span.set_status(Status(StatusCode.ERROR, outcome["status"]))
        self.report_step(
            "approval",
            action,
            input=arguments,
            output={"status": outcome["status"], "decided_by": outcome.get("decided_by")},
            duration=time.monotonic() - started,
        )
        return outcome

    # --- Reporting ------------------------------------------------------------------------------

    def report_step(self, kind: str, name: str, *, duration: float, **fields: Any) -> None:
        payload = {"type": "step", "kind": kind, "name": name, "status": "succeeded", "duration_seconds": duration}
        self.demo.api.post(f"/runs/{self.id}/events", json=payload | fields).raise_for_status()

    def report_status(self, status: str, *, reason: str = "", result: Any = None) -> None:
        payload = {"type": "status", "status": status, "reason": reason, "result": result}
        self.demo.api.post(f"/runs/{self.id}/events", json=payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.demo_external", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Cockpit's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--key-file", required=True, type=Path, help="file with an API key (runs, ingest, approvals)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between runs (about; default 30)")
    args = parser.parse_args(argv)
    demo = Demo(args.url, args.key_file.read_text().strip(), args.interval)
    signal.signal(signal.SIGTERM, lambda *_: demo.stopping.set())
    try:
        demo.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
