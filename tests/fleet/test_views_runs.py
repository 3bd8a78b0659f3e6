"""The runs list: scoping, filters, keyset pages, live markup, queries per page."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cockpit.roles import Role
from fleet.models import Run, RunKind, RunStatus
from fleet.selectors import RUNS_PAGE_SIZE, RunCursor, runs_page
from tests.fleet.conftest import execute

pytestmark = pytest.mark.django_db


def _bulk_runs(agent, count: int, *, at=None, **fields) -> list[Run]:  # noqa: ANN001
    """Runs straight into the table (no journal): the list only reads their columns."""
    at = at or timezone.now()
    rows = [
        Run(
            team_id=agent.team_id,
            agent=agent,
            version=agent.current_version,
            kind=RunKind.MANAGED,
            created_at=at - timedelta(seconds=n),
            **fields,
        )
        for n in range(count)
    ]
    return Run.objects.bulk_create(rows)


def _ids(response) -> list[int]:  # noqa: ANN001
    return [run.pk for run in response.context["page"].runs]


def test_runs_of_invisible_teams_are_not_listed(client, make_user, make_agent, start, team, other_team):
    ours = start(make_agent("test-linear", slug="ours"))
    start(make_agent("test-linear", slug="theirs", owner=other_team))
    client.force_login(make_user(Role.VIEWER, team))
    response = client.get(reverse("runs"))
    assert _ids(response) == [ours.pk]


def test_nav_marks_runs_as_current(client, admin_user, make_agent, start):
    run = start(make_agent("test-linear"))
    client.force_login(admin_user)
    for url in (reverse("runs"), reverse("run-detail", args=[run.pk])):
        nav = client.get(url).context["nav"]
        assert [item["label"] for item in nav if item["active"]] == ["Runs"], url


def test_filters(client, admin_user, make_agent, start, team):
    linear, boom = make_agent("test-linear"), make_agent("test-boom")
    succeeded = execute(start(linear))
    failed = execute(start(boom))
    queued = start(linear)
    Run.objects.filter(pk=failed.pk).update(created_at=timezone.now() - timedelta(days=3))
    client.force_login(admin_user)
    url = reverse("runs")
    assert set(_ids(client.get(url, {"agent": linear.pk}))) == {succeeded.pk, queued.pk}
    assert _ids(client.get(url, {"status": "failed"})) == [failed.pk]
    assert _ids(client.get(url, {"status": "active"})) == [queued.pk]
    assert _ids(client.get(url, {"kind": "external"})) == []
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert failed.pk not in _ids(client.get(url, {"since": since}))
    assert _ids(client.get(url, {"team": team.slug, "status": "succeeded"})) == [succeeded.pk]


def test_bad_filters_are_refused_with_the_reason(client, make_user, make_agent, team, other_team):
    theirs = make_agent("test-linear", slug="theirs", owner=other_team)
    client.force_login(make_user(Role.VIEWER, team))
    url = reverse("runs")
    for query, message in [
        ({"team": other_team.slug}, "Select a valid choice"),
        ({"agent": theirs.pk}, "Select a valid choice"),
        ({"status": "exploded"}, "Select a valid choice"),
        ({"since": "2030-01-02T00:00", "until": "2030-01-01T00:00"}, "must be before"),
        ({"after": "not-a-cursor"}, "This page link is broken"),
    ]:
        response = client.get(url, query)
        assert response.status_code == 400, query
        assert message in response.content.decode(), query


def test_current_team_is_the_default_filter(client, make_user, make_agent, start, team, other_team):
    from cockpit.services import membership_grant
    from tests.factories import SYSTEM

    user = make_user(Role.VIEWER, team)
    membership_grant(actor=SYSTEM, user=user, team=other_team, role=Role.VIEWER)
    start(make_agent("test-linear", slug="ours"))
    theirs = start(make_agent("test-linear", slug="theirs", owner=other_team))
    client.force_login(user)
    client.post(reverse("team-switch"), {"team": other_team.slug})
    response = client.get(reverse("runs"))
    assert _ids(response) == [theirs.pk]
    assert f'data-live-topics="team.{other_team.pk}"' in response.content.decode()
    assert len(_ids(client.get(reverse("runs"), {"team": ""}))) == 2


def test_keyset_pages_neither_skip_nor_repeat_runs_created_at_the_same_moment(admin_user, make_agent):
    agent = make_agent("test-linear")
    moment = timezone.now()
    runs = _bulk_runs(agent, 3, at=moment) + [
        Run.objects.create(team=agent.team, agent=agent, kind=RunKind.MANAGED, created_at=moment) for _ in range(4)
    ]
    seen: list[int] = []
    after = None
    while True:
        page = runs_page(admin_user, after=after, size=3)
        seen += [run.pk for run in page.runs]
        if page.older is None:
            break
        after = RunCursor.decode(page.older.encode())
    assert sorted(seen) == sorted(run.pk for run in runs)
    assert len(seen) == len(set(seen))


def test_older_pages_through_the_view(client, admin_user, make_agent):
    agent = make_agent("test-linear")
    _bulk_runs(agent, RUNS_PAGE_SIZE + 5)
    client.force_login(admin_user)
    first = client.get(reverse("runs"))
    assert len(_ids(first)) == RUNS_PAGE_SIZE
    assert first.context["older"] and 'data-live-on="run.created run.changed"' in first.content.decode()
    second = client.get(reverse("runs") + "?" + first.context["older"])
    assert len(_ids(second)) == 5
    assert not set(_ids(first)) & set(_ids(second))
    assert second.context["older"] is None
    # Older pages keep their rows: they refresh on changes, not on new runs.
    assert 'data-live-on="run.changed"' in second.content.decode()


def test_rows_show_status_directive_cost_and_unpriced_marker(client, admin_user, make_agent):
    agent = make_agent("test-linear")
    [run] = _bulk_runs(
        agent,
        1,
        status=RunStatus.RUNNING,
        pause_requested=True,
        cost=Decimal("1.5"),
        unpriced_steps=2,
        created_by_label="olivia",
    )
    client.force_login(admin_user)
    html = client.get(reverse("runs")).content.decode()
    assert "status-running" in html and "pause requested" in html
    assert "$1.50" in html and ">unpriced</span>" in html and "olivia" in html
    assert reverse("run-detail", args=[run.pk]) in html


def test_htmx_refresh_returns_only_the_rows(client, admin_user, make_agent, start):
    start(make_agent("test-linear"))
    client.force_login(admin_user)
    response = client.get(reverse("runs") + "?status=queued", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="run-rows")
    body = response.content.decode().lstrip()
    assert body.startswith('<section id="run-rows"') and "<html" not in body
    assert 'hx-get="/fleet/runs/?status=queued"' in body


def test_a_page_costs_the_same_queries_whatever_it_shows(
    client, admin_user, make_agent, django_assert_max_num_queries
):
    agent = make_agent("test-linear")
    _bulk_runs(agent, 2)
    client.force_login(admin_user)
    client.get(reverse("runs"))
    with CaptureQueriesContext(connection) as few:
        client.get(reverse("runs"), {"agent": agent.pk})
    for n in range(3):
        _bulk_runs(make_agent("test-linear", slug=f"more-{n}"), 20)
    with django_assert_max_num_queries(len(few)):
        response = client.get(reverse("runs"), {"agent": agent.pk})
    assert len(_ids(response)) == 2
    with django_assert_max_num_queries(len(few)):
        response = client.get(reverse("runs"))
    assert len(_ids(response)) == RUNS_PAGE_SIZE
