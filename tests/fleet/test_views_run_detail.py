"""One run's page: header, timeline, audit trail, live fragments; and the operator's controls
(pause, resume, cancel, override) with their permission matrices and refusals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from cockpit.roles import Role
from fleet.models import RunEvent, RunStatus
from fleet.services import agent_set_status, run_override, run_pause
from tests.factories import SYSTEM
from tests.fleet.conftest import execute
from tests.support.matrix import matrix

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}
OPERATORS = {Role.OPERATOR, Role.ADMIN}


def url(name: str, run) -> str:  # noqa: ANN001
    return reverse(name, args=[run.pk])


@pytest.fixture
def operator(make_user, team):  # noqa: ANN001, ANN201
    return make_user(Role.OPERATOR, team)


@pytest.fixture
def queued(make_agent, start):  # noqa: ANN001, ANN201
    return start(make_agent("test-linear"))


@pytest.fixture
def paused(queued):  # noqa: ANN001, ANN201
    return run_pause(actor=SYSTEM, run=queued, reason="hold on")


@pytest.fixture
def waiting(make_agent, start):  # noqa: ANN001, ANN201
    run = execute(start(make_agent("test-approval", tier=3)))
    assert run.status == RunStatus.WAITING_APPROVAL
    return run


# --- The page ---------------------------------------------------------------------------------


def test_fleet_pages_and_controls_require_sign_in(client, paused):
    agent = paused.agent
    pages = [reverse("agents"), reverse("runs"), url("run-detail", paused)]
    pages += [reverse("agent-detail", args=[agent.pk]), url("run-cancel", paused)]
    for page in pages:
        assert client.get(page)["Location"].startswith("/account/login/"), page
    for name in ("run-pause", "run-resume", "run-cancel", "run-override"):
        assert client.post(url(name, paused), {"reason": "x"})["Location"].startswith("/account/login/"), name
    paused.refresh_from_db()
    assert paused.status == RunStatus.PAUSED


@pytest.mark.parametrize("case", matrix(allowed=set(Role.values), org=True), ids=str)
def test_run_page_is_for_anyone_who_sees_the_team(case, client, queued, team, other_team):
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.get(url("run-detail", queued)).status_code == case.status(ok=200)


def test_header_shows_budget_meter_tokens_and_simulated_model(client, operator, make_agent, start):
    run = execute(start(make_agent("test-llm", run_budget="0.50")))
    client.force_login(operator)
    html = client.get(url("run-detail", run)).content.decode()
    assert '<meter class="budget-meter" min="0" max="100"' in html
    assert "of $0.50 budget" in html
    assert run.trace_id in html
    assert f"{run.tokens_in:,} in · {run.tokens_out:,} out" in html
    assert "sim/sim-small" in html and ">simulated</span>" in html


def test_llm_steps_read_as_a_conversation(client, operator, make_agent, start):
    run = execute(start(make_agent("test-llm")))
    client.force_login(operator)
    timeline = client.get(url("run-detail", run)).context["timeline"]
    [llm] = [entry.step for entry in timeline if entry.step and entry.step.step.kind == "llm"]
    assert [(m.role, m.text) for m in llm.conversation] == [("user", "question 0")]
    assert llm.answer
    assert '"messages"' not in llm.input_json  # shown as the conversation, not twice
    html = client.get(url("run-detail", run)).content.decode()
    assert '<div class="msg msg-user"><div class="msg-role">user</div><div class="msg-text">question 0</div>' in html


def test_a_waiting_run_says_what_it_waits_for(client, operator, waiting):
    client.force_login(operator)
    html = client.get(url("run-detail", waiting)).content.decode()
    assert "Waiting for a human decision" in html
    assert "the agent wants to call <code>test.effect</code>" in html
    assert "the parcel arrived broken" in html  # the agent's reasoning
    assert "70 %" in html  # its confidence
    assert "Approve and resume" in html


def test_a_decided_approval_shows_who_decided(client, operator, waiting):
    client.force_login(operator)
    client.post(url("run-resume", waiting), {"reason": "parcel photo checked"})
    html = client.get(url("run-detail", waiting)).content.decode()
    assert f'<span class="badge badge-ok">approved</span> by {operator.username} after' in html
    assert "parcel photo checked" in html


def test_a_takeover_from_a_dead_worker_is_on_the_timeline(client, operator, queued):
    from django.utils import timezone

    from fleet.services import runs_to_recover

    type(queued).objects.filter(pk=queued.pk).update(
        status=RunStatus.RUNNING, lease_owner="node-7/4242/ab12cd34", lease_expires_at=timezone.now()
    )
    assert runs_to_recover() == [queued.pk]  # beat's sweeper, then a worker takes it over
    assert execute(queued).status == RunStatus.SUCCEEDED
    client.force_login(operator)
    html = client.get(url("run-detail", queued)).content.decode()
    assert "resumed after worker loss: the worker executing this run (node-7/4242/ab12cd34)" in html


def test_compensations_are_marked_as_undo(client, operator, make_agent, start):
    run = execute(start(make_agent("test-effects"), action="cancel"))
    assert run.status == RunStatus.CANCELLED
    client.force_login(operator)
    html = client.get(url("run-detail", run)).content.decode()
    assert "undo of step 2" in html and "undo of step 1" in html
    assert "<strong>Cancel requested</strong>" in html and "wrong customer" in html


def test_history_and_audit_are_interleaved_for_auditors_only(client, make_user, team, paused, operator):
    run_override(actor=SYSTEM, run=paused, changes={"model": "sim/sim-large"}, reason="bigger")
    client.force_login(operator)
    response = client.get(url("run-detail", paused))
    kinds = [entry.event.kind for entry in response.context["timeline"] if entry.event]
    assert kinds == [RunEvent.Kind.STATUS, RunEvent.Kind.STATUS, RunEvent.Kind.OVERRIDE]
    html = response.content.decode()
    assert '<code>model</code>: <span class="muted">version default</span> → <strong>sim/sim-large</strong>' in html
    assert 'id="run-audit"' in html and "run.override" in html
    client.force_login(make_user(Role.VIEWER, team))
    viewer = client.get(url("run-detail", paused))
    assert viewer.context["audit"] is None
    assert 'id="run-audit"' not in viewer.content.decode()


def test_page_is_live_and_serves_each_fragment(client, operator, queued):
    client.force_login(operator)
    html = client.get(url("run-detail", queued)).content.decode()
    assert f'data-live-topics="run.{queued.pk}"' in html
    assert html.count(f'data-live-match=\'{{"run": "{queued.pk}"}}\'') == 4
    assert 'data-live-on="run.changed run.step"' in html
    for target in ("run-header", "run-controls", "run-timeline", "run-audit"):
        response = client.get(url("run-detail", queued), HTTP_HX_TARGET=target, **HTMX)
        body = response.content.decode().lstrip()
        assert body.startswith(f'<section id="{target}"'), target


def test_pages_carry_no_inline_script_or_style(client, operator, waiting):
    client.force_login(operator)
    for page in (url("run-detail", waiting), reverse("runs"), "/", reverse("agents")):
        html = client.get(page).content.decode()
        for chunk in html.split("<script")[1:]:
            assert chunk.lstrip().startswith("src="), page
        assert " style=" not in html and " onclick=" not in html, page


def test_run_page_queries_do_not_grow_with_steps(client, operator, make_agent, start, django_assert_max_num_queries):
    agent = make_agent("test-linear")
    small = execute(start(agent, n=1))
    client.force_login(operator)
    client.get(url("run-detail", small))
    with CaptureQueriesContext(connection) as few:
        client.get(url("run-detail", small))
    big = execute(start(agent, n=25))
    with django_assert_max_num_queries(len(few)):
        response = client.get(url("run-detail", big))
    assert len([entry for entry in response.context["timeline"] if entry.step]) == 25


# --- Pause and resume -------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=OPERATORS, org=True), ids=str)
def test_pause_follows_the_matrix(case, client, queued, team, other_team):
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(url("run-pause", queued), {"reason": "looks odd"})
    assert response.status_code == case.status(ok=302)
    queued.refresh_from_db()
    assert queued.status == (RunStatus.PAUSED if case.outcome == "ok" else RunStatus.QUEUED)


def test_viewers_see_no_controls(client, make_user, team, queued):
    client.force_login(make_user(Role.VIEWER, team))
    html = client.get(url("run-detail", queued)).content.decode()
    assert "You can watch this run" in html
    assert url("run-pause", queued) not in html and url("run-cancel", queued) not in html


def test_htmx_pause_returns_the_new_controls(client, operator, queued):
    client.force_login(operator)
    response = client.post(url("run-pause", queued), {"reason": "looks odd"}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode().lstrip()
    assert body.startswith('<section id="run-controls"') and ">Resume</button>" in body
    assert "fleet:done" in response["HX-Trigger"]
    queued.refresh_from_db()
    assert (queued.status, queued.status_reason) == (RunStatus.PAUSED, "looks odd")


def test_pause_of_a_running_run_is_a_pending_directive(client, operator, waiting):
    client.force_login(operator)
    client.post(url("run-pause", waiting), **HTMX)
    html = client.get(url("run-detail", waiting)).content.decode()
    assert "Pause requested — takes effect at the next step." in html
    assert "pause requested</span>" in html
    assert "Withdraw the pause" in html


def test_refused_pause_shows_why_and_changes_nothing(client, operator, make_agent, start):
    done = execute(start(make_agent("test-linear")))
    client.force_login(operator)
    response = client.post(url("run-pause", done), **HTMX)
    assert response.status_code == 422
    assert "only an active run can be paused" in response.content.decode()
    plain = client.post(url("run-pause", done), follow=True)
    assert plain.redirect_chain == [(url("run-detail", done), 302)]
    assert "only an active run can be paused" in plain.content.decode()
    done.refresh_from_db()
    assert done.status == RunStatus.SUCCEEDED
    assert not done.events.filter(kind=RunEvent.Kind.DIRECTIVE).exists()


def test_resume_continues_a_paused_run(client, operator, paused):
    client.force_login(operator)
    response = client.post(url("run-resume", paused), follow=True)
    assert "goes on" in response.content.decode()
    paused.refresh_from_db()
    assert paused.status == RunStatus.RUNNING


def test_resume_is_refused_while_the_agent_is_quarantined(client, operator, paused):
    agent_set_status(actor=SYSTEM, agent=paused.agent, status="quarantined", reason="odd")
    client.force_login(operator)
    page = client.get(url("run-detail", paused)).content.decode()
    assert "reactivate the agent" in page and "disabled" in page
    response = client.post(url("run-resume", paused), **HTMX)
    assert response.status_code == 422 and "reactivate the agent" in response.content.decode()
    paused.refresh_from_db()
    assert paused.status == RunStatus.PAUSED


@pytest.mark.parametrize("case", matrix(allowed=OPERATORS), ids=str)
def test_resume_follows_the_matrix(case, client, paused, team, other_team):
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.post(url("run-resume", paused)).status_code == case.status(ok=302)


# --- Cancel -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=OPERATORS, org=True), ids=str)
def test_cancel_follows_the_matrix(case, client, queued, team, other_team):
    client.force_login(case.make_user(team=team, other_team=other_team))
    assert client.get(url("run-cancel", queued)).status_code == case.status(ok=200)
    response = client.post(url("run-cancel", queued), {"reason": "wrong customer"})
    assert response.status_code == case.status(ok=302)
    queued.refresh_from_db()
    assert queued.status == (RunStatus.CANCELLED if case.outcome == "ok" else RunStatus.QUEUED)


def test_cancel_needs_a_reason(client, operator, queued):
    client.force_login(operator)
    dialog = client.post(url("run-cancel", queued), {"reason": "  "}, **HTMX)
    assert dialog.status_code == 422
    assert "Say why the run is cancelled." in dialog.content.decode()
    assert "<html" not in dialog.content.decode()
    page = client.post(url("run-cancel", queued), {})
    assert page.status_code == 400 and "Say why the run is cancelled." in page.content.decode()
    queued.refresh_from_db()
    assert (queued.status, queued.cancel_requested) == (RunStatus.QUEUED, False)


def test_htmx_cancel_closes_the_dialog(client, operator, waiting):
    client.force_login(operator)
    response = client.post(url("run-cancel", waiting), {"reason": "duplicate ticket"}, **HTMX)
    assert response.status_code == 204
    assert "fleet:done" in response["HX-Trigger"]
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.CANCELLED and waiting.status_reason == "duplicate ticket"


def test_cancel_confirmation_is_a_dialog_for_htmx(client, operator, queued):
    client.force_login(operator)
    html = client.get(url("run-cancel", queued), **HTMX).content.decode()
    assert html.lstrip().startswith("<form") and 'hx-target="#fleet-dialog"' in html
    assert "required" in html.split('name="reason"')[1].split(">")[0]


# --- Override ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", matrix(allowed=OPERATORS, org=True), ids=str)
def test_override_follows_the_matrix(case, client, paused, team, other_team):
    client.force_login(case.make_user(team=team, other_team=other_team))
    response = client.post(url("run-override", paused), {"max_steps": "40"})
    assert response.status_code == case.status(ok=302)
    paused.refresh_from_db()
    assert paused.overrides == ({"max_steps": 40} if case.outcome == "ok" else {})


def test_override_form_is_offered_only_while_paused_or_waiting(client, operator, queued):
    client.force_login(operator)
    assert "Apply override" not in client.get(url("run-detail", queued)).content.decode()
    run_pause(actor=SYSTEM, run=queued)
    html = client.get(url("run-detail", queued)).content.decode()
    assert "Apply override" in html
    assert '<option value="sim/sim-small" label="simulated">' in html


def test_override_applies_every_setting(client, operator, paused):
    client.force_login(operator)
    response = client.post(
        url("run-override", paused),
        {
            "model": "sim/sim-large",
            "temperature": "0.4",
            "max_steps": "12",
            "budget": "0.2",
            "input": '{"n": 2}',
            "reason": "retry bigger",
        },
        **HTMX,
    )
    assert response.status_code == 200
    paused.refresh_from_db()
    assert paused.overrides == {
        "model": "sim/sim-large",
        "temperature": 0.4,
        "max_steps": 12,
        "budget": "0.2",
        "input": {"n": 2},
    }
    assert paused.effective_budget == Decimal("0.2")


def test_an_override_can_be_removed(client, operator, paused):
    client.force_login(operator)
    client.post(url("run-override", paused), {"model": "sim/sim-large", "max_steps": "12"}, **HTMX)
    paused.refresh_from_db()
    page = client.get(url("run-detail", paused)).content.decode()
    assert 'name="remove" value="model"' in page and 'name="remove" value="max_steps"' in page
    response = client.post(url("run-override", paused), {"remove": ["model"], "reason": "back to default"}, **HTMX)
    assert response.status_code == 200
    paused.refresh_from_db()
    assert paused.overrides == {"max_steps": 12}
    event = paused.events.filter(kind=RunEvent.Kind.OVERRIDE).latest("id")
    assert event.reason == "back to default"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "Fill in at least one setting to change, or one override to remove."),
        ({"max_steps": "9", "remove": ["max_steps"]}, "Either set or remove max_steps, not both."),
        ({"remove": ["colour"]}, "Select a valid choice."),
        ({"temperature": "7"}, "The temperature is between 0 and 2."),
        (
            {"model": "nowhere/big"},
            "is not &quot;provider/model&quot; with a known, enabled provider",
        ),
        ({"input": "{not json"}, "Enter a valid JSON."),
        ({"input": "[1, 2]"}, "The input is a JSON object."),
        ({"budget": "-1"}, "The budget must be more than zero."),
        ({"max_steps": "lots"}, "Enter a whole number."),
    ],
)
def test_bad_overrides_are_refused_with_the_reason(client, operator, paused, data, message):
    client.force_login(operator)
    response = client.post(url("run-override", paused), data, **HTMX)
    assert response.status_code == 422
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="run-controls"')
    assert message in body
    assert '<details class="override" open>' in body  # the form stays open with the input
    paused.refresh_from_db()
    assert paused.overrides == {}
    assert not paused.events.filter(kind=RunEvent.Kind.OVERRIDE).exists()


def test_override_of_a_running_run_is_refused(client, operator, queued):
    client.force_login(operator)
    response = client.post(url("run-override", queued), {"max_steps": "9"}, follow=True)
    assert "Overrides apply to a paused or waiting run: pause it first." in response.content.decode()
    queued.refresh_from_db()
    assert queued.overrides == {}


def test_an_external_run_without_a_version_renders(client, operator, make_agent) -> None:
    from fleet.models import AgentKind
    from fleet.services import run_create

    run, _ = run_create(actor=SYSTEM, agent=make_agent("crm-sync", kind=AgentKind.EXTERNAL))
    assert run.version is None
    client.force_login(operator)
    response = client.get(url("run-detail", run))
    assert response.status_code == 200
    assert "no step limit" in response.content.decode()
    run_pause(actor=SYSTEM, run=run, reason="check")  # paused: the override form shows too
    paused_page = client.get(url("run-detail", run))
    assert paused_page.status_code == 200 and 'id="override-max-steps"' in paused_page.content.decode()
