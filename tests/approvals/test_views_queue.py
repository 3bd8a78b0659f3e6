"""The approvals queue: who sees what ("my queue" is exactly what check_decider allows), filters,
counts per level, deadlines, pages, live markup, and a fixed number of queries for 10,000
pending requests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalKind, ApprovalRequest, EscalationPolicy
from approvals.selectors import PAGE_SIZE
from approvals.services import approval_request_create, check_decider
from cockpit.audit import Actor
from cockpit.roles import Role
from fleet.models import Agent, Run, Tier
from tests.factories import SYSTEM, UserFactory
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
QUEUE = "/approvals/"
EXPLAINED = {
    "explain": "a human must decide (high-risk-needs-a-human)",
    "rules": "high-risk-needs-a-human",
    "policies": ["global v1"],
    "context": {"confidence_pct": 70, "sample": 3},
}


def ask(
    agent: Agent, *, arguments: dict[str, Any] | None = None, run: Run | None = None, **fields: Any
) -> ApprovalRequest:
    """A pending request of ``agent``, as the runtime's gate would make it (no notifications)."""
    fields.setdefault("action", "test.effect")
    fields.setdefault("risk", "high")
    fields.setdefault("confidence", 0.7)
    request, _ = approval_request_create(
        actor=SYSTEM,
        agent=agent,
        arguments=arguments if arguments is not None else {"label": "refund-1"},
        reasoning="the parcel arrived broken",
        policy_decision=EXPLAINED,
        run=run,
        notify=False,
        **fields,
    )
    return request


def run_started_by(user, agent: Agent) -> Run:  # noqa: ANN001
    from fleet.services import run_create

    run, _ = run_create(actor=Actor.for_user(user), agent=agent, input={})
    return run


def shown(response) -> list[int]:  # noqa: ANN001
    return [row.request.pk for row in response.context["queue"].rows]


@pytest.fixture
def agent(make_agent):  # noqa: ANN001, ANN201
    return make_agent("test-approval", tier=Tier.ASSISTED)


# --- Who sees what ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_all_pending_lists_the_requests_of_teams_the_user_sees(case, client, agent, team, other_team) -> None:
    request = ask(agent)
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(QUEUE, {"view": "all"})
    assert response.status_code == 200
    assert shown(response) == ([request.pk] if case.outcome == "ok" else [])


@pytest.mark.parametrize("case", matrix(allowed={Role.APPROVER, Role.ADMIN}, org=True), ids=str)
def test_my_queue_holds_what_the_user_may_decide(case, client, agent, team, other_team) -> None:
    request = ask(agent)  # no escalation policy: any approver of the team decides
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(QUEUE, {"view": "mine"})
    assert response.status_code == 200
    assert shown(response) == ([request.pk] if case.outcome == "ok" else [])


