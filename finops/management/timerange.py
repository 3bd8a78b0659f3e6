"""Time-range arguments shared by the FinOps commands."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime


def moment(value: str) -> datetime:
    """``2026-03-01``, ``2026-03-01T12:00``, ``2026-03-01 12:00:00+00:00``, ``now``, or ``-7d`` /
    ``-12h`` (relative to now); naive values are in ``TIME_ZONE``."""
    text = value.strip()
    now = timezone.now()
    if text == "now":
        return now
    if text.startswith("-") and text[-1:] in ("d", "h") and text[1:-1].isdigit():
        amount = int(text[1:-1])
        return now - (timedelta(days=amount) if text.endswith("d") else timedelta(hours=amount))
    parsed = parse_datetime(text)
    if parsed is None:
        day = parse_date(text)
        if day is None:
            raise CommandError(f"{value!r} is not a date or time (try 2026-03-01, 2026-03-01T12:00, now or -7d).")
        parsed = datetime.combine(day, time())
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed.astimezone(UTC)


def add_range_arguments(parser: CommandParser) -> None:
    parser.add_argument("--since", required=True, type=moment, help="start (included): date, time, now, -7d")
    parser.add_argument("--until", type=moment, default=None, help="end (excluded); default now")
    parser.add_argument("--team", action="append", default=[], help="team slug (repeat for several); default all")


def team_ids(slugs: list[str]) -> list[int] | None:
    if not slugs:
        return None
    from cockpit.models import Team

    found = dict(Team.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    unknown = sorted(set(slugs) - set(found))
    if unknown:
        raise CommandError(f"No team {', '.join(unknown)}.")
    return sorted(found.values())


def check_range(since: datetime, until: datetime | None) -> datetime:
    until = until or timezone.now()
    if since >= until:
        raise CommandError("--since must be before --until.")
    return until
