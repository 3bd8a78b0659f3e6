from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from cockpit.models import Team
from finops.management.timerange import add_range_arguments, check_range, team_ids
from finops.rollups import reconcile


class Command(BaseCommand):
    help = (
        "Prove the hourly rollups equal the sum of the span costs (and span counts) for a time range, and "
        "the daily rollups the hourly ones; exit status 1 with a table of what differs otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_range_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        since = options["since"]
        until = check_range(since, options["until"])
        compared, differences = reconcile(since=since, until=until, team_ids=team_ids(options["team"]))
        if not differences:
            self.stdout.write(
                f"OK: rollups equal the spans in {compared:,} team-hours and team-days between "
                f"{since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC."
            )
            return
        slugs = dict(Team.objects.values_list("pk", "slug"))
        header = (
            f"{'what':<22} {'team':<20} {'expected cost':>16} {'rollup cost':>16} {'delta':>14} "
            f"{'spans':>8} {'rolled':>8}"
        )
        self.stderr.write(header)
        self.stderr.write("-" * len(header))
        for d in differences:
            when = f"hour {d.hour:%Y-%m-%d %H:00}Z" if d.what == "hour" else f"day  {d.hour:%Y-%m-%d}"
            self.stderr.write(
                f"{when:<22} {slugs.get(d.team_id, str(d.team_id)):<20} {d.span_cost:>16} "
                f"{d.rollup_cost:>16} {d.cost_delta:>14} {d.span_count:>8} {d.rollup_count:>8}"
            )
        self.stderr.write(
            f"MISMATCH: {len(differences)} of {compared} team-hours and team-days differ "
            "(hours: rollups vs spans; days: daily vs hourly rollups). "
            "Rebuild them with: manage.py finops_reprice --since … --until …"
        )
        raise SystemExit(1)
