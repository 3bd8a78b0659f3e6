"""Hostile input on every API operation: a clear 4xx naming the field, and nothing changed.

Each input class (NUL bytes, lone surrogates, NaN/Infinity, integers past 64 bits, absurd
durations, UTC offsets PostgreSQL refuses, oversized bodies) is sent to every operation that
takes it; the answer is one error shape (``detail`` + ``errors`` with ``field``) and the database
is as it was."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from approvals.models import ApprovalRequest
from approvals.services import approval_request_create
from cockpit.audit import Actor
from cockpit.models import AuditEvent
from cockpit.services import api_key_create
from fleet.models import AgentKind, Run, Step, Tier
from fleet.services import run_create
from tests.fleet.conftest import _fleet_basics, make_agent  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db
SYSTEM = Actor.system("tests")
BAD_OFFSETS = ["2026-01-01T00:00:00-23:59", "2026-01-01T00:00:00+20:00"]


@pytest.fixture
def key(team) -> str:  # noqa: ANN001
    scopes = ["runs", "read", "approvals"]
    return api_key_create(actor=SYSTEM, team=team, name="hostile agent", scopes=scopes)[1]


@pytest.fixture
def crm(make_agent):  # noqa: ANN001, ANN201, F811
    return make_agent("crm-sync", kind=AgentKind.EXTERNAL, tier=Tier.SUPERVISED)


@pytest.fixture
def run(crm) -> Run:  # noqa: ANN001
    return run_create(actor=SYSTEM, agent=crm)[0]


@pytest.fixture
def approval(crm) -> ApprovalRequest:  # noqa: ANN001
    return approval_request_create(actor=SYSTEM, agent=crm, action="crm.merge_accounts", arguments={})[0]


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def state() -> tuple[int, ...]:
    return (
        Run.objects.count(),
        Step.objects.count(),
        ApprovalRequest.objects.count(),
        AuditEvent.objects.count(),
        *Run.objects.order_by("pk").values_list("step_count", flat=True),
    )


def post_raw(client: Client, url: str, text: str, key: str):  # noqa: ANN201
    """POST a JSON text as written (NaN, escaped lone surrogates: what ``json.dumps`` allows)."""
    return client.generic("POST", url, text.encode(), content_type="application/json", **auth(key))


def refused(response, field: str, status: int = 422) -> None:  # noqa: ANN001
    assert response.status_code == status, (response.status_code, response.content[:300])
    body = response.json()
    assert body["detail"]
    fields = [e["field"] for e in body["errors"]]
    assert field in fields, body


# The operations that take a body, a valid body for each, and where hostile values go.
RUN_CREATE = ("/api/v1/runs", {"agent": "crm-sync", "input_summary": "sync"})
APPROVAL_CREATE = (
    "/api/v1/approvals",
    {"agent": "crm-sync", "action": "crm.merge_accounts", "arguments": {"a": 1}, "reasoning": "same"},
)
RUN_EVENTS = ("/api/v1/runs/{run}/events", {"type": "step", "name": "classify", "model": "sim/x", "input": {}})

BODY_STRINGS = [
    (RUN_CREATE, "agent", None),
    (RUN_CREATE, "input_summary", None),
    (RUN_CREATE, "external_ref", None),
    (RUN_CREATE, "idempotency_key", None),
    (RUN_CREATE, "input", "nested"),
    (APPROVAL_CREATE, "agent", None),
    (APPROVAL_CREATE, "action", None),
    (APPROVAL_CREATE, "reasoning", None),
    (APPROVAL_CREATE, "external_ref", None),
    (APPROVAL_CREATE, "arguments", "nested"),
    (APPROVAL_CREATE, "arguments", "key"),
    (APPROVAL_CREATE, "context", "nested"),
    (RUN_EVENTS, "name", None),
    (RUN_EVENTS, "model", None),
    (RUN_EVENTS, "error", None),
    (RUN_EVENTS, "input", "nested"),
    (RUN_EVENTS, "output", "nested"),
]


def _with(body: dict[str, Any], field: str, where: str | None, value: str) -> dict[str, Any]:
    if where == "nested":
        return {**body, field: {"deep": [1, {"text": value}]}}
    if where == "key":
        return {**body, field: {value: 1}}
    return {**body, field: value}


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800", "x\udfffy"], ids=["nul", "high-surrogate", "low-surrogate"])
@pytest.mark.parametrize(("op", "field", "where"), BODY_STRINGS, ids=lambda v: str(v)[:20])
def test_bad_characters_in_body_strings_are_refused(client, key, run, op, field, where, bad) -> None:
    url, body = op
    before = state()
    # json.dumps escapes lone surrogates as \udXXX, exactly as a hostile client sends them.
    response = post_raw(client, url.format(run=run.pk), json.dumps(_with(body, field, where, bad)), key)
    refused(response, field)
    assert state() == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    ("op", "field", "template"),
    [
        (APPROVAL_CREATE, "confidence", "{constant}"),
        (APPROVAL_CREATE, "arguments", '{{"amount": {constant}}}'),
        (RUN_CREATE, "input", '{{"n": [1, {constant}]}}'),
        (RUN_EVENTS, "duration_seconds", "{constant}"),
        (RUN_EVENTS, "cost", "{constant}"),
        (RUN_EVENTS, "output", "{constant}"),
        (RUN_EVENTS, "input", '{{"x": {constant}}}'),
    ],
    ids=lambda v: str(v)[:20],
)
def test_nan_and_infinity_are_refused(client, key, run, op, field, template, constant) -> None:
    url, body = op
    text = json.dumps({k: v for k, v in body.items() if k != field})[:-1]
    text += f', "{field}": {template.format(constant=constant)}}}'
    before = state()
    refused(post_raw(client, url.format(run=run.pk), text, key), field)
    assert state() == before


@pytest.mark.parametrize("field", ["tokens_in", "tokens_out"])
@pytest.mark.parametrize("value", [2**31, 2**63, 2**64 + 1, 10**40])
def test_token_counts_past_the_columns_range_are_refused(client, key, run, field, value) -> None:
    """A step's token counts are integer columns: 2**31 already does not fit."""
    before = state()
    body = {"type": "step", "name": "classify", field: value}
    refused(post_raw(client, f"/api/v1/runs/{run.pk}/events", json.dumps(body), key), field)
    assert state() == before


