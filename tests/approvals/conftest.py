from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

import tests.fleet.agents  # noqa: F401  (test agents and tools)
from approvals.services import escalation_policy_save
from cockpit.audit import Actor
from cockpit.roles import Role
from cockpit.services import group_members_set
from tests.factories import UserFactory
from tests.fleet.conftest import make_agent, start  # noqa: F401  (fixtures)

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fleet_basics(db: None, settings: Any) -> None:
    from fleet.models import ModelProvider, ProviderKind
    from fleet.providers import registry as providers
    from fleet.services import tools_sync

    ModelProvider.objects.get_or_create(name="sim", defaults={"kind": ProviderKind.SIMULATED, "options": {}})
    providers.forget()
    tools_sync()


@pytest.fixture
def approvers(team):  # noqa: ANN001, ANN201
    """Approvers of ``team`` at L1 (ana, ben), L2 (cleo) and L3 (dev); the team's escalation
    policy with those levels: 60 s, 120 s, 300 s; email at every level."""
    people = {
        name: UserFactory(username=name, roles=[(team, Role.APPROVER)]) for name in ("ana", "ben", "cleo", "dev")
    }
    groups = []
    for level, members in enumerate((["ana", "ben"], ["cleo"], ["dev"]), start=1):
        group, _ = Group.objects.get_or_create(name=f"{team.slug} L{level}")
        group_members_set(actor=SYSTEM, group=group, users=[people[m] for m in members])
        groups.append(group)
    escalation_policy_save(
        actor=SYSTEM,
        team=team,
        name="Alpha approvals",
        levels=[
            {"group": groups[0], "sla_seconds": 60, "channels": ["email"]},
            {"group": groups[1], "sla_seconds": 120, "channels": ["email"]},
            {"group": groups[2], "sla_seconds": 300, "channels": ["email"]},
        ],
    )
    return people
