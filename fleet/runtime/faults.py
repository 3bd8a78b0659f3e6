"""Kill points: where crash tests make a worker die on the spot, as a power cut would.

A process started with ``COCKPIT_KILL_AT=<name>`` sends itself SIGKILL when it reaches the kill
point of that name (after printing one line saying so, for the test to wait on). Without the
variable — always, in production — ``kill_point`` does nothing. The points:

* ``approval.before_request`` — the approval step is journaled, its request not yet created;
* ``approval.after_request`` — the request row is written, the step and run not yet waiting;
* ``approval.after_park`` — the step, the request and the run's ``waiting_approval`` are
  committed, the executor has not returned yet.
"""

from __future__ import annotations

import os
import signal
import sys

KILL_AT = os.environ.get("COCKPIT_KILL_AT", "")


def kill_point(name: str) -> None:
    if KILL_AT and name == KILL_AT:
        print(f"kill point reached: {name} (pid {os.getpid()})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