def test_my_queue_is_exactly_what_check_decider_allows(
    agent, make_agent, approvers, team, make_user, superuser, client
) -> None:
    """The queue's SQL and the service's check must agree, request by request and user by user:
    levels with and without a group, reviews, separation of duties, superusers."""
    from approvals.services import escalation_policy_save

    admin = make_user(Role.ADMIN, team, username="adele")
    viewer = make_user(Role.VIEWER, team, username="vera")
    open_agent = make_agent("test-approval", slug="open-agent", tier=Tier.ASSISTED)
    escalation_policy_save(
        actor=SYSTEM, team=team, name="Open", agent=open_agent, levels=[{"group": None, "sla_seconds": 60}]
    )
    at_l1, at_l2, at_l3, level_4 = ask(agent), ask(agent), ask(agent), ask(agent)
    for request, level in ((at_l2, 2), (at_l3, 3), (level_4, 4)):  # the path has no L4: any approver
        ApprovalRequest.objects.filter(pk=request.pk).update(level=level)
    review = ask(agent, kind=ApprovalKind.REVIEW)  # at L1, whose group cleo is not in
    anas_run = ask(agent, run=run_started_by(approvers["ana"], agent))
    ungrouped = ask(open_agent)
    pending = list(ApprovalRequest.objects.filter(status="pending").select_related("team", "escalation_policy"))

    for user in [*approvers.values(), admin, viewer, superuser]:
        allowed = set()
        for request in pending:
            try:
                check_decider(user, request)
            except PermissionDenied:
                continue
            allowed.add(request.pk)
        client.force_login(user)
        assert set(shown(client.get(QUEUE, {"view": "mine"}))) == allowed, user.username
    # The cases are the ones meant.
    client.force_login(approvers["ana"])
    ana = set(shown(client.get(QUEUE, {"view": "mine"})))
    assert ana == {at_l1.pk, review.pk, level_4.pk, ungrouped.pk}
    client.force_login(approvers["ben"])  # ana started that run; ben, in the same group, decides it
    assert set(shown(client.get(QUEUE, {"view": "mine"}))) == ana | {anas_run.pk}
    client.force_login(approvers["cleo"])
    assert set(shown(client.get(QUEUE, {"view": "mine"}))) == {at_l2.pk, review.pk, level_4.pk, ungrouped.pk}
    client.force_login(viewer)
    assert shown(client.get(QUEUE, {"view": "mine"})) == []


def test_all_pending_marks_what_the_user_may_not_decide(client, agent, approvers) -> None:
    at_l1, at_l2 = ask(agent), ask(agent)
    ApprovalRequest.objects.filter(pk=at_l2.pk).update(level=2)
    client.force_login(approvers["ana"])
    response = client.get(QUEUE, {"view": "all"})
    decidable = {row.request.pk: row.can_decide for row in response.context["queue"].rows}
    assert decidable == {at_l1.pk: True, at_l2.pk: False}
    html = response.content.decode()
    row_l2 = html.split(f'data-approval-row="{at_l2.pk}"')[0].rsplit("<a ", 1)[1]
    assert "is-readonly" in row_l2
    assert "view only" in html.split(f'data-approval-row="{at_l2.pk}"')[1].split("</a>")[0]


def test_people_who_decide_nothing_start_on_all_pending(client, agent, team, make_user) -> None:
    request = ask(agent)
    client.force_login(make_user(Role.OPERATOR, team))
    response = client.get(QUEUE)
    assert response.context["mine"] is False and shown(response) == [request.pk]
    client.force_login(make_user(Role.APPROVER, team))
    assert client.get(QUEUE).context["mine"] is True


def test_decided_requests_leave_the_queue(client, agent, admin_user) -> None:
    from approvals.services import approval_decide

    kept, decided = ask(agent), ask(agent)
    approval_decide(actor=SYSTEM, request=decided, approve=True)
    client.force_login(admin_user)
    assert shown(client.get(QUEUE, {"view": "all"})) == [kept.pk]


# --- Order, filters, counts, pages ------------------------------------------------------------


def test_soonest_deadline_first_with_filters_and_counts(client, make_agent, agent, approvers, team) -> None:
    other = make_agent("test-approval", slug="other-agent", tier=Tier.ASSISTED)
    later = ask(agent, risk="medium")
    sooner = ask(other, risk="high")
    review = ask(agent, kind=ApprovalKind.REVIEW, risk="low")
    at_l2 = ask(agent)
    now = timezone.now()
    for request, minutes in ((later, 9), (sooner, 1), (review, 5), (at_l2, 3)):
        ApprovalRequest.objects.filter(pk=request.pk).update(deadline=now + timedelta(minutes=minutes))
    ApprovalRequest.objects.filter(pk=at_l2.pk).update(level=2)
    client.force_login(UserFactory(is_superuser=True))

    response = client.get(QUEUE, {"view": "all"})
    assert shown(response) == [sooner.pk, at_l2.pk, review.pk, later.pk]
    assert response.context["queue"].level_counts == {1: 3, 2: 1, 3: 0, 4: 0}
    assert shown(client.get(QUEUE, {"view": "all", "agent": other.pk})) == [sooner.pk]
    assert shown(client.get(QUEUE, {"view": "all", "risk": "medium"})) == [later.pk]
    assert shown(client.get(QUEUE, {"view": "all", "kind": "review"})) == [review.pk]
    assert shown(client.get(QUEUE, {"view": "all", "team": team.slug, "level": 2})) == [at_l2.pk]
    by_level = client.get(QUEUE, {"view": "all", "level": 1})
    # The counts keep every level (they are how one switches level); the total follows the filter.
    assert by_level.context["queue"].level_counts[2] == 1 and by_level.context["queue"].total == 3


