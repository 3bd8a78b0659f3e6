from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cockpit.audit import Actor
from finops.management.timerange import add_range_arguments, check_range, team_ids
from finops.services import spans_reprice


class Command(BaseCommand):
    help = (
        "Recompute span costs in a time range with the current prices and overrides (after a price "
        "change), in batches with a progress bar, then rebuild the hourly rollups of the range."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_range_arguments(parser)
        parser.add_argument("--batch-size", type=int, default=2000)

    def handle(self, *args: Any, **options: Any) -> None:
        since = options["since"]
        until = check_range(since, options["until"])
        teams = team_ids(options["team"])
        started = time.monotonic()
        tty = sys.stdout.isatty()

        def progress(done: int, total: int) -> None:
            width = 30
            filled = int(width * done / total) if total else width
            rate = done / max(time.monotonic() - started, 1e-6)
            line = f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} spans  {rate:,.0f}/s"
            self.stdout.write(("\r" + line) if tty else line, ending="" if tty else "\n")
            self.stdout.flush()

        result = spans_reprice(
            actor=Actor.system("finops_reprice"),
            since=since,
            until=until,
            team_ids=teams,
            batch_size=options["batch_size"],
            progress=progress,
        )
        if tty:
            self.stdout.write("")
        self.stdout.write(
            f"Repriced {result['spans']:,} spans ({result['changed']:,} changed, {result['traces']:,} traces "
            f"updated) between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC; rollups rebuilt from "
            f"{result['rolled_up']:,} spans in {time.monotonic() - started:.1f} s."
        )
