"""Audited writes per second: 16 writers spread over 4 teams, each write a real service
(``api_key_create``: its row and its audit row in one transaction, committed).

Measured twice: as Cockpit writes today (one chain per team, each locked only by writers of
that team), and with every write first taking one global lock — how every audited write was
serialised before the chains were split (one advisory lock, held until commit)."""

from __future__ import annotations

import threading
import time

TITLE = "Audit log: audited writes per second, 16 concurrent writers across 4 teams"
WRITERS = 16
TEAMS = 4
WRITES_PER_WRITER = 40
GLOBAL_LOCK_KEY = 0x636F636B  # the key of the former global lock


def _measure(teams: list, *, global_lock: bool, label: str) -> float:
    from django.db import connection, transaction

    from cockpit.audit import Actor
    from cockpit.services import api_key_create

    actor = Actor.system("bench")
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS + 1)

    def writer(n: int) -> None:
        team = teams[n % len(teams)]
        try:
            start.wait()
            for i in range(WRITES_PER_WRITER):
                with transaction.atomic():
                    if global_lock:
                        with connection.cursor() as cursor:
                            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [GLOBAL_LOCK_KEY])
                    api_key_create(actor=actor, team=team, name=f"bench-{label}-{n}-{i}", scopes=["read"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return WRITERS * WRITES_PER_WRITER / elapsed


def run() -> list[str]:
    from django.conf import settings
    from django.db import connection

    from cockpit.audit import audit_verify
    from cockpit.models import Team

    if connection.vendor != "postgresql":
        return ["skipped: needs PostgreSQL (SQLite has one writer at a time whatever the chain)"]
    # One connection per writer: the default pool (10) would queue writers before any lock does.
    pool = settings.DATABASES["default"].setdefault("OPTIONS", {}).get("pool")
    if isinstance(pool, dict) and pool.get("max_size", 0) < WRITERS + 2:
        connection.close_pool()
        pool["max_size"] = WRITERS + 2
    teams = [
        Team.objects.get_or_create(slug=f"bench-audit-{i}", defaults={"name": f"Bench audit {i}"})[0]
        for i in range(TEAMS)
    ]
    _measure(teams, global_lock=False, label="warm")  # connections, imports, first queries
    rounds = {"per-team chains (now)": [], "one global lock (before)": []}
    for r in range(3):  # alternate, so that load from elsewhere hits both alike
        rounds["per-team chains (now)"].append(_measure(teams, global_lock=False, label=f"now{r}"))
        rounds["one global lock (before)"].append(_measure(teams, global_lock=True, label=f"before{r}"))
    report = audit_verify()
    lines = [
        f"{name:26} {sorted(values)[1]:7.0f} writes/s  (median of 3: {', '.join(f'{v:.0f}' for v in values)})"
        for name, values in rounds.items()
    ]
    now, before = (sorted(v)[1] for v in rounds.values())
    lines.append(f"speed-up                   {now / before:7.2f}×")
    lines.append(f"({WRITERS} writers × {WRITES_PER_WRITER} writes per round; chain after: {report})")
    return lines
