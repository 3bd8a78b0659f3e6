"""Incidents: marking a trace, the incident page (narrative, notes, labels, related traces,
resolve / reopen), the incident list, permissions per team, refusals, and notes arriving live in
another reviewer's browser."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.roles import Role
from tests.support import otel
from tests.support.matrix import matrix
from tests.traces import stories
from tests.traces.conftest import post
from traces.models import Incident, IncidentNote, IncidentStatus, Severity, Span, Trace
from traces.services import incident_link, incident_note_add, incident_open, incident_update

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
EDITORS = {Role.OPERATOR, Role.ADMIN}


@pytest.fixture
def story(team):  # noqa: ANN001, ANN201
    return stories.managed_refund(team, approved=False, wait_seconds=420)


@pytest.fixture
def operator(make_user, team):  # noqa: ANN001, ANN201
    return make_user(Role.OPERATOR, team, username="olivia")


@pytest.fixture
def incident(story, operator):  # noqa: ANN001, ANN201
    return incident_open(
        actor=Actor.for_user(operator),
        trace=story.trace,
        title="Refund rejected after 7 minutes",
        severity=Severity.SEV2,
        labels="refunds, approval sla",
    )


def other_trace(client, key: str, agent: str = "refund-helper") -> Trace:  # noqa: ANN001
    capture = otel.Capture()
    otel.genai_refund_trace(capture, agent=agent)
    assert post(client, key, otel.protobuf(capture.spans)).status_code == 200
    return Trace.objects.get(trace_id=otel.trace_id_of(capture.spans))


# --- Marking a trace --------------------------------------------------------------------------


def test_an_operator_marks_a_trace_as_an_incident(client, story, operator) -> None:
    client.force_login(operator)
    url = reverse("incident-open", args=[story.trace.pk])
    page = client.get(url)
    assert page.status_code == 200 and b"Mark as incident" in page.content
    response = client.post(
        url,
        {"title": "Refund rejected too late", "severity": "sev1", "labels": "Refunds, approval SLA", "note": "Look."},
    )
    incident = Incident.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("incident-detail", args=[incident.pk])
    assert (incident.title, incident.severity, incident.labels, incident.status) == (
        "Refund rejected too late",
        "sev1",
        ["approval-sla", "refunds"],
        IncidentStatus.OPEN,
    )
    assert (incident.created_by, incident.team) == (operator, story.trace.team)
    assert list(incident.notes.values_list("author_label", "text")) == [("olivia", "Look.")]
    story.trace.refresh_from_db()
    assert story.trace.incident  # flagged, and kept past retention
    audit = AuditEvent.objects.get(action="incident.open")
    assert (audit.actor_user, audit.team) == (operator, story.trace.team)
    detail = client.get(response["Location"]).content.decode()
    assert "Incident #" in detail or f"#{incident.pk}" in detail
    assert "Refund rejected too late" in detail and "rejected by dana after 7 min" in detail


@pytest.mark.parametrize("case", matrix(allowed=EDITORS, org=True), ids=str)
def test_marking_takes_the_operate_permission_of_the_trace_team(case, client, story, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    url = reverse("incident-open", args=[story.trace.pk])
    assert client.get(url).status_code == case.status(ok=200)
    response = client.post(url, {"title": "Refund rejected", "severity": "sev3"})
    assert response.status_code == case.status(ok=302)
    assert Incident.objects.exists() == (case.outcome == "ok")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"title": "", "severity": "sev3"}, "Say in a few words what went wrong."),
        ({"title": "   ", "severity": "sev3"}, "Say in a few words what went wrong."),
        ({"title": "Loop", "severity": "sev9"}, "Select a valid choice. sev9 is not one of the available choices."),
        ({"title": "x" * 201, "severity": "sev3"}, "Ensure this value has at most 200 characters (it has 201)."),
        ({"title": "Loop", "severity": "sev3", "labels": ",".join(f"l{n}" for n in range(21))}, "At most 20 labels."),
        ({"title": "Loop", "severity": "sev3", "labels": "ok, " + "x" * 41}, "Labels are at most 40 characters"),
    ],
)
def test_a_refused_mark_says_why_and_opens_nothing(client, story, operator, data, error) -> None:
    client.force_login(operator)
    response = client.post(reverse("incident-open", args=[story.trace.pk]), data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not Incident.objects.exists()
    story.trace.refresh_from_db()
    assert not story.trace.incident


def test_a_trace_already_in_an_open_incident_is_not_marked_twice(client, incident, operator) -> None:
    client.force_login(operator)
    url = reverse("incident-open", args=[incident.trace_id])
    page = client.get(url).content.decode()
    assert "already part of an open incident" in page and reverse("incident-detail", args=[incident.pk]) in page
    response = client.post(url, {"title": "Again", "severity": "sev3"})
    assert response.status_code == 400 and "already part of an open incident" in response.content.decode()
    assert Incident.objects.count() == 1
    incident_update(actor=Actor.for_user(operator), incident=incident, status=IncidentStatus.RESOLVED)
    assert client.post(url, {"title": "It happened again", "severity": "sev3"}).status_code == 302
    assert Incident.objects.count() == 2


# --- The incident page ------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_the_incident_page_is_for_anyone_who_sees_the_team(case, client, incident, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.get(reverse("incident-detail", args=[incident.pk]))
    assert response.status_code == case.status(ok=200)
    if case.outcome == "ok":
        page = response.content.decode()
        can_edit = case.role in EDITORS
        assert ("Add note" in page) == can_edit
        assert ("Resolve incident" in page) == can_edit
        assert "Export OTLP JSON" in page


def test_the_incident_page_tells_the_trace_and_lists_notes_and_related_traces(
    client, incident, operator, story, ingest_key
) -> None:
    related = other_trace(client, ingest_key)
    incident_link(actor=Actor.for_user(operator), incident=incident, trace=related)
    approval = next(s for s in story.spans if s.span_type == "approval")
    incident_note_add(
        actor=Actor.for_user(operator), incident=incident, text="Photos came late.", span_id=approval.span_id
    )
    client.force_login(operator)
    page = client.get(reverse("incident-detail", args=[incident.pk])).content.decode()
    for text in (
        "Refund rejected after 7 minutes",
        "SEV2",
        "approval-sla",
        "refunds",
        "decided to refund €80.00 (confidence 0.62)",
        "rejected by dana after 7 min",
        "Photos came late.",
        f'about <a href="{reverse("trace-detail", args=[story.trace.pk])}#span-{approval.span_id}"',
        related.trace_id,
        reverse("trace-export", args=[story.trace.pk]),
    ):
        assert text in page, text


def test_the_note_menu_offers_the_steps_of_the_narrative(client, incident, operator) -> None:
    client.force_login(operator)
    page = client.get(reverse("incident-detail", args=[incident.pk])).content.decode()
    assert ">+2.6 s · decided to refund €80.00 (confidence 0.62)</option>" in page


def test_each_step_of_the_story_links_to_its_span_in_the_trace_view(client, incident, operator, story) -> None:
    decision = next(s for s in story.spans if s.attributes.get("cockpit.step.kind") == "decision")
    client.force_login(operator)
    page = client.get(reverse("incident-detail", args=[incident.pk])).content.decode()
    link = f'<a class="narrative-time" href="{reverse("trace-detail", args=[story.trace.pk])}#span-{decision.span_id}"'
    assert link in page


# --- Notes ------------------------------------------------------------------------------------


def test_a_note_is_added_and_the_list_comes_back(client, incident, operator, story) -> None:
    client.force_login(operator)
    decision = next(s for s in story.spans if s.attributes.get("cockpit.step.kind") == "decision")
    response = client.post(
        reverse("incident-note", args=[incident.pk]),
        {"text": "The confidence was low: 0.62.", "span_id": decision.span_id},
        **HTMX,
    )
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#incident-notes"
    assert json.loads(response["HX-Trigger"]) == {"incident:noted": {}, "fleet:done": {"message": "Note added."}}
    assert "The confidence was low: 0.62." in response.content.decode()
    note = IncidentNote.objects.get()
    assert (note.author, note.span_id) == (operator, decision.span_id)
    assert AuditEvent.objects.filter(action="incident.note").count() == 1


def test_a_note_without_htmx_redirects_back_to_the_notes(client, incident, operator) -> None:
    client.force_login(operator)
    response = client.post(reverse("incident-note", args=[incident.pk]), {"text": "Plain form post."})
    assert response.status_code == 302 and response["Location"].endswith("#notes")
    assert IncidentNote.objects.get().text == "Plain form post."


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"text": ""}, "A note needs some text."),
        ({"text": "   "}, "A note needs some text."),
        ({"text": "About a span of another trace", "span_id": "00f067aa0ba902b7"}, "not part of the incident"),
        ({"text": "x" * 20_001}, "at most 20000 characters"),
    ],
)
def test_a_refused_note_comes_back_with_its_error_and_nothing_is_saved(client, incident, operator, data, error):
    client.force_login(operator)
    response = client.post(reverse("incident-note", args=[incident.pk]), data, **HTMX)
    assert response.status_code == 422
    assert error in response.content.decode()
    assert 'id="note-form"' in response.content.decode()  # the form, to swap in place
    assert not IncidentNote.objects.exists()


@pytest.mark.parametrize("case", matrix(allowed=EDITORS), ids=str)
def test_notes_take_the_operate_permission(case, client, incident, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("incident-note", args=[incident.pk]), {"text": "hello"})
    assert response.status_code == case.status(ok=302)
    assert IncidentNote.objects.exists() == (case.outcome == "ok")


def test_the_live_notes_fragment_is_what_another_reviewer_re_fetches(client, incident, operator, make_user, team):
    viewer = make_user(Role.VIEWER, team)
    incident_note_add(actor=Actor.for_user(operator), incident=incident, text="Found it.")
    client.force_login(viewer)
    response = client.get(reverse("incident-detail", args=[incident.pk]), HTTP_HX_TARGET="incident-notes", **HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and body.lstrip().startswith('<ol id="incident-notes"')
    assert "Found it." in body and "<html" not in body


def test_changes_to_an_incident_are_announced_to_its_team_after_commit(
    incident, operator, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    from cockpit import live

    sent: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(live._sender, "send", lambda groups, event, coalesce=None: sent.append((groups, event)))
    with django_capture_on_commit_callbacks(execute=True):
        incident_note_add(actor=Actor.for_user(operator), incident=incident, text="Live.")
    changed = [(groups, event) for groups, event in sent if event["type"] == "incident.changed"]
    assert changed == [
        (
            [f"team.{incident.team_id}", f"trace.{incident.trace_id}"],
            {"type": "incident.changed", "incident": incident.pk},
        )
    ]


# --- Editing, resolving, linking --------------------------------------------------------------


def test_title_severity_and_labels_are_edited_and_audited(client, incident, operator) -> None:
    client.force_login(operator)
    response = client.post(
        reverse("incident-edit", args=[incident.pk]),
        {"title": "Approval SLA missed on refunds", "severity": "sev1", "labels": "refunds, sla, Photos"},
    )
    assert response.status_code == 302
    incident.refresh_from_db()
    assert (incident.title, incident.severity, incident.labels) == (
        "Approval SLA missed on refunds",
        "sev1",
        ["photos", "refunds", "sla"],
    )
    audit = AuditEvent.objects.get(action="incident.update")
    assert audit.before["severity"] == "sev2" and audit.after["severity"] == "sev1"


def test_an_edit_with_an_empty_title_is_refused_and_changes_nothing(client, incident, operator) -> None:
    client.force_login(operator)
    response = client.post(reverse("incident-edit", args=[incident.pk]), {"title": "", "severity": "sev1"})
    assert response.status_code == 400
    assert "The title cannot be empty." in response.content.decode()
    incident.refresh_from_db()
    assert (incident.title, incident.severity) == ("Refund rejected after 7 minutes", "sev2")
    assert not AuditEvent.objects.filter(action="incident.update").exists()


def test_an_incident_is_resolved_and_reopened(client, incident, operator) -> None:
    client.force_login(operator)
    url = reverse("incident-status", args=[incident.pk])
    assert client.post(url, {"status": "resolved"}).status_code == 302
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED and incident.resolved_at is not None
    page = client.get(reverse("incident-detail", args=[incident.pk])).content.decode()
    assert "Reopen incident" in page and "Resolved" in page
    assert client.post(url, {"status": "open"}).status_code == 302
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.OPEN and incident.resolved_at is None
    assert client.post(url, {"status": "closed-forever"}).status_code == 302
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.OPEN


@pytest.mark.parametrize("case", matrix(allowed=EDITORS), ids=str)
def test_resolving_takes_the_operate_permission(case, client, incident, team, other_team) -> None:
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(reverse("incident-status", args=[incident.pk]), {"status": "resolved"})
    assert response.status_code == case.status(ok=302)
    incident.refresh_from_db()
    assert (incident.status == IncidentStatus.RESOLVED) == (case.outcome == "ok")


def test_related_traces_are_linked_by_id_prefix_or_page_address_and_unlinked(
    client, incident, operator, ingest_key
) -> None:
    first, second = other_trace(client, ingest_key), other_trace(client, ingest_key)
    client.force_login(operator)
    url = reverse("incident-link", args=[incident.pk])
    assert client.post(url, {"trace": first.trace_id[:10].upper()}).status_code == 302
    assert client.post(url, {"trace": f"http://testserver/traces/{second.pk}/"}).status_code == 302
    assert set(incident.related.all()) == {first, second}
    first.refresh_from_db()
    assert first.incident  # kept past retention while it is linked
    assert AuditEvent.objects.filter(action="incident.link").count() == 2

    response = client.post(reverse("incident-unlink", args=[incident.pk, first.pk]))
    assert response.status_code == 302
    assert set(incident.related.all()) == {second}
    first.refresh_from_db()
    assert not first.incident
    assert client.post(reverse("incident-unlink", args=[incident.pk, first.pk])).status_code == 404


@pytest.mark.parametrize(
    ("ident", "error"),
    [
        ("", "Paste the id of the trace to link"),
        ("not-a-trace-id!", "A trace id is 32 hexadecimal characters"),
        ("abc", "A trace id is 32 hexadecimal characters"),
        ("ffffffffffffffffffffffffffffffff", "No trace of Alpha has the id ffffffffffffffffffffffffffffffff."),
    ],
)
def test_a_refused_link_says_why_and_links_nothing(client, incident, operator, ident, error) -> None:
    client.force_login(operator)
    response = client.post(reverse("incident-link", args=[incident.pk]), {"trace": ident})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not incident.related.exists()


def test_links_stay_within_the_team(client, incident, operator, other_team, ingest_key) -> None:
    from cockpit.services import api_key_create

    their_key = api_key_create(actor=Actor.system("tests"), team=other_team, name="otel", scopes=["ingest"])[1]
    theirs = other_trace(client, their_key)
    client.force_login(operator)
    url = reverse("incident-link", args=[incident.pk])
    for ident in (theirs.trace_id, f"/traces/{theirs.pk}/"):
        response = client.post(url, {"trace": ident})
        assert response.status_code == 400 and "No trace of Alpha has the id" in response.content.decode()
    own = client.post(url, {"trace": incident.trace.trace_id})
    assert own.status_code == 400 and "That is the incident&#x27;s own trace." in own.content.decode()
    mine = other_trace(client, ingest_key)
    assert client.post(url, {"trace": mine.trace_id}).status_code == 302
    again = client.post(url, {"trace": mine.trace_id})
    assert again.status_code == 400 and "already linked" in again.content.decode()
    assert list(incident.related.all()) == [mine]


# --- The list ---------------------------------------------------------------------------------


def test_the_list_shows_the_incidents_of_my_teams_newest_first_with_filters(
    client, team, other_team, operator, make_user, ingest_key, django_assert_max_num_queries
) -> None:
    actor = Actor.for_user(operator)
    old = incident_open(actor=actor, trace=other_trace(client, ingest_key), title="Old loop", labels="loops")
    new = incident_open(actor=actor, trace=other_trace(client, ingest_key), title="New refund", severity="sev1")
    incident_update(actor=actor, incident=old, status=IncidentStatus.RESOLVED)
    stranger = make_user(Role.ADMIN, other_team)
    from cockpit.services import api_key_create

    their_key = api_key_create(actor=Actor.system("tests"), team=other_team, name="otel", scopes=["ingest"])[1]
    incident_open(actor=Actor.for_user(stranger), trace=other_trace(client, their_key), title="Their secret")

    viewer = make_user(Role.VIEWER, team)
    client.force_login(viewer)
    with django_assert_max_num_queries(12):
        page = client.get(reverse("incidents")).content.decode()
    assert page.index("New refund") < page.index("Old loop") and "Their secret" not in page
    assert "1 open" in page

    def titles(**query: str) -> list[str]:
        html = client.get(reverse("incidents"), query).content.decode()
        return [t for t in ("New refund", "Old loop", "Their secret") if t in html]

    assert titles(status="resolved") == ["Old loop"]
    assert titles(status="open") == ["New refund"]
    assert titles(severity="sev1") == ["New refund"]
    assert titles(label="loops") == ["Old loop"]
    assert titles(label="loop") == []
    assert titles(label=" Loops ") == ["Old loop"]
    assert titles(team="beta") == []
    assert client.get(reverse("incidents"), {"severity": "sev9"}).status_code == 400
    assert new.pk


def test_incident_pages_require_sign_in(client, incident) -> None:
    for url in (
        reverse("incidents"),
        reverse("incident-detail", args=[incident.pk]),
        reverse("incident-open", args=[incident.trace_id]),
        reverse("trace-export", args=[incident.trace_id]),
    ):
        assert client.get(url)["Location"].startswith("/account/login/"), url
    response = client.post(reverse("incident-note", args=[incident.pk]), {"text": "anonymous"})
    assert response["Location"].startswith("/account/login/")
    assert not IncidentNote.objects.exists()


def test_incident_traces_survive_retention(client, incident, settings) -> None:
    from traces.services import traces_purge_batch

    settings.COCKPIT = {**settings.COCKPIT, "TRACE_RETENTION_DAYS": 1}
    traces_purge_batch()
    assert Trace.objects.filter(pk=incident.trace_id).exists()
    assert Span.objects.filter(trace_id=incident.trace.trace_id).exists()


# --- In the browser ---------------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_note_appears_live_for_another_reviewer(browser, web_process, team, make_user, password) -> None:
    from playwright.sync_api import expect

    from tests.browser.conftest import sign_in

    story = stories.managed_refund(team, approved=False, wait_seconds=420)
    olivia = make_user(Role.OPERATOR, team, username="olivia")
    make_user(Role.VIEWER, team, username="victor")
    incident = incident_open(actor=Actor.for_user(olivia), trace=story.trace, title="Refund rejected late")
    url = f"{web_process[1]}{reverse('incident-detail', args=[incident.pk])}"

    pages = []
    for username in ("victor", "olivia"):
        context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=web_process[1])
        page = context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
        sign_in(page, username, password)
        page.goto(url)
        expect(page.locator("[data-live-indicator]")).to_have_attribute("data-state", "live")
        pages.append((page, errors))
    (victor, victor_errors), (olivia_page, olivia_errors) = pages

    expect(victor.get_by_text("rejected by dana after 7 min")).to_be_visible()
    expect(victor.get_by_role("button", name="Add note")).to_have_count(0)  # a viewer reads, does not write
    olivia_page.fill("#id_text", "The approver never saw the photos.")
    olivia_page.select_option("#id_span_id", label=olivia_page.locator("#id_span_id option").nth(4).inner_text())
    olivia_page.get_by_role("button", name="Add note").click()
    expect(olivia_page.locator("#incident-notes")).to_contain_text("The approver never saw the photos.")
    expect(olivia_page.locator("#id_text")).to_have_value("")  # ready for the next note
    expect(victor.locator("#incident-notes")).to_contain_text("The approver never saw the photos.", timeout=10_000)
    assert victor.url == url  # no reload, no navigation
    assert not victor_errors and not olivia_errors


def test_the_trace_view_buttons_mark_the_trace_or_lead_to_its_incident(rf, story, operator, make_user, team) -> None:
    from django.template import Context, Template

    buttons = Template("{% load traces_tags %}{% trace_incident_actions trace %}")

    def render(user) -> str:  # noqa: ANN001
        request = rf.get("/")
        request.user = user
        return buttons.render(Context({"request": request, "trace": story.trace}))

    html = render(operator)
    assert reverse("incident-open", args=[story.trace.pk]) in html and "Mark as incident" in html
    assert reverse("trace-export", args=[story.trace.pk]) in html
    viewer_html = render(make_user(Role.VIEWER, team))
    assert "Mark as incident" not in viewer_html and "Export OTLP JSON" in viewer_html
    incident = incident_open(actor=Actor.for_user(operator), trace=story.trace, title="Late")
    html = render(operator)
    assert f"Incident #{incident.pk}" in html and "Mark as incident" not in html