def test_bad_filters_are_refused_with_the_reason(client, make_user, make_agent, team, other_team) -> None:
    theirs = make_agent("test-approval", slug="theirs", owner=other_team)
    client.force_login(make_user(Role.APPROVER, team))
    for query in ({"team": other_team.slug}, {"agent": theirs.pk}, {"risk": "extreme"}, {"level": 7}, {"limit": "-1"}):
        response = client.get(QUEUE, query)
        assert response.status_code == 400, query
        assert "Select a valid choice" in response.content.decode() or "Ensure this value" in response.content.decode()


def test_first_fifty_then_more(client, agent, admin_user) -> None:
    for _ in range(PAGE_SIZE + 7):
        ask(agent)
    client.force_login(admin_user)
    first = client.get(QUEUE, {"view": "all"})
    assert len(shown(first)) == PAGE_SIZE and first.context["queue"].total == PAGE_SIZE + 7
    html = first.content.decode()
    assert "data-approval-more" in html and "limit=100" in html
    more = client.get(QUEUE, {"view": "all", "limit": 100})
    assert len(shown(more)) == PAGE_SIZE + 7 and "data-approval-more" not in more.content.decode()


def test_the_current_team_is_the_default_filter(client, make_user, make_agent, team, other_team) -> None:
    from cockpit.services import membership_grant

    user = make_user(Role.APPROVER, team)
    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.APPROVER)
    ours = ask(make_agent("test-approval", slug="ours"))
    theirs = ask(make_agent("test-approval", slug="theirs", owner=other_team))
    client.force_login(user)
    client.post(reverse("team-switch"), {"team": other_team.slug})
    response = client.get(QUEUE)
    assert shown(response) == [theirs.pk]
    assert f'data-live-topics="team.{other_team.pk}"' in response.content.decode()
    assert set(shown(client.get(QUEUE, {"team": ""}))) == {ours.pk, theirs.pk}


# --- Markup: countdowns, live, toasts, the pane -----------------------------------------------


def test_rows_carry_the_deadline_and_the_levels_sla_for_the_countdown(client, agent, approvers) -> None:
    request = ask(agent)
    client.force_login(approvers["ana"])
    html = client.get(QUEUE).content.decode()
    row = html.split(f'data-approval-row="{request.pk}"')[1].split("</a>")[0]
    assert (
        f'datetime="{request.deadline.isoformat()}"' in row or f'datetime="{request.deadline:%Y-%m-%dT%H:%M:%S}' in row
    )
    assert "data-countdown" in row and 'data-sla="60"' in row  # L1 of the approvers' policy
    assert "L1<span" in row and "/3</span>" in row
    assert "test.effect" in row and "label refund-1" in row and "70 % sure" in row and "high risk" in row


def test_the_list_is_live_and_refreshes_as_a_fragment(client, agent, admin_user) -> None:
    ask(agent)
    client.force_login(admin_user)
    html = client.get(QUEUE).content.decode()
    assert 'data-live-on="approval.created approval.changed"' in html
    assert 'hx-trigger="live"' in html.split('id="approval-queue"')[1].split(">")[0]
    response = client.get(QUEUE + "?view=all", HTTP_HX_TARGET="approval-queue", **HTMX)
    body = response.content.decode().lstrip()
    assert body.startswith('<section id="approval-queue"') and "<html" not in body
    assert 'hx-get="/approvals/?view=all"' in body


