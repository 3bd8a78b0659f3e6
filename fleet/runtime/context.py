"""The run context: what a managed agent function calls to act.

Every call is a *step* with a sequence number. Before a new step the runtime honours the run's
directives (pause, cancel), the agent's status, the step limit and the budget; before each
model call (in ``parallel`` too) it reserves the call's worst-case cost against the run's
budgets and settles it to the real cost after; before a side-effecting tool it asks the
approval gate. The step is journaled before it has any effect
and after it completes. When the agent function is executed again — after a pause, an
approval, a crash, or simply because a long run moved to a fresh task — each call finds its
step in the journal and returns the recorded result instead of acting again. Agent functions
must therefore be deterministic given their input and their steps' results (no clocks, random
numbers or I/O outside steps).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jsonschema
from django.db import InterfaceError, OperationalError, connection

from cockpit.lib.actionhash import action_hash
from fleet import seams, services
from fleet.models import (
    AgentStatus,
    Run,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    Tier,
    split_model_ref,
)
from fleet.providers import registry as providers
from fleet.providers.base import (
    ChatRequest,
    ChatResponse,
    PermanentProviderError,
    TransientProviderError,
    Usage,
    worst_case_usage,
)
from fleet.runtime import registry
from fleet.runtime.errors import (
    ActionForbidden,
    ActionRejected,
    CancelRun,
    LeaseLost,
    NonDeterminism,
    StepFailed,
    Suspend,
    TransientToolError,
)
from fleet.runtime.faults import kill_point
from fleet.runtime.registry import ToolInvocation, ToolSpec
from fleet.runtime.resilience import CircuitOpen, call_with_retries, guarded

PARALLEL_LIMIT = 8


def _count_attempt(step: Step) -> None:
    """Counted in memory (no database round trip before a call); saved with the step's outcome."""
    step.attempts += 1


class _RunLedger:
    """The run's own budget (the version's ``run_budget`` or an override), held like the
    budgets of finops: each model call reserves its worst case, settled to its real cost. Only
    the worker holding the run's lease makes its calls, so the count lives in memory: what the
    run had cost when this execution started, plus what its calls cost since."""

    def __init__(self, spent: Decimal) -> None:
        self._spent = spent
        self._in_flight = Decimal(0)
        self._changed = threading.Condition()

    def reserve(self, amount: Decimal, limit: Decimal | None) -> bool:
        """Hold ``amount``; ``False`` if it does not fit, even once the calls in flight end
        (while it would fit then, wait for them, without holding a database connection)."""
        with self._changed:
            while True:
                if limit is None or self._spent + self._in_flight + amount <= limit:
                    self._in_flight += amount
                    return True
                if self._in_flight == 0 or self._spent + amount > limit:
                    return False
                if not connection.in_atomic_block:
                    connection.close()
                self._changed.wait()

    def settle(self, amount: Decimal, cost: Decimal | None) -> None:
        with self._changed:
            self._in_flight -= amount
            self._spent += cost or 0
            self._changed.notify_all()

    @property
    def spent(self) -> Decimal:
        return self._spent


class _Held:
    """A model call's reservation in the run's ledger and with the budget guard: ended once,
    by ``settle`` (the call was made: its cost) or ``release`` (it was not)."""

    def __init__(self, ledger: _RunLedger, amount: Decimal, reservation: seams.Reservation) -> None:
        self._ledger, self._amount, self._reservation = ledger, amount, reservation
        self._ended = False

    def settle(self, cost: Decimal | None) -> None:
        if not self._ended:
            self._ended = True
            self._reservation.settle(cost)
            self._ledger.settle(self._amount, cost)

    def release(self) -> None:
        if not self._ended:
            self._ended = True
            self._reservation.release()
            self._ledger.settle(self._amount, None)


class _Degraded(Exception):
    """A budget refused the call's reservation and asked for the cheaper model: start again."""


class Reschedule(Exception):
    """The execution slice is used up: continue in a fresh task (raised at a step boundary)."""