@pytest.mark.parametrize("seconds", [1e308, 1e20, 10**400])
def test_an_absurd_duration_is_refused(client, key, run, seconds) -> None:
    before = state()
    text = '{"type": "step", "name": "classify", "duration_seconds": %s}' % seconds  # noqa: UP031
    refused(post_raw(client, f"/api/v1/runs/{run.pk}/events", text, key), "duration_seconds")
    assert state() == before


def test_a_long_but_real_duration_is_stored(client, key, run) -> None:
    body = {"type": "step", "name": "classify", "duration_seconds": 3 * 3600.5, "tokens_in": 2**31 - 1, "cost": 1e7}
    response = post_raw(client, f"/api/v1/runs/{run.pk}/events", json.dumps(body), key)
    assert response.status_code == 200, response.content
    assert Step.objects.get(run=run).tokens_in == 2**31 - 1


@pytest.mark.parametrize("cost", ["1e8", "1e20", "-1"])
def test_a_cost_the_column_cannot_hold_is_refused(client, key, run, cost) -> None:
    before = state()
    text = '{"type": "step", "name": "classify", "cost": %s}' % cost  # noqa: UP031
    refused(post_raw(client, f"/api/v1/runs/{run.pk}/events", text, key), "cost")
    assert state() == before


LISTS = ["/api/v1/runs", "/api/v1/traces", "/api/v1/approvals", "/api/v1/audit"]


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("field", ["agent", "team", "action", "object_type", "object_id", "cursor"])
def test_nul_in_query_filters_is_refused(client, key, run, approval, url, field) -> None:
    response = client.get(url, {field: "a\x00b"}, **auth(key))
    if response.status_code == 200:  # the operation has no such filter: it is ignored
        return
    refused(response, field)


@pytest.mark.parametrize("url", LISTS)
def test_every_list_refuses_nul_in_its_agent_or_action_filter(client, key, url) -> None:
    field = "action" if url.endswith("audit") else "agent"
    refused(client.get(url, {field: "a\x00b"}, **auth(key)), field)


@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/traces", "/api/v1/audit"])
@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("value", BAD_OFFSETS)
def test_utc_offsets_postgresql_refuses_are_refused(client, key, url, field, value) -> None:
    response = client.get(url, {field: value}, **auth(key))
    refused(response, field)
    assert "offset" in " ".join(e["message"] for e in response.json()["errors"])


@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/traces", "/api/v1/audit"])
def test_the_largest_offset_postgresql_takes_is_accepted(client, key, url) -> None:
    response = client.get(
        url, {"since": "2026-01-01T00:00:00+15:59", "until": "2026-01-02T00:00:00-15:59"}, **auth(key)
    )
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/approvals", "/api/v1/audit"])
def test_integers_past_64_bits_in_query_filters_are_refused(client, key, url) -> None:
    refused(client.get(url, {"before": str(2**64)}, **auth(key)), "before")


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/teams/a%00b", "slug"),
        ("/api/v1/runs/18446744073709551616", "run_id"),
        ("/api/v1/runs/18446744073709551616/directive", "run_id"),
        ("/api/v1/approvals/18446744073709551616", "approval_id"),
        ("/api/v1/traces/a%00b", "trace_id"),
    ],
)
def test_hostile_path_parameters_are_refused(client, key, url, field) -> None:
    refused(client.get(url, **auth(key)), field)


