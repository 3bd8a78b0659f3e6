"""The permission matrix: role × team × object, for every view and endpoint that checks access.

A ``Case`` is one row: a user holding ``role`` in the object's own team, in another team, or no
role at all; and what must happen. Tests build the user for the case and map the outcome to
the status their endpoint returns::

    @pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}), ids=str)
    def test_revoke(case, client, team, other_team):
        client.force_login(case.make_user(team=team, other_team=other_team))
        response = client.post(url_for_object_in(team))
        assert response.status_code == case.status(ok=302)

Outcomes: ``ok`` — allowed; ``forbidden`` — sees the object but may not act (403);
``hidden`` — may not even see it (404, so its existence does not leak).
Later apps extend the matrix by passing their own ``allowed`` roles, and ``org=True`` to add
organisation-wide role holders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cockpit.roles import Role

OK, FORBIDDEN, HIDDEN = "ok", "forbidden", "hidden"


@dataclass(frozen=True)
class Case:
    role: str | None
    where: str  # "own" | "other" | "org" | "none"
    outcome: str

    def __str__(self) -> str:
        return f"{self.role or 'no-role'}-{self.where}-{self.outcome}"

    def make_user(self, *, team: Any, other_team: Any) -> Any:
        from cockpit.services import membership_grant, org_role_grant
        from tests.factories import SYSTEM, UserFactory

        user = UserFactory()
        if self.where in ("own", "other"):
            target = team if self.where == "own" else other_team
            membership_grant(actor=SYSTEM, user=user, team=target, role=self.role)
        elif self.where == "org":
            org_role_grant(actor=SYSTEM, user=user, role=self.role)
        return user

    def status(self, *, ok: int = 200, forbidden: int = 403, hidden: int = 404) -> int:
        return {OK: ok, FORBIDDEN: forbidden, HIDDEN: hidden}[self.outcome]


def matrix(*, allowed: set[str], org: bool = False, other: str = HIDDEN, no_role: str = HIDDEN) -> list[Case]:
    """Every role in the object's team (ok if in ``allowed``, else forbidden), every role in
    another team (``other``), optionally every role organisation-wide, and a user with none."""
    cases = [Case(role, "own", OK if role in allowed else FORBIDDEN) for role in Role.values]
    cases += [Case(role, "other", other) for role in Role.values]
    if org:
        cases += [Case(role, "org", OK if role in allowed else FORBIDDEN) for role in Role.values]
    cases.append(Case(None, "none", no_role))
    return cases
