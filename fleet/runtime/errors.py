"""Exceptions that steer a run. Agent code may catch ``ActionRejected`` and ``StepFailed`` to
take another path; the others unwind the agent function and are handled by the executor."""

from __future__ import annotations


class RunInterrupt(BaseException):
    """Base of the control-flow signals below. A ``BaseException`` so that an agent's broad
    ``except Exception`` cannot swallow a pause or a cancellation by accident."""


class Suspend(RunInterrupt):
    """Stop executing and park the run (``paused`` or ``waiting_approval``); the worker is freed.
    Re-executing the agent later replays the journal up to here."""

    def __init__(self, status: str, reason: str, *, parked: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.parked = parked  # the run was parked already, with the step that parks it


class CancelRun(RunInterrupt):
    """An operator cancelled the run: compensate side effects, then end it as cancelled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseLost(RunInterrupt):
    """Another worker took the run over (this one was presumed dead): stop without writing."""


class NonDeterminism(Exception):
    """Re-executing the agent asked for a different step than the journal holds at that
    position: the agent's code is not deterministic, or it changed under a live run."""


class StepFailed(Exception):
    """A step failed for good (a permanent error, or retries exhausted). Uncaught, it fails the run."""

    def __init__(self, step_name: str, message: str) -> None:
        super().__init__(f"{step_name}: {message}")
        self.step_name = step_name
        self.message = message


class ActionRejected(StepFailed):
    """A human (or policy at the deadline) rejected the action. Uncaught, the run fails with the
    reason; agents may catch it to take another path (their ``on_reject``)."""


class ActionForbidden(StepFailed):
    """Policy forbids the action outright."""


class TransientToolError(Exception):
    """Raised by a tool for a failure worth retrying (a timeout, a 429, a 5xx of a system it
    calls). Any other exception from a tool is permanent."""
