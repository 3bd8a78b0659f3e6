from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from cockpit import demo


class Command(BaseCommand):
    help = (
        "Create the demo data: teams, a user for every role, then each app's own demo data "
        "(the seed() of every installed app's demo module, in INSTALLED_APPS order). Safe to run "
        "again: only what is missing is created. New users get a random password, printed once "
        "(or DEMO_PASSWORD for all of them)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset-passwords",
            action="store_true",
            help="give every demo user a new password (printed) even if it exists",
        )

    def handle(self, *args: Any, reset_passwords: bool, **options: Any) -> None:
        logins = demo.seed(reset_passwords=reset_passwords)
        own = Path(settings.BASE_DIR)
        for config in apps.get_app_configs():
            if config.name == "cockpit" or own not in Path(config.path).parents:
                continue
            try:
                module = importlib.import_module(f"{config.name}.demo")
            except ModuleNotFoundError as exc:
                if exc.name != f"{config.name}.demo":
                    raise
                continue
            module.seed(stdout=self.stdout)

        width = max(len(username) for username, _, _ in logins)
        self.stdout.write("Demo logins:")
        any_new = False
        for username, password, summary in logins:
            shown = password if password else "(unchanged)"
            any_new = any_new or password is not None
            self.stdout.write(f"  {username.ljust(width)}  {shown.ljust(14)}  {summary}")
        if not any_new:
            self.stdout.write(
                "  Passwords were printed when these users were created. "
                "New ones: .venv/bin/python manage.py seed_demo --reset-passwords"
            )
