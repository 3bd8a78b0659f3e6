"""The durable runtime: journaled steps, replay, directives at step boundaries, compensation,
retries, budgets — executed in this process against the real database."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from cockpit.audit import Actor
from fleet import seams, services, telemetry
from fleet.models import AgentStatus, AlreadyDecided, Run, RunEvent, RunStatus, Step, StepKind, StepStatus, Tier
from fleet.sandbox.models import Refund
from tests.fleet.agents import CHANGING
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db
OPERATOR = Actor.system("test operator")


def steps(run) -> list[tuple[int, str, str, str]]:  # noqa: ANN001
    return [(s.seq, s.kind, s.name, s.status) for s in Step.objects.filter(run=run).order_by("seq")]


def test_a_run_journals_every_step_and_succeeds(make_agent, start) -> None:
    run = execute(start(make_agent("test-linear"), n=3))
    assert run.status == RunStatus.SUCCEEDED
    assert run.result == {"stages": 3}
    assert steps(run) == [
        (1, "checkpoint", "stage 0", "succeeded"),
        (2, "checkpoint", "stage 1", "succeeded"),
        (3, "checkpoint", "stage 2", "succeeded"),
    ]
    assert run.step_count == 3 and run.started_at and run.ended_at
    assert list(run.events.values_list("to_status", flat=True)) == [
        "queued",
        "running",
        "succeeded",
    ]


def test_llm_steps_record_model_usage_and_simulated_cost(make_agent, start) -> None:
    run = execute(start(make_agent("test-llm", primary_model="sim/sim-large")))
    step = Step.objects.get(run=run, kind=StepKind.LLM)
    assert (step.provider, step.model, step.simulated) == ("simulated", "sim/sim-large", True)
    assert step.tokens_in > 0 and step.tokens_out > 0
    assert step.cost is not None and step.cost > 0
    assert run.cost == step.cost and run.tokens_in == step.tokens_in
    assert run.result["answers"][0]["content"] == step.output["content"]


def test_replay_returns_journaled_results_without_repeating_them(make_agent, start) -> None:
    """Executing a run again replays its finished steps from the journal: same answers, no new
    side effects, no new journal rows."""
    run = start(make_agent("test-effects"), action="pause")
    run = execute(run)
    assert run.status == RunStatus.PAUSED
    first_steps = steps(run)
    effects_before = Refund.objects.count()
    answers_before = list(Step.objects.filter(run=run).values_list("output", flat=True))
    services.run_resume(actor=OPERATOR, run=run)
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert steps(run)[: len(first_steps)] == first_steps
    assert (
        list(Step.objects.filter(run=run, seq__lte=len(first_steps)).values_list("output", flat=True))
        == answers_before
    )
    assert Refund.objects.count() == effects_before + 1  # only "last" is new


def test_pause_takes_effect_at_the_next_step_boundary(make_agent, start) -> None:
    run = execute(start(make_agent("test-effects"), action="pause"))
    assert run.status == RunStatus.PAUSED
    assert run.status_reason == "looks odd"
    # The step that asked for the pause finished; the next one never started.
    assert steps(run)[-1] == (3, "tool", "test.operator", "succeeded")
    assert not run.pause_requested and run.lease_owner == ""
    assert run.events.filter(kind=RunEvent.Kind.DIRECTIVE, data__directive="pause").exists()


def test_resume_carries_on_from_the_journal(make_agent, start) -> None:
    run = execute(start(make_agent("test-effects"), action="pause"))
    services.run_resume(actor=OPERATOR, run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert [s[2] for s in steps(run)] == [
        "test.effect",
        "test.effect",
        "test.operator",
        "after the effects",
        "test.effect",
    ]
    assert run.executions == 2


def test_cancel_compensates_side_effects_newest_first(make_agent, start) -> None:
    run = execute(start(make_agent("test-effects"), action="cancel", labels=["first", "second"]))
    assert run.status == RunStatus.CANCELLED
    assert run.status_reason == "wrong customer"
    journal = steps(run)
    undo = list(Step.objects.filter(run=run, compensates__isnull=False).order_by("seq"))
    assert [u.compensates for u in undo] == [2, 1]  # second undone before first
    assert all(u.status == StepStatus.SUCCEEDED and u.name == "test.undo" for u in undo)
    assert Refund.objects.filter(reversed_at__isnull=False).count() == 2
    assert "after the effects" not in [s[2] for s in journal]
    assert [s[0] for s in journal] == list(range(1, len(journal) + 1))  # gap-free


def test_cancelling_a_paused_run_without_side_effects_ends_it_at_once(make_agent, start) -> None:
    run = start(make_agent("test-linear"))
    services.run_pause(actor=OPERATOR, run=run)  # queued → paused straight away
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED
    services.run_cancel(actor=OPERATOR, run=run, reason="not needed")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.status_reason == "not needed"


def test_cancelling_a_paused_run_with_side_effects_lets_a_worker_undo_them(
    make_agent, start, django_capture_on_commit_callbacks
) -> None:
    run = execute(start(make_agent("test-effects"), action="pause", labels=["x"]))
    with django_capture_on_commit_callbacks() as callbacks:
        services.run_cancel(actor=OPERATOR, run=run, reason="duplicate ticket")
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.cancel_requested
    assert callbacks, "a worker is asked to finish the cancellation"
    run = execute(run)
    assert run.status == RunStatus.CANCELLED
    assert Refund.objects.get(ticket_ref="x").reversed_at is not None


@pytest.mark.parametrize("reason", ["", "   "])
def test_cancel_needs_a_reason_and_changes_nothing_without_one(make_agent, start, reason) -> None:
    from django.core.exceptions import ValidationError

    run = start(make_agent("test-linear"))
    with pytest.raises(ValidationError, match="Say why"):
        services.run_cancel(actor=OPERATOR, run=run, reason=reason)
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and not run.cancel_requested


def test_a_step_left_started_by_a_dead_worker_is_retried_with_the_same_key(make_agent, start) -> None:
    run = start(make_agent("test-effects"), labels=["only"])
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    key = Step.objects.get(run=run, seq=1).idempotency_key
    # Rewind to "the worker died after the effect, before journaling it".
    Step.objects.filter(run=run, seq__gte=2).delete()
    Step.objects.filter(run=run, seq=1).update(status=StepStatus.STARTED, output=None, ended_at=None)
    type(run).objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        ended_at=None,
        lease_owner="dead/1/x",
        lease_expires_at=timezone.now(),
    )
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert Step.objects.get(run=run, seq=1).idempotency_key == key
    assert Refund.objects.filter(ticket_ref="only").count() == 1  # not refunded twice


def test_a_live_lease_keeps_other_workers_out(make_agent, start) -> None:
    run = start(make_agent("test-linear"))
    type(run).objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        lease_owner="alive/1/x",
        lease_expires_at=timezone.now() + timezone.timedelta(seconds=60),
    )
    from fleet.runtime import executor

    assert executor.execute(run.pk) == "not claimed"
    assert not Step.objects.filter(run=run).exists()


def test_transient_tool_errors_are_retried_with_backoff(make_agent, start) -> None:
    run = execute(start(make_agent("test-flaky"), fail_times=2))
    assert run.status == RunStatus.SUCCEEDED
    step = Step.objects.get(run=run)
    assert step.attempts == 3 and step.output == {"attempts": 3}


def test_a_tool_that_keeps_failing_pauses_the_run_with_the_reason(make_agent, start, settings) -> None:
    settings.COCKPIT = {**settings.COCKPIT, "RETRY_MAX_ATTEMPTS": 3}
    run = execute(start(make_agent("test-flaky"), fail_times=10))
    assert run.status == RunStatus.PAUSED
    assert "test.flaky kept failing" in run.status_reason
    assert Step.objects.get(run=run).attempts == 3


def test_a_permanent_tool_error_fails_the_step_and_the_run(make_agent, start) -> None:
    run = execute(start(make_agent("test-boom")))
    assert run.status == RunStatus.FAILED
    assert "ValueError: the CRM said no" in run.error
    assert Step.objects.get(run=run).status == StepStatus.FAILED


def test_invalid_tool_arguments_fail_clearly(make_agent, start) -> None:
    run = execute(start(make_agent("test-effects"), labels=[42]))
    assert run.status == RunStatus.FAILED
    assert "invalid arguments: 42 is not of type 'string'" in run.error


def test_tools_outside_the_versions_allow_list_are_refused(make_agent, start) -> None:
    run = execute(start(make_agent("test-effects", tools=["test.read"])))
    assert run.status == RunStatus.FAILED
    assert "test.effect is not in the tool allow-list of version 1.0.0" in run.error
    assert not Refund.objects.exists()


def test_input_that_does_not_fit_the_agent_fails_the_run_clearly(make_agent, start) -> None:
    run = execute(start(make_agent("test-linear"), colour="blue"))
    assert run.status == RunStatus.FAILED
    assert "the input does not fit test-linear" in run.error and "colour" in run.error


def test_max_steps_stops_a_run_that_goes_on_and_on(make_agent, start) -> None:
    run = execute(start(make_agent("test-linear", max_steps=2), n=5))
    assert run.status == RunStatus.FAILED
    assert "reached its limit of 2 steps" in run.error
    assert Step.objects.filter(run=run).count() == 2


def test_run_budget_pauses_with_budget_exceeded(make_agent, start) -> None:
    run = execute(start(make_agent("test-llm", primary_model="sim/sim-large", run_budget="0.000001"), rounds=3))
    assert run.status == RunStatus.PAUSED
    assert run.status_reason.startswith("budget_exceeded")
    assert Step.objects.filter(run=run, kind=StepKind.LLM).count() == 1  # at most one step over


def test_a_raised_budget_lets_the_operator_resume(make_agent, start) -> None:
    run = execute(start(make_agent("test-llm", run_budget="0.000001"), rounds=2))
    assert run.status == RunStatus.PAUSED
    services.run_override(actor=OPERATOR, run=run, changes={"budget": "5"})
    services.run_resume(actor=OPERATOR, run=run)
    run = execute(run)
    assert run.status == RunStatus.PAUSED and run.status_reason == "looks odd"  # got past the budget


def test_override_applies_from_the_next_step(make_agent, start) -> None:
    run = execute(start(make_agent("test-llm", primary_model="sim/sim-small"), rounds=2))
    assert run.status == RunStatus.PAUSED
    services.run_override(
        actor=OPERATOR,
        run=run,
        changes={"model": "sim/sim-reasoner", "temperature": 0.9},
        reason="try the reasoning model",
    )
    services.run_resume(actor=OPERATOR, run=run)
    run = execute(run)
    llm_steps = list(Step.objects.filter(run=run, kind=StepKind.LLM).order_by("seq"))
    assert [s.model for s in llm_steps] == ["sim/sim-small", "sim/sim-reasoner"]
    assert llm_steps[1].input["temperature"] == 0.9
    event = run.events.get(kind=RunEvent.Kind.OVERRIDE)
    assert event.data["after"] == {"model": "sim/sim-reasoner", "temperature": 0.9}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "nowhere/x"}, "known, enabled provider"),
        ({"temperature": 7}, "between 0 and 2"),
        ({"max_steps": 1}, "allow more than that"),
        ({"budget": "-1"}, "more than zero"),
        ({"input": "text"}, "JSON object"),
        ({"colour": "red"}, "Cannot override colour"),
    ],
)
def test_bad_overrides_are_refused_and_change_nothing(make_agent, start, changes, message) -> None:
    from django.core.exceptions import ValidationError

    run = execute(start(make_agent("test-llm"), rounds=2))
    with pytest.raises(ValidationError, match=message):
        services.run_override(actor=OPERATOR, run=run, changes=changes)
    run.refresh_from_db()
    assert run.overrides == {} and not run.events.filter(kind=RunEvent.Kind.OVERRIDE).exists()


def test_overrides_need_a_paused_or_waiting_run(make_agent, start) -> None:
    from django.core.exceptions import ValidationError

    run = start(make_agent("test-linear"))
    with pytest.raises(ValidationError, match="pause it first"):
        services.run_override(actor=OPERATOR, run=run, changes={"temperature": 0.1})


def test_a_changed_agent_under_a_live_run_fails_it_instead_of_doing_something_else(make_agent, start) -> None:
    CHANGING["executions"] = 0
    run = execute(start(make_agent("test-nondeterministic")))
    assert run.status == RunStatus.PAUSED
    services.run_resume(actor=OPERATOR, run=run)
    run = execute(run)
    assert run.status == RunStatus.FAILED
    assert "does not replay its journal" in run.error and "'stage 1'" in run.error


def test_quarantine_pauses_every_active_run_and_refuses_new_ones(make_agent, start) -> None:
    from django.core.exceptions import ValidationError

    agent = make_agent("test-linear")
    queued, running = start(agent), start(agent)
    type(running).objects.filter(pk=running.pk).update(status=RunStatus.RUNNING)
    services.agent_set_status(actor=OPERATOR, agent=agent, status=AgentStatus.QUARANTINED, reason="leaking PII")
    queued.refresh_from_db()
    running.refresh_from_db()
    assert queued.status == RunStatus.PAUSED and queued.status_reason == "agent quarantined: leaking PII"
    assert running.pause_requested and running.directive_reason == "agent quarantined: leaking PII"
    running = execute(running)  # the worker honours it at the next step
    assert running.status == RunStatus.PAUSED
    with pytest.raises(ValidationError, match="quarantined: leaking PII; it takes no new runs"):
        start(agent)
    with pytest.raises(ValidationError, match="reactivate the agent"):
        services.run_resume(actor=OPERATOR, run=running)


def test_waiting_for_approval_frees_the_worker_and_resume_approves(make_agent, start) -> None:
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED)))
    assert run.status == RunStatus.WAITING_APPROVAL
    assert run.lease_owner == ""
    approval = Step.objects.get(run=run, kind=StepKind.APPROVAL)
    assert approval.status == StepStatus.WAITING
    assert approval.input["action"] == {"tool": "test.effect", "args": {"label": "refund"}}
    assert approval.input["reasoning"] == "the parcel arrived broken" and approval.input["confidence"] == 0.7
    assert not Refund.objects.exists()
    services.run_resume(actor=Actor.system("operator"), run=run)
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED and run.result["refunded"] is True
    assert Refund.objects.count() == 1


def test_pause_while_waiting_for_approval_parks_the_run_once_decided(make_agent, start) -> None:
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED)))
    services.run_pause(actor=OPERATOR, run=run, reason="hold on")
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING_APPROVAL and run.pending_directive == "pause"
    approval = Step.objects.get(run=run, kind=StepKind.APPROVAL)
    services.approval_step_decide(actor=Actor.system("approver"), run=run, step_seq=approval.seq, approved=True)
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.status_reason == "hold on"


def test_a_rejection_takes_the_agents_on_reject_path(make_agent, start) -> None:
    run = execute(start(make_agent("test-approval", tier=Tier.MANUAL)))
    approval = Step.objects.get(run=run, kind=StepKind.APPROVAL)
    services.approval_step_decide(
        actor=Actor.system("dana"),
        run=run,
        step_seq=approval.seq,
        approved=False,
        reason="customer already refunded",
    )
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.result == {"refunded": False, "why": "rejected by dana: customer already refunded"}
    assert not Refund.objects.exists()


def test_approval_decisions_are_final(make_agent, start) -> None:
    from django.core.exceptions import ValidationError

    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED)))
    seq = Step.objects.get(run=run, kind=StepKind.APPROVAL).seq
    services.approval_step_decide(actor=OPERATOR, run=run, step_seq=seq, approved=True)
    with pytest.raises(ValidationError, match="already been decided") as refused:
        services.approval_step_decide(actor=OPERATOR, run=run, step_seq=seq, approved=False)
    assert isinstance(refused.value, AlreadyDecided)  # a conflict (409), not bad input


def test_an_approval_step_journaled_but_never_asked_about_is_asked_about_not_rejected(make_agent, start) -> None:
    """A worker of an older release journaled the approval step and died before asking: the
    run that takes over asks, and waits; nobody rejected anything."""
    run = execute(start(make_agent("test-approval", tier=Tier.ASSISTED)))
    Step.objects.filter(run=run, kind=StepKind.APPROVAL).update(status=StepStatus.STARTED)
    type(run).objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, lease_owner="dead/1/x", lease_expires_at=timezone.now()
    )
    run = execute(run)
    assert run.status == RunStatus.WAITING_APPROVAL, run.error
    assert Step.objects.get(run=run, kind=StepKind.APPROVAL).status == StepStatus.WAITING
    services.run_resume(actor=Actor.system("operator"), run=run)
    run = execute(run)
    assert run.status == RunStatus.SUCCEEDED and run.result["refunded"] is True


def test_a_cancellation_asked_for_before_the_approval_is_not_parked(make_agent, start) -> None:
    """Cancelled between its last step and its approval: the run is not parked with a
    cancellation nobody would finish, and nothing is asked."""
    run = start(make_agent("test-approval", tier=Tier.ASSISTED))
    original = seams.current.budget_guard

    class CancelDuringTheCheck:
        def check(self, *, run, step_kind):  # noqa: ANN001, ANN202
            if step_kind == StepKind.TOOL:
                services.run_cancel(actor=OPERATOR, run=Run.objects.get(pk=run.pk), reason="customer called")
            return original.check(run=run, step_kind=step_kind)

    seams.current.budget_guard = CancelDuringTheCheck()
    try:
        run = execute(run)
    finally:
        seams.current.budget_guard = original
    assert run.status == RunStatus.CANCELLED and run.status_reason == "customer called"
    assert not Step.objects.filter(run=run, kind=StepKind.APPROVAL).exists()


def test_tier_one_and_two_agents_act_without_waiting(make_agent, start) -> None:
    run = execute(start(make_agent("test-approval", tier=Tier.SUPERVISED)))
    assert run.status == RunStatus.SUCCEEDED
    assert not Step.objects.filter(run=run, kind=StepKind.APPROVAL).exists()


@pytest.mark.django_db(transaction=True)
def test_parallel_calls_run_together_and_replay_in_order(make_agent, start) -> None:
    run = execute(start(make_agent("test-parallel")))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.result["reads"] == [1, 2]
    assert [s[2] for s in steps(run)] == ["left", "right", "test.read", "test.read"]


def test_runs_are_created_idempotently(make_agent) -> None:
    agent = make_agent("test-linear")
    first, created = services.run_create(actor=OPERATOR, agent=agent, input={}, idempotency_key="ticket-7")
    again, created_again = services.run_create(actor=OPERATOR, agent=agent, input={}, idempotency_key="ticket-7")
    assert created and not created_again and first.pk == again.pk


def test_the_sweeper_re_enqueues_orphaned_runs_once(make_agent, start) -> None:
    agent = make_agent("test-linear")
    orphan = start(agent)
    type(orphan).objects.filter(pk=orphan.pk).update(
        status=RunStatus.RUNNING,
        lease_owner="dead/1/x",
        lease_expires_at=timezone.now() - timezone.timedelta(seconds=1),
    )
    healthy = start(agent)
    type(healthy).objects.filter(pk=healthy.pk).update(
        status=RunStatus.RUNNING,
        lease_owner="alive/1/x",
        lease_expires_at=timezone.now() + timezone.timedelta(seconds=60),
    )
    assert services.runs_to_recover() == [orphan.pk]
    assert services.runs_to_recover() == []  # reserved: not enqueued again on the next sweep
    assert execute(orphan).status == RunStatus.SUCCEEDED
    # The takeover is in the run's history, naming the worker that was lost.
    (note,) = orphan.events.filter(kind=RunEvent.Kind.NOTE)
    assert note.reason.startswith("resumed after worker loss") and "dead/1/x" in note.reason
    assert note.data["lost_worker"] == "dead/1/x"


def test_a_run_whose_message_was_lost_is_re_enqueued_without_a_worker_loss_note(make_agent, start) -> None:
    run = start(make_agent("test-linear"))
    # Let go to run on (say, once approved), and its message never arrived.
    type(run).objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, updated_at=timezone.now() - timezone.timedelta(minutes=5)
    )
    assert services.runs_to_recover() == [run.pk]
    assert execute(run).status == RunStatus.SUCCEEDED
    assert not run.events.filter(kind=RunEvent.Kind.NOTE).exists()


def test_runtime_spans_follow_the_genai_conventions(make_agent, start, django_capture_on_commit_callbacks) -> None:
    from traces.models import Span, Trace

    run = start(make_agent("test-llm", primary_model="sim/sim-large"))
    with django_capture_on_commit_callbacks(execute=True):
        run = execute(run)
    telemetry.flush()
    spans = {s.name: s for s in Span.objects.filter(trace_id=run.trace_id)}
    root = spans["invoke_agent Test-Llm"]
    chat = spans["chat sim-large"]
    assert chat.parent_span_id == root.span_id and root.parent_span_id == ""
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "simulated"
    assert chat.attributes["gen_ai.request.model"] == "sim-large"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.conversation.id"] == str(run.pk)
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert Decimal(str(root.attributes["cockpit.cost_usd"])) == run.cost.quantize(Decimal("0.000001"))
    # stored with their typed columns, linked to the run and agent, in one summary row
    assert (chat.span_type, chat.model, chat.provider, chat.run_id, chat.agent_id) == (
        "llm",
        "sim-large",
        "simulated",
        run.pk,
        run.agent_id,
    )
    assert (root.span_type, root.cost) == ("agent", None)  # the root's cost is the total, not its own
    summary = Trace.objects.get(trace_id=run.trace_id)
    assert (summary.root_name, summary.run_id, summary.agent_id, summary.span_count) == (
        root.name,
        run.pk,
        run.agent_id,
        len(spans),
    )
    assert summary.cost == run.cost.quantize(Decimal("0.000001"))


def test_spans_a_dying_worker_never_stored_are_re_emitted_when_the_run_ends(
    make_agent, start, django_capture_on_commit_callbacks
) -> None:
    """Spans are stored in background batches; a worker killed before its batch went out
    loses them. The journal still has the steps, so the run's end re-emits what is missing."""
    from fleet import seams
    from traces.models import Span, Trace
    from traces.sink import TraceStoreSink

    class LosesEarlySteps(TraceStoreSink):
        """Drops the spans of steps 1 and 2 the first time, as a killed worker would."""

        def __init__(self) -> None:
            self.dropped: set[int] = set()

        def write(self, spans):  # noqa: ANN001, ANN202
            kept = []
            for span in spans:
                seq = span.attributes.get("cockpit.step.seq")
                if seq in (1, 2) and seq not in self.dropped:
                    self.dropped.add(seq)
                else:
                    kept.append(span)
            super().write(kept)

    saved = seams.current.span_sink
    seams.current.span_sink = sink = LosesEarlySteps()
    try:
        run = start(make_agent("test-linear"), n=4)
        with django_capture_on_commit_callbacks(execute=True):
            run = execute(run)
        steps = run.steps.count()
        assert Span.objects.filter(trace_id=run.trace_id).count() == steps + 1 - 2
        # beat's spans sweep, once the run has been over for a few seconds
        assert services.runs_spans_reconcile(now=timezone.now() + timedelta(seconds=10)) == 1
        assert services.runs_spans_reconcile(now=timezone.now() + timedelta(seconds=10)) == 0  # marked complete
    finally:
        seams.current.span_sink = saved
    assert sink.dropped == {1, 2}
    assert Span.objects.filter(trace_id=run.trace_id).count() == steps + 1
    assert Trace.objects.get(trace_id=run.trace_id).span_count == steps + 1


def test_losing_the_database_does_not_fail_the_run(make_agent, start) -> None:
    """An unreachable database is the worker's trouble: the run keeps its state and journal, its
    lease is given back, and the task retries (the sweeper being the safety net)."""
    from django.db import OperationalError

    from fleet.runtime import executor

    run = start(make_agent("test-db-down"))
    with pytest.raises(OperationalError):
        executor.execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.lease_owner == "" and run.error == ""
    assert steps(run)[0] == (1, "checkpoint", "before", "succeeded")


def test_the_execute_task_retries_when_the_database_is_unreachable() -> None:
    from django.db import InterfaceError, OperationalError

    from fleet.tasks import run_execute

    assert set(run_execute.autoretry_for) == {OperationalError, InterfaceError}
    assert run_execute.acks_late
