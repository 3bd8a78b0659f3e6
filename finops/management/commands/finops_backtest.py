from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from finops.forecast import HISTORY_DAYS, backtest, score
from finops.management.timerange import moment, team_ids


class Command(BaseCommand):
    help = (
        "Replay the spend forecast at past cut-offs and report its error against what was spent: MAE, "
        "MAPE and how often the actual fell inside the 80 % interval, per team and overall."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=7, help="cut-offs over the last DAYS days (default 7)")
        parser.add_argument("--horizon", type=int, default=24, help="hours forecast at each cut-off (default 24)")
        parser.add_argument("--step", type=int, default=24, help="hours between cut-offs (default 24)")
        parser.add_argument("--until", type=moment, default=None, help="the end of the replay (default now)")
        parser.add_argument("--team", action="append", default=[], help="team slug (repeat); default all")
        parser.add_argument("--verbose-windows", action="store_true", help="print every window")

    def handle(self, *args: Any, **options: Any) -> None:
        rows = backtest(
            now=options["until"] or timezone.now(),
            days=options["days"],
            horizon_hours=options["horizon"],
            step_hours=options["step"],
            team_ids=team_ids(options["team"]),
        )
        if not rows:
            self.stdout.write("No spend in the replayed range: nothing to score.")
            return
        if options["verbose_windows"]:
            for row in rows:
                self.stdout.write(
                    f"{row.series:<20} {row.cutoff:%Y-%m-%d %H:00} actual ${row.actual:,.4f} "
                    f"forecast ${row.predicted:,.4f} [{row.low:,.4f}, {row.high:,.4f}]"
                )
        self.stdout.write(
            f"Forecast of the next {options['horizon']} h from up to {HISTORY_DAYS} days of hourly rollups, "
            f"cut-offs every {options['step']} h over {options['days']} days:"
        )
        self.stdout.write(f"{'series':<20} {'windows':>7} {'MAE $':>12} {'MAPE':>8} {'in 80% interval':>16}")
        for item in score(rows):
            mape = "n/a" if item.mape is None else f"{item.mape:.1f}%"
            self.stdout.write(
                f"{item.series:<20} {item.windows:>7} {item.mae:>12.4f} {mape:>8} {item.coverage:>15.0%}"
            )
