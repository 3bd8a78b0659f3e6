"""The budgets pages: the list with each budget's spend in its period, creating and changing a
budget (team admins, audited), raising one that stopped work — and everyone else refused."""

from __future__ import annotations

import re
from decimal import Decimal
from html import unescape

import pytest

from cockpit.models import AuditEvent
from cockpit.roles import Role
from finops.models import Budget, BudgetAction, BudgetAlert, BudgetScope, BudgetSpend, period_bounds
from finops.services import budget_create
from tests.finops import costdata
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db


def text(response) -> str:  # noqa: ANN001
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", response.content.decode())))


@pytest.fixture
def budgets(team, other_team):  # noqa: ANN001, ANN201
    from django.utils import timezone

    alpha = budget_create(
        actor=costdata.SYSTEM, name="Alpha monthly", scope=BudgetScope.TEAM, team=team, limit_usd=200
    )
    beta = budget_create(
        actor=costdata.SYSTEM, name="Beta daily", scope=BudgetScope.TEAM, team=other_team, limit_usd=10, period="day"
    )
    org = budget_create(actor=costdata.SYSTEM, name="Everything", scope=BudgetScope.GLOBAL, limit_usd=5000)
    key, start, end = period_bounds("month", timezone.now())
    BudgetSpend.objects.create(budget=alpha, period=key, period_start=start, period_end=end, spent=Decimal("170"))
    BudgetAlert.objects.create(budget=alpha, period=key, threshold=80, spent=Decimal("170"), limit_usd=alpha.limit_usd)
    return {"alpha": alpha, "beta": beta, "org": org}


def form_data(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "Claims monthly",
        "scope": "team",
        "team": "alpha",
        "period": "month",
        "limit_usd": "1500.00",
        "thresholds": "50, 80, 100",
        "action": "pause",
        "alert_emails": "fin@example.com, owner@example.com",
        "webhook_url": "",
        "webhook_secret": "",
    }
    data.update(changes)
    return data


# --- The list ---------------------------------------------------------------------------------


def test_finance_sees_its_teams_budgets_with_their_spend(client, make_user, team, budgets) -> None:
    client.force_login(make_user(Role.FINANCE, team))
    response = client.get("/finops/budgets/")
    assert response.status_code == 200
    page = text(response)
    assert "Alpha monthly" in page and "Beta daily" not in page and "Everything" not in page
    assert "$170.00 85 %" in page and "$200.00" in page
    assert "Budget “Alpha monthly” reached 80 % of its limit" in page
    # Finance reads budgets; admins set them.
    assert "New budget" not in page and "/edit" not in page and f"/finops/budgets/{budgets['alpha'].pk}/" not in page


def test_organisation_wide_admins_see_every_budget(client, superuser, budgets) -> None:
    client.force_login(superuser)
    page = text(client.get("/finops/budgets/"))
    assert all(name in page for name in ("Alpha monthly", "Beta daily", "Everything"))


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR, Role.APPROVER])
def test_roles_without_cost_access_are_refused(client, make_user, team, budgets, role) -> None:  # noqa: ANN001
    client.force_login(make_user(role, team))
    assert client.get("/finops/budgets/").status_code == 403
    assert client.get(f"/finops/budgets/{budgets['alpha'].pk}/").status_code in (403, 404)


def test_an_empty_list_says_what_budgets_are_for(client, admin_user) -> None:
    client.force_login(admin_user)
    page = text(client.get("/finops/budgets/"))
    assert "No active budget" in page and "New budget" in page


# --- Create -----------------------------------------------------------------------------------


def test_a_team_admin_creates_a_budget(client, admin_user, team) -> None:
    client.force_login(admin_user)
    assert client.get("/finops/budgets/new/").status_code == 200
    response = client.post("/finops/budgets/new/", form_data())
    assert response.status_code == 302 and response["Location"] == "/finops/budgets/"
    budget = Budget.objects.get(name="Claims monthly")
    assert (budget.team, budget.scope, budget.limit_usd, budget.thresholds) == (team, "team", 1500, [50, 80, 100])
    assert budget.alert_emails == ["fin@example.com", "owner@example.com"]
    event = AuditEvent.objects.get(action="budget.create")
    assert event.actor_label == admin_user.username
    assert "Budget “Claims monthly” is active." in text(client.get("/finops/budgets/"))


