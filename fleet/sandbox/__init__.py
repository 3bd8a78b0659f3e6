"""The demo's pretend outside world: a CRM, a payments system, a mail server, a ledger and a code
host. Demo tools change these tables, so a side effect executed twice would show as two rows —
which the unique idempotency keys forbid."""
