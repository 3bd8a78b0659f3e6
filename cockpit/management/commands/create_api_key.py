from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cockpit.audit import Actor
from cockpit.models import Scope, Team
from cockpit.services import api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key for a team and print it (only the key, on stdout, once). "
        "Only a hash is stored: save the printed key now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", required=True, help="team slug")
        parser.add_argument("--name", required=True, help="what will use the key, e.g. 'prod collector'")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"comma-separated, from: {', '.join(Scope.values)}",
        )

    def handle(self, *args: Any, team: str, name: str, scopes: str, **options: Any) -> None:
        found = Team.objects.filter(slug=team).first()
        if found is None:
            known = ", ".join(Team.objects.values_list("slug", flat=True)) or "none yet"
            raise CommandError(f"No team with slug {team!r} (known: {known}).")
        try:
            _, key = api_key_create(
                actor=Actor.system("create_api_key command"),
                team=found,
                name=name,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(key)