def test_an_agent_budget_takes_its_agents_team(client, admin_user, team) -> None:
    agent = costdata.agent(team, "refund-desk")
    client.force_login(admin_user)
    response = client.post(
        "/finops/budgets/new/",
        form_data(scope="agent", team="", agent=agent.pk, action=BudgetAction.DEGRADE, period="run", limit_usd="2"),
    )
    assert response.status_code == 302
    budget = Budget.objects.get()
    assert (budget.agent, budget.team, budget.period, budget.action) == (agent, team, "run", "degrade")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"limit_usd": "0"}, "limit_usd", "greater than or equal to 0.01"),
        ({"limit_usd": "lots"}, "limit_usd", "Enter a number."),
        ({"thresholds": "50, eighty"}, "thresholds", "Whole percentages"),
        ({"thresholds": "0, 100"}, "thresholds", "between 1 and 1000"),
        ({"alert_emails": "fin@example.com, nobody"}, "alert_emails", "nobody is not an email address."),
        ({"team": ""}, "team", "Choose the team this budget covers."),
        ({"team": "beta"}, "team", "Select a valid choice"),  # not a team this admin manages
        ({"scope": "agent"}, "agent", "Choose the agent this budget covers."),
        ({"scope": "tag", "tag": "claims"}, "tag", "A tag is key=value"),
        ({"scope": "global", "team": ""}, "team", "Only organisation-wide admins"),
        ({"name": ""}, "name", "This field is required."),
    ],
)
def test_a_budget_that_does_not_make_sense_is_refused(client, admin_user, other_team, changes, field, message) -> None:  # noqa: ANN001
    client.force_login(admin_user)
    response = client.post("/finops/budgets/new/", form_data(**changes))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Budget.objects.exists()


def test_an_agent_of_another_team_cannot_be_chosen(client, admin_user, other_team) -> None:
    foreign = costdata.agent(other_team, "beta-bot")
    client.force_login(admin_user)
    response = client.post("/finops/budgets/new/", form_data(scope="agent", agent=foreign.pk))
    assert response.status_code == 400 and "agent" in response.context["form"].errors
    assert not Budget.objects.exists()


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}), ids=str)
def test_who_may_create_budgets(case, client, team, other_team) -> None:  # noqa: ANN001
    """Admins set budgets for their teams; nobody else may (an admin of another team may, for
    that team only: this form names alpha)."""
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post("/finops/budgets/new/", form_data())
    if case.outcome == "ok":
        assert response.status_code == 302 and Budget.objects.filter(team=team).exists()
    elif case.role == Role.ADMIN:  # admin of beta: alpha is not among the teams offered
        assert response.status_code == 400 and not Budget.objects.exists()
    else:
        assert response.status_code == 403 and not Budget.objects.exists()


def test_organisation_wide_admins_set_global_budgets(client, superuser) -> None:
    client.force_login(superuser)
    response = client.post("/finops/budgets/new/", form_data(scope="global", team="", name="All of it"))
    assert response.status_code == 302
    assert Budget.objects.get().scope == "global"


# --- Edit and raise ---------------------------------------------------------------------------


def test_an_admin_changes_a_budget(client, admin_user, budgets) -> None:
    budget = budgets["alpha"]
    client.force_login(admin_user)
    page = client.get(f"/finops/budgets/{budget.pk}/")
    assert page.status_code == 200 and "Team Alpha" in text(page)
    response = client.post(
        f"/finops/budgets/{budget.pk}/",
        form_data(limit_usd="250", thresholds="80, 100", action="alert", active="on", scope="global", team="beta"),
    )
    assert response.status_code == 302
    budget.refresh_from_db()
    assert (budget.limit_usd, budget.thresholds, budget.action) == (250, [80, 100], "alert")
    assert (budget.scope, budget.team.slug) == ("team", "alpha")  # fixed once created, whatever is posted
    event = AuditEvent.objects.get(action="budget.update")
    assert Decimal(event.before["limit_usd"]) == 200 and Decimal(event.after["limit_usd"]) == 250


