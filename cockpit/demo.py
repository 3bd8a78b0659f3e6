"""Demo data of the platform: teams and a user for every role. Idempotent."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from cockpit.audit import Actor
from cockpit.models import Team
from cockpit.roles import Role
from cockpit.services import membership_grant, team_create, user_create, user_password_set

ACTOR = Actor.system("seed_demo")

TEAMS = [
    ("support", "Customer Support", "Refunds, customer email and ticket triage."),
    ("finance-ops", "Finance Operations", "Invoice intake, validation and posting."),
    ("security", "Security", "Code and infrastructure review."),
]


@dataclass(frozen=True)
class DemoUser:
    username: str
    full_name: str
    roles: tuple[tuple[str, str], ...]  # (team slug, role)
    superuser: bool = False

    @property
    def summary(self) -> str:
        if self.superuser:
            return "superuser: sees and manages everything"
        by_role: dict[str, list[str]] = {}
        for slug, role in self.roles:
            by_role.setdefault(role, []).append(slug)
        return "; ".join(f"{role} of {', '.join(slugs)}" for role, slugs in by_role.items())


USERS = [
    DemoUser("admin", "Ada Admin", (), superuser=True),
    DemoUser("olivia", "Olivia Okafor", (("support", Role.OPERATOR), ("finance-ops", Role.OPERATOR))),
    DemoUser("andre", "André Silva", (("support", Role.APPROVER),)),
    DemoUser("dana", "Dana Kim", (("support", Role.APPROVER), ("finance-ops", Role.APPROVER))),
    DemoUser(
        "fiona",
        "Fiona Walsh",
        (("support", Role.FINANCE), ("finance-ops", Role.FINANCE), ("security", Role.FINANCE)),
    ),
    DemoUser("sam", "Sam Patel", (("security", Role.ADMIN), ("security", Role.OPERATOR))),
    DemoUser("victor", "Victor Hugo", (("security", Role.VIEWER), ("support", Role.VIEWER))),
]


def seed(*, reset_passwords: bool = False) -> list[tuple[str, str | None, str]]:
    """Create what is missing; returns (username, new password or None, summary) per user."""
    teams = {}
    for slug, name, description in TEAMS:
        team = Team.objects.filter(slug=slug).first()
        teams[slug] = team or team_create(actor=ACTOR, slug=slug, name=name, description=description)

    fixed = os.environ.get("DEMO_PASSWORD") or None
    User = get_user_model()
    logins = []
    for spec in USERS:
        user = User.objects.filter(username=spec.username).first()
        password = None
        if user is None:
            password = fixed or secrets.token_urlsafe(9)
            first, _, last = spec.full_name.partition(" ")
            user = user_create(
                actor=ACTOR,
                username=spec.username,
                password=password,
                email=f"{spec.username}@example.com",
                first_name=first,
                is_superuser=spec.superuser,
            )
            user.last_name = last
            user.save(update_fields=["last_name"])
        elif reset_passwords:
            password = fixed or secrets.token_urlsafe(9)
            user_password_set(actor=ACTOR, user=user, password=password)
        for slug, role in spec.roles:
            membership_grant(actor=ACTOR, user=user, team=teams[slug], role=role)
        logins.append((spec.username, password, spec.summary))
    return logins
