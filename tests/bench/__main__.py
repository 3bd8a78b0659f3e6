"""python -m tests.bench [NAME ...] — run benchmarks (all, or those whose module names contain
one of the NAMEs) and print their figures. Normally run through `make bench`."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

import django


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cockpit.settings")
    django.setup()
    from django.core.management import call_command

    from cockpit.telemetry import configure_tracing

    configure_tracing("cockpit-bench")  # as in the worker: runtime spans go to the trace store
    from django.db import connection

    call_command("migrate", verbosity=0)
    import tests.bench as package

    names = sorted(
        m.name for m in pkgutil.iter_modules([str(Path(package.__file__).parent)]) if m.name.startswith("bench_")
    )
    wanted = [n for n in names if not argv or any(a in n for a in argv)]
    if not wanted:
        print(f"no benchmark matches {argv}; have: {', '.join(names)}")
        return 2
    python = sys.version.split()[0]
    print(f"Cockpit benchmarks — {os.cpu_count()} cores, {connection.vendor}, Python {python}")
    for name in wanted:
        module = importlib.import_module(f"tests.bench.{name}")
        print(f"\n== {module.TITLE}")
        started = time.perf_counter()
        for line in module.run():
            print(f"   {line}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
