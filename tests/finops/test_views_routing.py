"""The model routing page: per agent and step, each model's cost per call and how its runs
ended, with the cheaper models that do as well marked; finance of a team sees only its team."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cockpit.roles import Role
from fleet.models import RunKind, RunStatus, Step
from tests.finops import costdata

pytestmark = pytest.mark.django_db


def calls(agent, model: str, cost: str, *, runs: int, failed_runs: int = 0, step: str = "decide") -> None:  # noqa: ANN001
    for n in range(runs):
        status = RunStatus.FAILED if n < failed_runs else RunStatus.SUCCEEDED
        run = costdata.run(agent, cost=cost, status=status, kind=RunKind.MANAGED)
        Step.objects.create(
            run=run,
            seq=1,
            kind="llm",
            name=step,
            status="succeeded",
            model=model,
            cost=Decimal(cost),
            idempotency_key=f"{run.pk}:1",
            ended_at=run.created_at,
        )


@pytest.fixture
def history(team, other_team):  # noqa: ANN001, ANN201
    desk = costdata.agent(team, "refund-desk", "Refund desk")
    calls(desk, "openai/gpt-4o", "0.010000", runs=10, failed_runs=1)  # 90 % of runs succeed
    calls(desk, "openai/gpt-4o-mini", "0.001000", runs=10, failed_runs=1)  # as good, a tenth of the price
    calls(desk, "sim/sim-small", "0.000500", runs=10, failed_runs=5)  # cheapest, but half the runs fail
    theirs = costdata.agent(other_team, "their-agent", "Their agent")
    calls(theirs, "openai/gpt-4o", "0.020000", runs=2)
    external = costdata.agent(team, "crm-sync", "CRM sync")
    for run in [costdata.run(external) for _ in range(2)]:  # reports its steps, not what they cost
        Step.objects.create(run=run, seq=1, kind="llm", name="dedupe", status="succeeded", model="openai/gpt-4o")
    return desk


def test_cheaper_models_that_do_as_well_are_marked(client, make_user, team, history) -> None:  # noqa: ANN001
    client.force_login(make_user(Role.FINANCE, team))
    response = client.get("/finops/routing/")
    assert response.status_code == 200
    [step] = response.context["steps"]
    assert (step.agent, step.step) == ("Refund desk", "decide")
    assert [r.model for r in step.rows] == ["sim/sim-small", "openai/gpt-4o-mini", "openai/gpt-4o"]  # cheapest first
    assert step.cheaper == {"openai/gpt-4o-mini"}
    gpt4o = step.rows[2]
    assert (gpt4o.calls, gpt4o.cost_per_call, gpt4o.run_success_rate) == (10, Decimal("0.010000"), 0.9)
    page = response.content.decode()
    assert page.count("cheaper, as good</span></td>") == 1
    assert "Their agent" not in page and "CRM sync" not in page


def test_people_without_cost_access_are_refused(client, make_user, team, history) -> None:  # noqa: ANN001
    client.force_login(make_user(Role.VIEWER, team))
    assert client.get("/finops/routing/").status_code == 403


def test_a_bad_period_is_refused_with_the_reason(client, make_user, team, history) -> None:  # noqa: ANN001
    client.force_login(make_user(Role.FINANCE, team))
    response = client.get("/finops/routing/", {"range": "custom", "since": "2026-01-10", "until": "2026-01-01"})
    assert response.status_code == 400
    assert "must not be after" in response.content.decode()
