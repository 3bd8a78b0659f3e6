"""Discovered agents: agents that send spans but are not in the fleet, listed for review, adopted
with one click (admins), their past spans linked in the background with progress; and the banner
on the fleet's agents page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.roles import Role
from cockpit.services import api_key_create
from fleet.models import Agent, AgentKind
from fleet.services import agent_create
from tests.support import otel
from tests.support.matrix import matrix
from tests.traces.conftest import post
from traces.models import DiscoveredAgent, Span, Trace
from traces.services import discovered_spans_link_batch, link_progress

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")


def send(client, key: str, agent: str, service: str = "refunds-lambda", times: int = 1) -> None:  # noqa: ANN001
    for _ in range(times):
        capture = otel.Capture(service=service)
        otel.genai_refund_trace(capture, agent=agent)
        assert post(client, key, otel.protobuf(capture.spans)).status_code == 200


@pytest.fixture
def shadow(client, ingest_key, django_capture_on_commit_callbacks) -> DiscoveredAgent:  # noqa: ANN001
    with django_capture_on_commit_callbacks(execute=True):  # later sightings are counted after commit
        send(client, ingest_key, "shadow-refunder", times=3)
    return DiscoveredAgent.objects.get(key="shadow-refunder")


@pytest.fixture
def admin(make_user, team):  # noqa: ANN001, ANN201
    return make_user(Role.ADMIN, team, username="alice")


# --- The list ---------------------------------------------------------------------------------


def test_the_page_lists_agents_that_send_spans_but_are_not_in_the_fleet(
    client, shadow, make_user, team, other_team
) -> None:
    their_key = api_key_create(actor=SYSTEM, team=other_team, name="otel", scopes=["ingest"])[1]
    send(client, their_key, "their-secret-agent")
    client.force_login(make_user(Role.VIEWER, team))
    page = client.get(reverse("discovered")).content.decode()
    assert "shadow-refunder" in page and "refunds-lambda" in page
    assert '<td class="num">3</td>' in page  # one agent span in each of 3 traces
    assert "their-secret-agent" not in page
    assert "admins adopt" in page and "Adopt</button>" not in page  # a viewer sees, does not adopt


def test_the_live_rows_fragment_is_what_the_page_re_fetches(client, shadow, admin) -> None:
    client.force_login(admin)
    response = client.get(reverse("discovered"), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="discovered-rows")
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="discovered-rows"') and "shadow-refunder" in body
    assert "<html" not in body


def test_nothing_to_review_says_so(client, admin) -> None:
    client.force_login(admin)
    assert "No shadow agents" in client.get(reverse("discovered")).content.decode()


# --- Adopting ---------------------------------------------------------------------------------


def test_one_click_adopts_the_agent_and_links_its_past_spans(
    client, shadow, admin, team, django_capture_on_commit_callbacks
) -> None:
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=True):  # the linking task runs eagerly in tests
        response = client.post(reverse("discovered-adopt", args=[shadow.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("discovered")
    agent = Agent.objects.get(team=team, slug="shadow-refunder")
    assert (agent.kind, agent.name) == (AgentKind.EXTERNAL, "shadow-refunder")
    assert set(Trace.objects.filter(agent_key="shadow-refunder").values_list("agent_id", flat=True)) == {agent.pk}
    assert set(Span.objects.filter(agent_key="shadow-refunder").values_list("agent_id", flat=True)) == {agent.pk}
    shadow.refresh_from_db()
    assert (shadow.adopted_as, shadow.adopted_by_label) == (agent, "alice")
    assert AuditEvent.objects.get(action="agent.adopt").actor_user == admin
    page = client.get(response["Location"]).content.decode()
    assert "is now an agent of Alpha" in page
    assert "Adopted" in page and reverse("agent-detail", args=[agent.pk]) in page
    assert "3 past spans" in page
    assert "No shadow agents" in page


def test_adopting_with_a_name_and_slug_of_ones_choice(client, shadow, admin, team) -> None:
    client.force_login(admin)
    data = {"name": "Refund Lambda", "slug": "refund-lambda"}
    assert client.post(reverse("discovered-adopt", args=[shadow.pk]), data).status_code == 302
    assert Agent.objects.get(team=team, slug="refund-lambda").name == "Refund Lambda"


@pytest.mark.parametrize("case", matrix(allowed={Role.ADMIN}, org=True), ids=str)
def test_adopting_takes_the_manage_permission(case, client, shadow, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("discovered-adopt", args=[shadow.pk]))
    assert response.status_code == case.status(ok=302)
    shadow.refresh_from_db()
    assert (shadow.adopted_as_id is not None) == (case.outcome == "ok")
    assert Agent.objects.filter(slug="shadow-refunder").exists() == (case.outcome == "ok")


def test_a_slug_already_taken_is_refused_with_a_way_out(client, shadow, admin, team) -> None:
    agent_create(actor=SYSTEM, team=team, slug="shadow-refunder", name="Someone else", kind=AgentKind.EXTERNAL)
    client.force_login(admin)
    response = client.post(reverse("discovered-adopt", args=[shadow.pk]))
    page = response.content.decode()
    assert response.status_code == 400
    assert "The team already has an agent &#x27;shadow-refunder&#x27;: choose another slug." in page
    assert '<details class="discovered-adopt-as" open>' in page  # the form to choose another is open
    shadow.refresh_from_db()
    assert shadow.adopted_as is None
    assert not Span.objects.filter(agent_key="shadow-refunder", agent__isnull=False).exists()
    fixed = client.post(reverse("discovered-adopt", args=[shadow.pk]), {"slug": "shadow-refunder-2"})
    assert fixed.status_code == 302


def test_a_bad_slug_is_refused(client, shadow, admin) -> None:
    client.force_login(admin)
    response = client.post(reverse("discovered-adopt", args=[shadow.pk]), {"slug": "not a slug!"})
    assert response.status_code == 400
    assert "Enter a valid “slug”" in response.content.decode()
    assert not Agent.objects.exists()


def test_an_agent_is_adopted_once(client, shadow, admin) -> None:
    client.force_login(admin)
    assert client.post(reverse("discovered-adopt", args=[shadow.pk])).status_code == 302
    again = client.post(reverse("discovered-adopt", args=[shadow.pk]), {"slug": "another"})
    assert again.status_code == 400 and "was adopted already" in again.content.decode()
    assert Agent.objects.count() == 1


# --- Linking in the background ----------------------------------------------------------------


def test_past_spans_are_linked_after_the_answer_with_progress(
    client, shadow, admin, django_capture_on_commit_callbacks
) -> None:
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert client.post(reverse("discovered-adopt", args=[shadow.pk])).status_code == 302
    assert Span.objects.filter(agent_key="shadow-refunder", agent__isnull=True).count() == 3  # not yet
    for callback in callbacks:
        callback()  # the linking task (eager in tests) after the commit
    assert not Span.objects.filter(agent_key="shadow-refunder", agent__isnull=True).exists()
    progress = link_progress(shadow.pk)
    assert progress is not None and (progress.done, progress.linked, progress.percent) == (True, 3, 100)


def test_linking_walks_the_span_table_in_ranges_and_reports_progress(client, ingest_key, team) -> None:
    send(client, ingest_key, "noise-agent", times=2)
    send(client, ingest_key, "shadow-refunder", times=2)
    send(client, ingest_key, "noise-agent", times=2)
    found = DiscoveredAgent.objects.get(key="shadow-refunder")
    agent = agent_create(actor=SYSTEM, team=team, slug="shadow", name="Shadow", kind=AgentKind.EXTERNAL)
    DiscoveredAgent.objects.filter(pk=found.pk).update(adopted_as=agent)  # adopted; linking not yet run
    ids = sorted(Span.objects.values_list("id", flat=True))
    after, steps = ids[0] - 1, []
    while after is not None:
        after = discovered_spans_link_batch(found.pk, after, chunk=5)
        progress = link_progress(found.pk)
        assert progress is not None
        steps.append((progress.percent, progress.linked, progress.done))
    assert len(steps) >= 4
    assert [p for p, _, _ in steps] == sorted(p for p, _, _ in steps) and steps[-1] == (100, 2, True)
    assert not steps[0][2] and steps[0][0] < 100
    assert Span.objects.filter(agent=agent).count() == 2
    assert not Span.objects.filter(agent_key="noise-agent", agent__isnull=False).exists()


def test_adoption_and_linking_are_announced_live(
    client, shadow, admin, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    from cockpit import live

    sent: list[dict] = []
    monkeypatch.setattr(live._sender, "send", lambda groups, event, coalesce=None: sent.append(event))
    client.force_login(admin)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("discovered-adopt", args=[shadow.pk]))
    assert {"type": "discovered.changed", "discovered": shadow.pk} in sent
    assert {"type": "agents.changed"} in sent


# --- The banner on the agents page ------------------------------------------------------------


def test_the_agents_page_says_how_many_agents_are_not_in_the_fleet(client, ingest_key, admin, team) -> None:
    client.force_login(admin)
    assert "not in the fleet" not in client.get(reverse("agents")).content.decode()
    send(client, ingest_key, "shadow-refunder")
    page = client.get(reverse("agents")).content.decode()
    assert "1 agent is sending spans but is not in the fleet" in page
    send(client, ingest_key, "invoice-bot")
    page = client.get(reverse("agents")).content.decode()
    assert "2 agents are sending spans but are not in the fleet" in page
    assert f'<a href="{reverse("discovered")}">review</a>' in page
    client.post(reverse("discovered-adopt", args=[DiscoveredAgent.objects.get(key="invoice-bot").pk]))
    assert "1 agent is sending spans" in client.get(reverse("agents")).content.decode()


def test_the_banner_counts_only_teams_the_user_sees(client, make_user, team, other_team) -> None:
    their_key = api_key_create(actor=SYSTEM, team=other_team, name="otel", scopes=["ingest"])[1]
    send(client, their_key, "their-agent")
    client.force_login(make_user(Role.VIEWER, team))
    assert "not in the fleet" not in client.get(reverse("agents")).content.decode()