def test_the_page_says_which_toasts_are_for_this_user(client, agent, approvers, team, superuser) -> None:
    levels = EscalationPolicy.objects.get(team=team).levels.order_by("level")
    client.force_login(approvers["cleo"])
    html = client.get(QUEUE).content.decode()
    assert f'data-decider-levels="{levels[1].pk}"' in html
    assert f'data-approver-teams="{team.pk}"' in html and 'data-decides-all="false"' in html
    client.force_login(superuser)
    html = client.get(QUEUE).content.decode()
    assert 'data-decides-all="true"' in html and 'data-approver-teams="*"' in html


def test_selected_opens_the_pane_and_an_invisible_one_says_not_found(
    client, make_agent, agent, admin_user, other_team
) -> None:
    request = ask(agent)
    theirs = ask(make_agent("test-approval", slug="theirs", owner=other_team))
    client.force_login(admin_user)
    html = client.get(QUEUE, {"selected": request.pk}).content.decode()
    assert f'data-approval-id="{request.pk}"' in html and "is-selected" in html
    missing = client.get(QUEUE, {"selected": theirs.pk})
    assert missing.status_code == 200 and "Request not found" in missing.content.decode()
    assert "test.effect" not in missing.content.decode().split('id="approval-pane"')[1]


# --- Scale ------------------------------------------------------------------------------------


def _bulk_pending(agents: list[Agent], count: int) -> None:
    now = timezone.now()
    policy = EscalationPolicy.objects.filter(team=agents[0].team).first()
    ApprovalRequest.objects.bulk_create(
        [
            ApprovalRequest(
                team_id=agents[n % len(agents)].team_id,
                agent=agents[n % len(agents)],
                action="test.effect",
                arguments={"label": f"bulk-{n}"},
                risk=("low", "medium", "high")[n % 3],
                confidence=(n % 100) / 100,
                escalation_policy=policy,
                level=1 + n % 3,
                deadline=now + timedelta(seconds=30 + n),
                requested_by_label="tests",
            )
            for n in range(count)
        ],
        batch_size=1000,
    )


@pytest.mark.parametrize("view", ["mine", "all"])
def test_ten_thousand_pending_cost_the_same_queries_as_three(
    view, client, make_agent, agent, approvers, django_assert_max_num_queries
) -> None:
    others = [make_agent("test-approval", slug=f"more-{n}", tier=Tier.ASSISTED) for n in range(3)]
    _bulk_pending([agent], 3)
    client.force_login(approvers["cleo"])
    client.get(QUEUE, {"view": view})
    with CaptureQueriesContext(connection) as few:
        client.get(QUEUE, {"view": view})
    _bulk_pending([agent, *others], 10_000)
    with django_assert_max_num_queries(len(few)):
        response = client.get(QUEUE, {"view": view})
    assert len(shown(response)) == PAGE_SIZE
    with django_assert_max_num_queries(len(few)):
        client.get(QUEUE + f"?view={view}", HTTP_HX_TARGET="approval-queue", **HTMX)
    deadlines = [row.request.deadline for row in response.context["queue"].rows]
    assert deadlines == sorted(deadlines)


@pytest.mark.parametrize("mine", [True, False])
def test_the_queue_reads_the_partial_index(mine, agent, approvers) -> None:
    """The page of rows is read through (team, deadline) WHERE status = 'pending'."""
    from approvals import selectors

    _bulk_pending([agent], 50)
    user = approvers["cleo"]
    with CaptureQueriesContext(connection) as queries:
        selectors.queue(user, selectors.decider_for(user), mine=mine)
    page = next(q["sql"] for q in queries if "LIMIT" in q["sql"] and "ORDER BY" in q["sql"] and "deadline" in q["sql"])
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {page}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {page}")
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "approval_team_pending" in plan, plan