@dataclass(frozen=True)
class LlmResult:
    content: str
    model: str  # "provider/model" that answered
    tokens_in: int = 0
    tokens_out: int = 0
    cost: Decimal | None = None

    def json(self) -> Any:
        """The content parsed as JSON (models asked for JSON sometimes wrap it in a code fence)."""
        text = self.content.strip()
        if text.startswith("```"):
            text = text.strip("`").removeprefix("json").strip()
        return json.loads(text)


@dataclass(frozen=True)
class LlmCall:
    """An LLM call for ``RunContext.parallel``."""

    name: str
    messages: list[dict[str, Any]]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    json: bool = False
    simulate: Callable[..., str] | None = None


@dataclass(frozen=True)
class ToolCall:
    """A tool call for ``RunContext.parallel``."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


class RunContext:
    """Passed to a managed agent function as its first argument (conventionally ``run``)."""

    def __init__(self, run: Run, *, owner: str, slice_seconds: float) -> None:
        self.run = run
        self._owner = owner
        self._seq = 0
        self._journal: dict[int, Step] = {step.seq: step for step in run.steps.all()}
        self._context = seams.ActionContext()
        self._degraded_model: str | None = None
        self._deadline = time.monotonic() + slice_seconds
        self._ledger = _RunLedger(run.cost)

    # --- What the agent reads -------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.run.pk

    @property
    def input(self) -> dict[str, Any]:
        """The run's input (an operator's override replaces it from the next step on)."""
        return self.run.overrides.get("input") or self.run.input

    @property
    def prompts(self) -> dict[str, str]:
        return self.run.version.prompts if self.run.version else {}

    # --- Steps ----------------------------------------------------------------------------------

    def llm(
        self,
        name: str,
        *,
        messages: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        json: bool = False,
        simulate: Callable[..., str] | None = None,
    ) -> LlmResult:
        """Call a model. ``model`` ("provider/model") defaults to the version's routing: an
        operator's override first, then the primary model, then the fallback chain."""
        call = LlmCall(name, messages, model, temperature, max_tokens, json, simulate)
        seq = self._next_seq()
        done = self._replay(seq, StepKind.LLM, name)
        if done is not None:
            return self._llm_result(done)
        self._boundary(StepKind.LLM)
        return self._run_llm(seq, call, self._journal.get(seq))

    def tool(self, name: str, **args: Any) -> Any:
        """Call a registered tool. A side-effecting tool may first need an approval (the run
        then waits, freeing the worker); it receives an idempotency key derived from the run
        and the step, the same on every retry of that step.

        An approved action runs only if it is exactly what was approved: the SHA-256 of the tool
        and the arguments about to run must equal the one the decision stored. A side-effecting
        tool of a tier-4 (Manual) agent is never called here: its approver carries it out and
        the result they record is the step's result."""
        spec = registry.get_tool(name)
        following = self._journal.get(self._seq + 1)
        approval: Step | None = None
        decision: seams.GateDecision | None = None
        if following is not None and following.kind == StepKind.APPROVAL:
            approval = self._approve(spec, args, None)
        elif following is None:
            self._boundary(StepKind.TOOL)
            self._check_allowed(spec)
            if spec.side_effect:  # policy is asked before every side-effecting step
                decision = seams.current.approval_gate.evaluate(
                    run=self.run, tool=spec, args=args, context=self._context
                )
                if decision.verdict == "allow" and self._manual(spec):
                    decision = seams.GateDecision(
                        "approve",
                        reason=f"tier 4 (Manual): the agent proposes, a person carries out {name}",
                        policy="tier 4 (Manual)",
                        data=decision.data,
                    )
            if decision is None:
                pass
            elif decision.verdict == "forbid":
                seq = self._next_seq()
                self._fail_new_step(
                    seq,
                    StepKind.TOOL,
                    name,
                    args,
                    f"forbidden by policy {decision.policy}: {decision.reason}",
                )
                raise ActionForbidden(name, f"forbidden by policy {decision.policy}: {decision.reason}")
            elif decision.verdict == "approve":
                approval = self._approve(spec, args, decision)
        outcome = self._approval_outcome(approval) if approval is not None else None
        if outcome is not None and outcome.get("edited_args") is not None:
            args = outcome["edited_args"]
        seq = self._next_seq()
        done = self._replay(seq, StepKind.TOOL, name)
        if done is not None:
            return done.output
        if approval is not None:
            self._check_approved(seq, spec, args, approval)
        if spec.side_effect and (self._manual(spec) or (approval is not None and approval.input.get("manual"))):
            return self._record_manual(seq, spec, args, outcome)
        result = self._run_tool(seq, spec, args, self._journal.get(seq))
        if decision is not None and decision.verdict == "allow" and decision.data.get("review"):
            seams.current.approval_gate.review(
                run=self.run, step=self._journal[seq], tool=spec, args=args, context=self._context, decision=decision
            )
        return result

    def approval(
        self,
        name: str,
        *,
        action: dict[str, Any],
        reasoning: str = "",
        confidence: float | None = None,
    ) -> dict[str, Any]:
        """Ask a human to approve something that is not a tool call (a plan, a message). Returns
        the decision (``approved``, ``decided_by``, ``reason``, ``edited_args``); a rejection
        raises ``ActionRejected``."""
        self._context = seams.ActionContext(reasoning=reasoning, confidence=confidence, decision_step=self._seq)
        decision = seams.GateDecision("approve", reason="the agent asked for a human decision", policy="agent")
        following = self._journal.get(self._seq + 1)
        if following is None:
            self._boundary(StepKind.APPROVAL)
        return self._approval_outcome(self._approve(None, action, decision, name=name))

    def decision(
        self,
        name: str,
        *,
        choice: str,
        reasoning: str = "",
        confidence: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record what the agent decided and why; the next action's approval request shows it."""
        seq = self._next_seq()
        output = {
            "choice": choice,
            "reasoning": reasoning,
            "confidence": confidence,
            "data": data or {},
        }
        if self._replay(seq, StepKind.DECISION, name) is None:
            self._boundary(StepKind.DECISION)
            self._journal[seq] = services.step_record(
                run=self.run,
                owner=self._owner,
                seq=seq,
                kind=StepKind.DECISION,
                name=name,
                input={"choice": choice},
                output=output,
            )
        self._context = seams.ActionContext(
            reasoning=reasoning, confidence=confidence, decision_step=seq, data=data or {}
        )

    def checkpoint(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Mark a stage as done (a natural place to pause; shown on the timeline)."""
        seq = self._next_seq()
        if self._replay(seq, StepKind.CHECKPOINT, name) is None:
            self._boundary(StepKind.CHECKPOINT)
            self._journal[seq] = services.step_record(
                run=self.run,
                owner=self._owner,
                seq=seq,
                kind=StepKind.CHECKPOINT,
                name=name,
                input=data or {},
                output=data or {},
            )

    def parallel(self, calls: list[LlmCall | ToolCall]) -> list[Any]:
        """Run independent LLM and read-only tool calls at the same time; results in order.
        Calls that need an approval are made one after the other instead."""
        if any(isinstance(c, ToolCall) and self._needs_gate(c) for c in calls):
            return [self._one(c) for c in calls]
        first = self._seq + 1
        self._seq += len(calls)
        results: list[Any] = [None] * len(calls)
        pending: list[tuple[int, int, LlmCall | ToolCall]] = []
        for index, call in enumerate(calls):
            seq = first + index
            kind = StepKind.LLM if isinstance(call, LlmCall) else StepKind.TOOL
            done = self._replay(seq, kind, call.name)
            if done is not None:
                results[index] = self._llm_result(done) if kind == StepKind.LLM else done.output
            else:
                pending.append((index, seq, call))
        if not pending:
            return results
        self._boundary(StepKind.TOOL)

        def execute(seq: int, call: LlmCall | ToolCall) -> Any:
            try:
                if isinstance(call, LlmCall):
                    return self._run_llm(seq, call, self._journal.get(seq))
                return self._run_tool(seq, registry.get_tool(call.name), call.args, self._journal.get(seq))
            finally:
                connection.close()  # this thread's connection

        if not connection.in_atomic_block:
            connection.close()  # the branches use their own connections: do not hold one meanwhile
        with ThreadPoolExecutor(
            max_workers=min(PARALLEL_LIMIT, len(pending)), thread_name_prefix=f"run{self.id}"
        ) as pool:
            futures = [(index, pool.submit(execute, seq, call)) for index, seq, call in pending]
            errors: list[BaseException] = []
            for index, future in futures:
                try:
                    results[index] = future.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, first one wins
                    errors.append(exc)
        if errors:
            raise errors[0]
        return results

    # --- Internals ------------------------------------------------------------------------------

    def _one(self, call: LlmCall | ToolCall) -> Any:
        if isinstance(call, LlmCall):
            return self.llm(
                call.name,
                messages=call.messages,
                model=call.model,
                temperature=call.temperature,
                max_tokens=call.max_tokens,
                json=call.json,
                simulate=call.simulate,
            )
        return self.tool(call.name, **call.args)

    def _needs_gate(self, call: ToolCall) -> bool:
        spec = registry.get_tool(call.name)
        return spec.side_effect

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _replay(self, seq: int, kind: str, name: str) -> Step | None:
        """The journaled step at ``seq`` if it is done; ``None`` if it must (still) be made."""
        step = self._journal.get(seq)
        if step is None:
            return None
        if step.kind != kind or step.name != name[:160]:
            raise NonDeterminism(
                f"step {seq}: the journal holds {step.kind} {step.name!r} but the agent now asks for {kind} {name!r}"
            )
        if step.status == StepStatus.SUCCEEDED:
            if kind == StepKind.DECISION:
                out = step.output or {}
                self._context = seams.ActionContext(
                    out.get("reasoning", ""), out.get("confidence"), seq, out.get("data") or {}
                )
            elif kind == StepKind.LLM:
                self._context = seams.ActionContext(
                    reasoning=(step.output or {}).get("content", "")[:2000], decision_step=seq
                )
            return step
        if step.status == StepStatus.FAILED:
            error_type = (step.output or {}).get("error_type")
            exc_class = {"ActionRejected": ActionRejected, "ActionForbidden": ActionForbidden}.get(
                error_type or "", StepFailed
            )
            raise exc_class(name, step.error)
        return None  # started (its worker died) or waiting: carry on from there

    def _boundary(self, kind: str) -> None:
        """Before every new step: directives, agent status, slice, step limit, budget."""
        # The last journal write of this execution read the directives back; else ask.
        fresh = getattr(self.run, "directives", None) or (
            Run.objects.filter(pk=self.run.pk)
            .values(
                "lease_owner",
                "pause_requested",
                "cancel_requested",
                "directive_reason",
                "overrides",
                "cost",
                "agent__status",
                "agent__status_reason",
            )
            .get()
        )
        self.run.directives = None  # type: ignore[attr-defined]
        if fresh["lease_owner"] != self._owner:
            raise LeaseLost
        if fresh["cancel_requested"]:
            raise CancelRun(fresh["directive_reason"] or "cancelled")
        if fresh["pause_requested"]:
            raise Suspend(RunStatus.PAUSED, fresh["directive_reason"] or "paused by an operator")
        if fresh["agent__status"] != AgentStatus.ACTIVE:
            raise Suspend(RunStatus.PAUSED, f"agent {fresh['agent__status']}: {fresh['agent__status_reason']}")
        self.run.overrides = fresh["overrides"]
        self.run.cost = fresh["cost"]
        if time.monotonic() > self._deadline:
            raise Reschedule
        limit = int(self.run.overrides.get("max_steps") or (self.run.version.max_steps if self.run.version else 50))
        if self._seq > limit:
            raise StepFailed("max steps", f"the run reached its limit of {limit} steps")
        verdict = seams.current.budget_guard.check(run=self.run, step_kind=kind)
        if verdict.verdict == "pause":
            raise Suspend(RunStatus.PAUSED, verdict.reason)
        if verdict.verdict == "degrade" and verdict.model:
            self._degraded_model = verdict.model

    def _check_allowed(self, spec: ToolSpec) -> None:
        version = self.run.version
        if version is not None and version.tools and spec.name not in version.tools:
            seq = self._next_seq()
            message = f"{spec.name} is not in the tool allow-list of version {version.version}"
            self._fail_new_step(seq, StepKind.TOOL, spec.name, {}, message)
            raise ActionForbidden(spec.name, message)

    def _fail_new_step(self, seq: int, kind: str, name: str, input: dict[str, Any], error: str) -> None:
        step = services.step_begin(run=self.run, owner=self._owner, seq=seq, kind=kind, name=name, input=input)
        self._complete(step, StepStatus.FAILED, output={"error_type": "ActionForbidden"}, error=error)

    def _complete(self, step: Step, status: str, **fields: Any) -> Step:
        step = services.step_complete(run=self.run, owner=self._owner, step=step, status=status, **fields)
        self._journal[step.seq] = step
        return step

    # LLM ------------------------------------------------------------------------------------------

    def _model_chain(self, explicit: str | None) -> list[str]:
        version = self.run.version
        primary = (
            self.run.overrides.get("model")
            or self._degraded_model
            or explicit
            or (version.primary_model if version else "")
        )
        chain = [primary, *(version.fallback_models if version else [])]
        return list(dict.fromkeys(ref for ref in chain if ref))

    def _run_llm(self, seq: int, call: LlmCall, existing: Step | None) -> LlmResult:
        chain = self._model_chain(call.model)
        if not chain:
            raise StepFailed(call.name, "no model: the agent version names none")
        temperature = self.run.overrides.get("temperature", call.temperature)
        if temperature is None and self.run.version:
            temperature = self.run.version.temperature
        step = services.step_begin(
            run=self.run,
            owner=self._owner,
            seq=seq,
            kind=StepKind.LLM,
            name=call.name,
            existing=existing,
            input={
                "model": chain[0],
                "messages": call.messages,
                "temperature": temperature,
                "max_tokens": call.max_tokens,
                "json": call.json,
            },
        )
        while True:
            try:
                return self._call_models(step, seq, call, chain, temperature)
            except _Degraded:
                chain = self._model_chain(call.model)  # a budget asked for the cheaper model

    def _call_models(
        self, step: Step, seq: int, call: LlmCall, chain: list[str], temperature: float | None
    ) -> LlmResult:
        failures: list[str] = []
        for position, ref in enumerate(chain):
            provider_name, model = split_model_ref(ref)
            try:
                provider = providers.get(provider_name)
            except LookupError as exc:
                self._complete(step, StepStatus.FAILED, error=str(exc), model=ref)
                raise StepFailed(call.name, str(exc)) from None

            def chat(
                provider: Any = provider,
                model: str = model,
                breaker: str = f"provider:{provider_name}",
                timeout: float = providers.timeout(provider_name),
            ) -> ChatResponse:
                request = ChatRequest(
                    model=model,
                    messages=call.messages,
                    temperature=temperature,
                    max_tokens=call.max_tokens,
                    json_output=call.json,
                    timeout=timeout,
                    seed=f"{self.run.trace_id}:{seq}:{step.attempts}",
                    simulate=call.simulate,
                )
                return guarded(breaker, provider.chat, request)

            held = self._reserve(seq, ref, provider, model, call)
            if not getattr(provider, "instant", False) and not connection.in_atomic_block:
                # A model call takes seconds: give the database connection back meanwhile, so
                # that hundreds of runs waiting on models need only a handful of connections.
                connection.close()
            try:
                response = call_with_retries(
                    chat,
                    transient=(TransientProviderError,),
                    on_attempt=lambda: _count_attempt(step),
                    label=f"run {self.id} step {seq} {ref}",
                )
            except (CircuitOpen, TransientProviderError) as exc:
                held.release()
                failures.append(f"{ref}: {'circuit open' if isinstance(exc, CircuitOpen) else exc}")
                if self.run.agent.degraded_mode == "fallback" and position + 1 < len(chain):
                    continue
                services.step_note(step=step, error="; ".join(failures))
                raise Suspend(RunStatus.PAUSED, f"model unavailable ({'; '.join(failures)})") from None
            except PermanentProviderError as exc:
                held.release()
                self._complete(
                    step,
                    StepStatus.FAILED,
                    error=str(exc),
                    model=ref,
                    output={"error_type": "ProviderError"},
                )
                raise StepFailed(call.name, str(exc)) from None
            except BaseException:
                held.release()
                raise
            cost = seams.current.pricer.price(provider_system=provider.system, model=model, usage=response.usage)
            held.settle(cost)
            output: dict[str, Any] = {
                "content": response.content,
                "response_model": response.model,
                "finish_reason": response.finish_reason,
            }
            if failures:
                output["fallback_from"] = failures
            self._complete(
                step,
                StepStatus.SUCCEEDED,
                output=output,
                provider=provider.system,
                model=ref,
                simulated=provider.simulated,
                tokens_in=response.usage.input_tokens,
                tokens_out=response.usage.output_tokens,
                cached_tokens=response.usage.cache_read_tokens,
                reasoning_tokens=response.usage.reasoning_tokens,
                cache_write_tokens=response.usage.cache_write_tokens,
                input_audio_tokens=response.usage.input_audio_tokens,
                output_audio_tokens=response.usage.output_audio_tokens,
                cost=cost,
            )
            self._context = seams.ActionContext(reasoning=response.content[:2000], decision_step=seq)
            return LlmResult(
                response.content,
                ref,
                response.usage.input_tokens,
                response.usage.output_tokens,
                cost,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _reserve(self, seq: int, ref: str, provider: Any, model: str, call: LlmCall) -> _Held:
        """Hold the call's worst case against the run's own budget and every budget covering the
        run. Refused: the run pauses (``Suspend``) or, if a budget says so, the step starts
        again on the cheaper model (``_Degraded``)."""
        request = ChatRequest(model=model, messages=call.messages, max_tokens=call.max_tokens)
        amount = self._worst_cost(provider, model, worst_case_usage(provider, request))
        limit = self.run.effective_budget
        if not self._ledger.reserve(amount, limit):
            raise Suspend(
                RunStatus.PAUSED,
                f"budget_exceeded: this run has cost ${self._ledger.spent:.4f} of its ${limit:.4f}; "
                f"the next call may cost up to ${amount:.4f}",
            )
        try:
            reservation = seams.current.budget_guard.reserve(
                run=self.run, owner=self._owner, seq=seq, amount=amount, degraded=self._degraded_model is not None
            )
        except BaseException:
            self._ledger.settle(amount, None)
            raise
        verdict = reservation.verdict
        if verdict.verdict == "ok":
            return _Held(self._ledger, amount, reservation)
        self._ledger.settle(amount, None)
        if verdict.verdict == "degrade" and verdict.model:
            self._degraded_model = verdict.model
            raise _Degraded
        raise Suspend(RunStatus.PAUSED, verdict.reason)

    @staticmethod
    def _worst_cost(provider: Any, model: str, usage: Usage) -> Decimal:
        """The price of ``usage``, its input counted as plain input or as cache writes (which some
        providers charge more for), whichever is dearer; 0 for an unpriced model (its calls are
        not counted either)."""
        as_writes = Usage(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cache_write_tokens=usage.input_tokens
        )
        costs = [
            seams.current.pricer.price(provider_system=provider.system, model=model, usage=each)
            for each in (usage, as_writes)
        ]
        return max((c for c in costs if c is not None), default=Decimal(0))

    @staticmethod
    def _llm_result(step: Step) -> LlmResult:
        output = step.output or {}
        return LlmResult(output.get("content", ""), step.model, step.tokens_in, step.tokens_out, step.cost)

    # Tools ----------------------------------------------------------------------------------------

    def _run_tool(self, seq: int, spec: ToolSpec, args: dict[str, Any], existing: Step | None) -> Any:
        step = services.step_begin(
            run=self.run,
            owner=self._owner,
            seq=seq,
            kind=StepKind.TOOL,
            name=spec.name,
            input=args,
            existing=existing,
        )
        if spec.schema:
            try:
                jsonschema.validate(args, spec.schema)
            except jsonschema.ValidationError as exc:
                message = f"invalid arguments: {exc.message}"
                self._complete(
                    step,
                    StepStatus.FAILED,
                    error=message,
                    output={"error_type": "InvalidArguments"},
                )
                raise StepFailed(spec.name, message) from None
        return self.invoke_tool(step, spec, args, lambda invocation: spec.fn(invocation, **args))

    def invoke_tool(
        self, step: Step, spec: ToolSpec, args: dict[str, Any], fn: Callable[[ToolInvocation], Any]
    ) -> Any:
        """Call ``fn`` for the journaled ``step``: retried on transient errors, through the tool's
        breaker, the outcome journaled. Also used to run compensations."""

        def call() -> Any:
            invocation = ToolInvocation(
                run_id=self.id,
                step_seq=step.seq,
                attempt=step.attempts,
                idempotency_key=step.idempotency_key,
                timeout=spec.timeout,
            )
            return guarded(f"tool:{spec.name}", fn, invocation)

        try:
            result = call_with_retries(
                call,
                transient=(TransientToolError,),
                on_attempt=lambda: _count_attempt(step),
                label=f"run {self.id} step {step.seq} {spec.name}",
            )
        except CircuitOpen:
            services.step_note(step=step, error="circuit open")
            raise Suspend(RunStatus.PAUSED, f"tool {spec.name} unavailable (circuit open)") from None
        except TransientToolError as exc:
            services.step_note(step=step, error=str(exc))
            raise Suspend(RunStatus.PAUSED, f"tool {spec.name} kept failing: {exc}") from None
        except (StepFailed, OperationalError, InterfaceError):
            raise  # (Cockpit's own database unreachable: the worker's trouble, see the executor)
        except Exception as exc:  # noqa: BLE001 - any other tool error is permanent
            message = f"{type(exc).__name__}: {exc}"
            self._complete(step, StepStatus.FAILED, error=message, output={"error_type": type(exc).__name__})
            raise StepFailed(spec.name, message) from None
        self._complete(step, StepStatus.SUCCEEDED, output=result)
        return self._journal[step.seq].output

    # Approvals ------------------------------------------------------------------------------------

    def _approve(
        self,
        spec: ToolSpec | None,
        args: dict[str, Any],
        decision: seams.GateDecision | None,
        *,
        name: str = "",
    ) -> Step:
        """The approval step before an action: replayed if journaled, else requested."""
        seq = self._next_seq()
        step_name = name or f"approve {spec.name if spec else 'action'}"
        existing = self._journal.get(seq)
        context = self._context
        if existing is not None:
            if existing.kind != StepKind.APPROVAL:
                raise NonDeterminism(
                    f"step {seq}: the journal holds {existing.kind} {existing.name!r}, not an approval"
                )
            if existing.status == StepStatus.WAITING:
                raise Suspend(RunStatus.WAITING_APPROVAL, f"waiting for approval of {step_name}")
            if existing.status != StepStatus.STARTED:
                return existing
            # Journaled, never asked about (an older release journaled the step on its own, and
            # its worker died before the request): ask now, as that worker was about to.
            recorded = existing.input or {}
            decision = seams.GateDecision(
                "approve",
                reason=recorded.get("policy_reason", ""),
                policy=recorded.get("policy", ""),
                data=recorded.get("policy_data") or {},
            )
            context = seams.ActionContext(
                recorded.get("reasoning", ""), recorded.get("confidence"), recorded.get("reasoning_step")
            )
        assert decision is not None
        action = {"tool": spec.name, "args": args} if spec else args
        manual = self._manual(spec)
        step = services.approval_step_request(
            run=self.run,
            owner=self._owner,
            seq=seq,
            name=step_name,
            input={
                "action": action,
                "risk": spec.risk if spec else "",
                "side_effect": bool(spec and spec.side_effect),
                "reasoning": context.reasoning,
                "confidence": context.confidence,
                "reasoning_step": context.decision_step,
                "policy": decision.policy,
                "policy_reason": decision.reason,
                "policy_data": decision.data,
                **({"manual": True} if manual else {}),
            },
            tool=spec,
            args=args,
            context=context,
            decision=decision,
            existing=existing,
        )
        if step.status == StepStatus.WAITING:
            kill_point("approval.after_park")
            raise Suspend(RunStatus.WAITING_APPROVAL, f"waiting for approval: {decision.reason}", parked=True)
        self._journal[seq] = step
        return step

    def _approval_outcome(self, step: Step) -> dict[str, Any]:
        output = step.output or {}
        if step.status == StepStatus.FAILED or not output.get("approved"):
            raise ActionRejected(step.name, step.error or f"rejected: {output.get('reason', '')}")
        return output

    def _manual(self, spec: ToolSpec | None) -> bool:
        """Tier 4 (Manual): the agent only proposes side effects; a person carries them out."""
        return bool(spec and spec.side_effect and self.run.agent.tier == Tier.MANUAL)

    def _check_approved(self, seq: int, spec: ToolSpec, args: dict[str, Any], approval: Step) -> None:
        """Refuse (the step fails, audited) unless the tool and arguments about to run are
        exactly what the decision approved: same SHA-256 over their canonical JSON."""
        output = approval.output or {}
        approved = output.get("action_hash") or services.approved_action_hash(
            approval.input, output.get("edited_args")
        )
        actual = action_hash(spec.name, args)
        if actual == approved:
            return
        step = services.step_begin(
            run=self.run,
            owner=self._owner,
            seq=seq,
            kind=StepKind.TOOL,
            name=spec.name,
            input=args,
            existing=self._journal.get(seq),
        )
        message = "approval does not match the action"
        self._journal[seq] = services.step_refuse(
            run=self.run,
            owner=self._owner,
            step=step,
            error=f"{message}: step {approval.seq} approved {approved[:12]}…, this is {actual[:12]}…",
            output={"error_type": "ApprovalMismatch", "approved_hash": approved, "action_hash": actual},
        )
        raise StepFailed(spec.name, message)

    def _record_manual(self, seq: int, spec: ToolSpec, args: dict[str, Any], outcome: dict[str, Any] | None) -> Any:
        """A tier-4 action: the approver carried it out; journal the result they recorded as the
        tool step's result, without calling the tool. Without one, the step fails."""
        executed = (outcome or {}).get("executed")
        if not isinstance(executed, dict):
            message = (
                f"tier 4 (Manual): Cockpit does not carry out {spec.name} itself; a person must, "
                "and record its result when approving"
            )
            self._fail_new_step(seq, StepKind.TOOL, spec.name, args, message)
            raise ActionForbidden(spec.name, message)
        self._journal[seq] = services.step_record(
            run=self.run,
            owner=self._owner,
            seq=seq,
            kind=StepKind.TOOL,
            name=spec.name,
            input=args,
            output=executed.get("result"),
        )
        return self._journal[seq].output
