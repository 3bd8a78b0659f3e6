"""External agents ask over the API: policy may decide at once; otherwise they long-poll or get a
signed callback when a human decides."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.services import approval_decide
from cockpit.audit import Actor
from cockpit.services import api_key_create
from fleet.models import AgentKind, Tier
from tests.support.receivers import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(team) -> str:
    return api_key_create(actor=Actor.system("tests"), team=team, name="crm agent", scopes=["approvals"])[1]


@pytest.fixture
def crm(make_agent):  # noqa: ANN001, ANN201
    return make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.SUPERVISED)


def ask(client: Client, key: str, **body: object):  # noqa: ANN201
    payload = {
        "agent": "crm-sync",
        "action": "crm.merge_accounts",
        "arguments": {"a": 1, "b": 2},
        "reasoning": "same email",
        "confidence": 0.95,
        "risk": "medium",
        **body,
    }
    idem = payload.pop("idempotency_key", None)
    extra = {"HTTP_IDEMPOTENCY_KEY": idem} if idem else {}
    return client.post(
        "/api/v1/approvals", payload, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", **extra
    )


def test_policy_may_approve_at_once(client, key, crm) -> None:
    response = ask(client, key)
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "approved" and body["decided_by"] == "policy"
    assert "allowed unattended" in body["policy"]


def test_a_risky_action_waits_for_a_human(client, key, crm, approvers) -> None:
    response = ask(client, key, risk="high", external_ref="crm-job-9")
    body = response.json()
    assert (body["status"], body["level"], body["external_ref"]) == ("pending", 1, "crm-job-9")
    assert "high-risk-needs-a-human" in body["policy"]
    assert body["deadline"] > body["created_at"]


def test_policy_may_forbid_at_once(client, key, crm, team) -> None:
    from approvals.services import policy_save

    policy_save(
        actor=Actor.system("tests"),
        team=team,
        source="""
@id("no-merging")
forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"crm.merge_accounts");
""",
    )
    body = ask(client, key).json()
    assert body["status"] == "rejected" and body["policy"] == "forbidden by no-merging"


def test_the_idempotency_key_returns_the_first_request(client, key, crm, approvers) -> None:
    first = ask(client, key, risk="high", idempotency_key="job-1")
    again = ask(client, key, risk="high", idempotency_key="job-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and ApprovalRequest.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"agent": "ghost"}, 404),
        ({"confidence": 1.5}, 422),
        ({"risk": "extreme"}, 422),
        ({"arguments": "text"}, 422),
    ],
)
def test_bad_requests_are_clear_and_create_nothing(client, key, crm, body, status) -> None:
    assert ask(client, key, **body).status_code == status
    assert not ApprovalRequest.objects.exists()


def test_other_teams_requests_are_invisible(client, key, crm, make_agent, other_team) -> None:
    theirs = make_agent("crm-sync", kind=AgentKind.EXTERNAL, owner=other_team)
    from approvals.services import approval_request_create

    request, _ = approval_request_create(actor=Actor.system("tests"), agent=theirs, action="x", arguments={})
    response = client.get(f"/api/v1/approvals/{request.pk}", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 404


@pytest.mark.django_db(transaction=True)
def test_long_poll_returns_when_a_human_decides(key, crm, approvers) -> None:
    client = Client()
    approval_id = ask(client, key, risk="high").json()["id"]
    result: dict = {}

    def poll() -> None:
        try:
            started = time.monotonic()
            result["body"] = (
                Client().get(f"/api/v1/approvals/{approval_id}?wait=20", HTTP_AUTHORIZATION=f"Bearer {key}").json()
            )
            result["seconds"] = time.monotonic() - started
        finally:
            connections.close_all()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.8)
    assert poller.is_alive()
    approval_decide(
        actor=Actor.for_user(approvers["ana"]), request=ApprovalRequest.objects.get(pk=approval_id), approve=True
    )
    poller.join(timeout=15)
    assert result["body"]["status"] == "approved" and result["body"]["decided_by"] == "ana"
    assert result["seconds"] < 10


def test_a_callback_is_signed_and_sent_when_decided(
    client, key, crm, approvers, django_capture_on_commit_callbacks
) -> None:
    receiver = Receiver()
    try:
        approval_id = ask(client, key, risk="high", callback_url=receiver.url).json()["id"]
        assert receiver.requests == []
        with django_capture_on_commit_callbacks(execute=True):
            approval_decide(
                actor=Actor.for_user(approvers["ana"]),
                request=ApprovalRequest.objects.get(pk=approval_id),
                approve=False,
                reason="not this customer",
            )
        [received] = receiver.requests
        payload = json.loads(received.body)["approval"]
        assert (payload["id"], payload["status"], payload["decision_reason"]) == (
            approval_id,
            "rejected",
            "not this customer",
        )
        timestamp = received.headers["x-cockpit-timestamp"]
        expected = hmac.new(
            settings.COCKPIT_CALLBACK_SECRET.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256
        ).hexdigest()
        assert received.headers["x-cockpit-signature"] == f"sha256={expected}"
    finally:
        receiver.stop()


def test_the_openapi_document_describes_approvals(client) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/approvals", "/api/v1/approvals/{approval_id}", "/api/v1/approvals/{approval_id}/decision"} <= set(
        paths
    )
    assert ApprovalStatus.PENDING in json.dumps(client.get("/api/v1/openapi.json").json())


@pytest.mark.django_db(transaction=True)
def test_the_readme_client_acts_on_exactly_what_was_approved(key, crm, approvers, web_process, monkeypatch) -> None:
    """The example client in the README, run as printed against a real server."""
    readme = (settings.BASE_DIR / "README.md").read_text()
    code = readme.split("### Asking for approval from your own agent", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    monkeypatch.setenv("COCKPIT_URL", web_process[1])
    monkeypatch.setenv("COCKPIT_API_KEY", key)
    merged: list[dict] = []
    namespace = {"merge_accounts": lambda **arguments: merged.append(arguments)}
    client = threading.Thread(target=exec, args=(code, namespace))
    client.start()
    deadline = time.monotonic() + 20
    while not (pending := ApprovalRequest.objects.filter(status=ApprovalStatus.PENDING).first()):
        assert time.monotonic() < deadline, "the README client never asked"
        time.sleep(0.1)
    assert pending.external_ref == "sync-job-981" and pending.arguments == {"keep": "C-1042", "merge": "C-2077"}
    time.sleep(0.5)
    approval_decide(
        actor=Actor.for_user(approvers["ben"]),
        request=pending,
        approve=True,
        edited_arguments={"keep": "C-2077", "merge": "C-1042"},
    )
    client.join(timeout=20)
    assert not client.is_alive()
    assert merged == [{"keep": "C-2077", "merge": "C-1042"}]
