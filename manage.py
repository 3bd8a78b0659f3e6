#!/usr/bin/env python
"""Django's command-line utility for Cockpit.

Without ``DATABASE_URL`` it uses the embedded PostgreSQL cluster in ``var/pg/`` (the one
``make demo`` runs), starting it for the length of the command if the demo is not running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cockpit.settings")
    server = None
    if not os.environ.get("DATABASE_URL"):
        from cockpit.lib import embedded_postgres

        base = Path(__file__).resolve().parent
        var = Path(os.environ.get("COCKPIT_VAR_DIR") or base / "var").resolve()
        server = embedded_postgres.start(var / "pg")
    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    finally:
        if server is not None:
            embedded_postgres.release(server)


if __name__ == "__main__":
    main()