def test_deactivating_a_budget(client, admin_user, budgets) -> None:
    budget = budgets["alpha"]
    client.force_login(admin_user)
    data = form_data(name=budget.name, limit_usd="200")  # "active" unchecked
    assert client.post(f"/finops/budgets/{budget.pk}/", data).status_code == 302
    budget.refresh_from_db()
    assert not budget.active
    listed = client.get("/finops/budgets/")
    assert [s.budget for s in listed.context["statuses"]] == []
    # Still listed, switched off, to switch back on.
    assert listed.context["inactive"] == [budget] and "Switched off" in text(listed)
    again = form_data(name=budget.name, limit_usd="200", active="on")
    assert client.post(f"/finops/budgets/{budget.pk}/", again).status_code == 302
    budget.refresh_from_db()
    assert budget.active


def test_the_webhook_secret_is_kept_unless_a_new_one_is_typed(client, admin_user, team) -> None:
    budget = budget_create(
        actor=costdata.SYSTEM,
        name="Hooked",
        scope=BudgetScope.TEAM,
        team=team,
        limit_usd=10,
        webhook_url="https://hooks.example.com/b",
        webhook_secret="s3cret",
    )
    client.force_login(admin_user)
    page = client.get(f"/finops/budgets/{budget.pk}/").content.decode()
    assert "s3cret" not in page
    client.post(f"/finops/budgets/{budget.pk}/", form_data(name="Hooked", webhook_url="https://hooks.example.com/b"))
    budget.refresh_from_db()
    assert budget.webhook_secret == "s3cret"


def test_budgets_of_other_teams_are_not_found_and_finance_may_not_change_them(
    client, make_user, team, budgets
) -> None:
    client.force_login(make_user(Role.ADMIN, team))
    assert client.get(f"/finops/budgets/{budgets['beta'].pk}/").status_code == 404
    assert client.post(f"/finops/budgets/{budgets['beta'].pk}/raise/", {"limit_usd": "99"}).status_code == 404
    assert client.get(f"/finops/budgets/{budgets['org'].pk}/").status_code == 404
    client.force_login(make_user(Role.FINANCE, team))
    assert client.get(f"/finops/budgets/{budgets['alpha'].pk}/").status_code == 403
    assert client.post(f"/finops/budgets/{budgets['alpha'].pk}/", form_data()).status_code == 403
    assert Budget.objects.get(pk=budgets["alpha"].pk).limit_usd == 200


def test_raising_a_budget(client, admin_user, budgets) -> None:
    budget = budgets["alpha"]
    client.force_login(admin_user)
    response = client.post(
        f"/finops/budgets/{budget.pk}/raise/", {"limit_usd": "400", "reason": "quarter close", "resume_runs": "on"}
    )
    assert response.status_code == 302
    budget.refresh_from_db()
    assert budget.limit_usd == 400
    assert AuditEvent.objects.get(action="budget.raise").reason == "quarter close"
    assert "Budget “Alpha monthly” raised to $400.00." in text(client.get("/finops/budgets/"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"limit_usd": "150", "reason": "x"}, "Raise the limit above $200.00."),
        ({"limit_usd": "400", "reason": ""}, "Say why the budget is raised."),
        ({"limit_usd": "", "reason": "more"}, "This field is required."),
    ],
)
def test_a_raise_that_is_not_one_is_refused(client, admin_user, budgets, data, message) -> None:  # noqa: ANN001
    budget = budgets["alpha"]
    client.force_login(admin_user)
    response = client.post(f"/finops/budgets/{budget.pk}/raise/", data)
    assert response.status_code == 400
    assert message in text(response)
    budget.refresh_from_db()
    assert budget.limit_usd == 200