@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/approvals", "/api/v1/runs/{run}/events"])
@pytest.mark.parametrize("size", [3_000_000, 30 * 1024 * 1024], ids=["3MB", "30MiB"])
def test_oversized_bodies_are_413(client, key, run, url, size) -> None:
    before = state()
    text = json.dumps({"agent": "crm-sync", "type": "step", "input_summary": "x" * size})
    response = post_raw(client, url.format(run=run.pk), text, key)
    assert response.status_code == 413, response.status_code
    assert "bytes" in response.json()["detail"]
    assert state() == before


def test_a_body_that_is_not_json_is_400_with_the_usual_shape(client, key, run) -> None:
    before = state()
    response = post_raw(client, "/api/v1/runs", '{"agent": "crm-sync",', key)
    assert response.status_code == 400 and response.json()["detail"]
    assert state() == before


# --- Idempotency ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "changed"),
    [
        ("/api/v1/runs", {"agent": "crm-sync", "input_summary": "sync"}, {"input_summary": "other"}),
        ("/api/v1/runs", {"agent": "crm-sync", "input": {"n": 1}}, {"input": {"n": 2}}),
        ("/api/v1/approvals", APPROVAL_CREATE[1], {"arguments": {"a": 2}}),
        ("/api/v1/approvals", APPROVAL_CREATE[1], {"action": "crm.delete_account"}),
    ],
)
def test_the_same_idempotency_key_with_another_body_is_409(client, key, crm, url, body, changed) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": "job-7", **auth(key)}
    first = client.post(url, body, content_type="application/json", **headers)
    assert first.status_code == 201
    before = state()
    again = client.post(url, {**body, **changed}, content_type="application/json", **headers)
    assert again.status_code == 409, again.content
    assert "Idempotency-Key" in again.json()["detail"]
    assert state() == before
    same = client.post(url, body, content_type="application/json", **headers)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/approvals"])
def test_concurrent_duplicates_get_the_first_request_and_make_one_row(key, crm, url) -> None:
    body = RUN_CREATE[1] if url.endswith("runs") else APPROVAL_CREATE[1]
    barrier = threading.Barrier(4)
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            barrier.wait(timeout=10)
            response = Client().post(
                url, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="storm-1", **auth(key)
            )
            with lock:
                answers.append((response.status_code, response.json()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 200, 201], answers
    assert len({body["id"] for _, body in answers}) == 1
    model = Run if url.endswith("runs") else ApprovalRequest
    assert model.objects.filter(idempotency_key="storm-1").count() == 1


# --- Answers as documented --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/runs", "/api/v1/approvals", "/api/v1/runs/1/pause"])
def test_no_credentials_is_401_not_a_csrf_failure(url) -> None:
    response = Client(enforce_csrf_checks=True).post(url, {}, content_type="application/json")
    assert response.status_code == 401, response.content
    assert "Authentication required" in response.json()["detail"]


def test_a_signed_in_post_without_csrf_token_is_still_refused(admin_user, run) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    response = browser.post(f"/api/v1/runs/{run.pk}/pause", {}, content_type="application/json")
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "running"


def test_a_reject_without_reason_is_422_naming_the_field(client, admin_user, approval) -> None:
    client.force_login(admin_user)
    response = client.post(
        f"/api/v1/approvals/{approval.pk}/decision", {"decision": "reject"}, content_type="application/json"
    )
    refused(response, "reason")
    approval.refresh_from_db()
    assert approval.status == "pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_the_server_refuses_a_large_api_body_before_reading_it(key, declared) -> None:
    from channels.testing import HttpCommunicator

    from cockpit.asgi import application

    body = b'{"agent": "crm-sync", "input_summary": "' + b"x" * 3_000_000 + b'"}'
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    headers.append((b"authorization", f"Bearer {key}".encode()))
    if declared:
        headers.append((b"content-length", str(len(body)).encode()))
    communicator = HttpCommunicator(application, "POST", "/api/v1/runs", body=body, headers=headers)
    response = await communicator.get_response(timeout=10)
    assert response["status"] == 413
    assert json.loads(response["body"])["detail"] == "The body is larger than 2,621,440 bytes."
