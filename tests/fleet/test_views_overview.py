"""The fleet overview's agent tiles: what each role sees, the figures, live markup, queries."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cockpit.roles import Role
from fleet.models import Run, RunStatus, Step, StepKind
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db


def _tiles(client) -> dict[str, object]:  # noqa: ANN001
    return {tile.agent.slug: tile for tile in client.get("/").context["tiles"]}


def test_tiles_show_only_agents_of_visible_teams(client, make_user, make_agent, team, other_team):
    make_agent("test-linear", slug="ours")
    make_agent("test-linear", slug="theirs", owner=other_team)
    client.force_login(make_user(Role.VIEWER, team))
    assert set(_tiles(client)) == {"ours"}


def test_tiles_follow_the_team_switcher(client, make_user, make_agent, team, other_team):
    from cockpit.services import membership_grant
    from tests.factories import SYSTEM

    user = make_user(Role.OPERATOR, team)
    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.VIEWER)
    make_agent("test-linear", slug="ours")
    make_agent("test-linear", slug="theirs", owner=other_team)
    client.force_login(user)
    assert set(_tiles(client)) == {"ours", "theirs"}
    client.post(reverse("team-switch"), {"team": other_team.slug})
    assert set(_tiles(client)) == {"theirs"}


def test_tile_figures(client, admin_user, make_agent, start):
    agent = make_agent("test-linear")
    waiting = make_agent("test-approval", slug="approver", tier=3)
    execute(start(agent))  # succeeded
    start(agent)  # queued: active
    failed = execute(start(agent))
    Run.objects.filter(pk=failed.pk).update(status=RunStatus.FAILED)
    old = execute(start(agent))  # ended two days ago: outside the 24 h window
    Run.objects.filter(pk=old.pk).update(
        ended_at=timezone.now() - timedelta(days=2),
        created_at=timezone.now() - timedelta(days=2),
        cost=Decimal("5"),
    )
    Run.objects.filter(agent=agent).exclude(pk=old.pk).update(cost=Decimal("0.25"))
    assert execute(start(waiting)).status == RunStatus.WAITING_APPROVAL
    client.force_login(admin_user)

    tiles = _tiles(client)
    tile = tiles["test-linear"]
    assert tile.active_runs == 1
    assert (tile.succeeded, tile.finished) == (1, 2)
    assert tile.success_rate == 50
    assert tile.cost_today == Decimal("0.75")  # three runs created today, not the old one
    assert tiles["approver"].waiting_approval == 1
    assert tiles["approver"].active_runs == 1


def test_p95_step_latency_is_the_nearest_rank_of_llm_and_tool_steps(client, admin_user, make_agent, start):
    agent = make_agent("test-effects")
    run = execute(start(agent, labels=[f"l{n}" for n in range(19)]))  # 20 tool steps
    now = timezone.now()
    timed = list(run.steps.filter(kind=StepKind.TOOL).order_by("seq"))
    assert len(timed) == 20
    for seconds, step in enumerate(timed, start=1):
        Step.objects.filter(pk=step.pk).update(started_at=now - timedelta(seconds=seconds), ended_at=now)
    # Only LLM and tool calls count: a slow checkpoint (or an approval's human wait) does not.
    run.steps.exclude(kind=StepKind.TOOL).update(started_at=now - timedelta(hours=3))
    client.force_login(admin_user)
    # The 19th of 20 durations (1 s … 20 s): not the maximum, not an average.
    assert _tiles(client)["test-effects"].p95_step_seconds == pytest.approx(19)


def test_operators_get_the_controls_and_viewers_do_not(client, make_user, make_agent, team):
    agent = make_agent("test-linear")
    status_url = reverse("agent-status", args=[agent.pk])
    client.force_login(make_user(Role.OPERATOR, team))
    assert status_url in client.get("/").content.decode()
    client.force_login(make_user(Role.VIEWER, team))
    assert status_url not in client.get("/").content.decode()


def test_quarantined_tile_shows_the_reason_and_offers_reactivation(client, make_user, make_agent, team):
    from fleet.services import agent_set_status
    from tests.factories import SYSTEM

    agent = make_agent("test-linear")
    agent_set_status(actor=SYSTEM, agent=agent, status="quarantined", reason="refunds twice")
    client.force_login(make_user(Role.OPERATOR, team))
    html = client.get("/").content.decode()
    assert "refunds twice" in html
    assert "Quarantined" in html
    assert "?status=active" in html and "?status=quarantined" not in html


def test_tiles_are_a_live_fragment(client, admin_user, make_agent):
    make_agent("test-linear")
    client.force_login(admin_user)
    html = client.get("/").content.decode()
    assert 'id="fleet-tiles"' in html
    assert 'data-live-on="run.changed run.created agent.changed"' in html
    fragment = client.get("/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="fleet-tiles")
    body = fragment.content.decode().lstrip()
    assert body.startswith('<section id="fleet-tiles"') and "<html" not in body
    assert "Test-Linear" in body
    assert "counters" not in fragment.context


def test_overview_queries_do_not_grow_with_agents_or_runs(
    client, admin_user, make_agent, start, django_assert_max_num_queries
):
    first = make_agent("test-linear", slug="first")
    execute(start(first))
    client.force_login(admin_user)
    client.get("/")  # warm the per-process caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        client.get("/")
    for n in range(4):
        agent = make_agent("test-llm", slug=f"more-{n}")
        execute(start(agent))
        start(agent)
    with django_assert_max_num_queries(len(few)):
        response = client.get("/")
    assert len(response.context["tiles"]) == 5
