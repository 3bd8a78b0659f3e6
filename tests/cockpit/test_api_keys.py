"""API keys: created once, stored hashed, scoped to a team and to scopes, revocable."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.utils import timezone

from cockpit.audit import Actor
from cockpit.models import ApiKey, AuditEvent, Scope
from cockpit.services import api_key_authenticate, api_key_create, api_key_revoke

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_create_stores_only_a_hash_and_a_visible_prefix(team) -> None:
    api_key, raw = api_key_create(actor=ACTOR, team=team, name="collector", scopes=["ingest", "read"])
    assert raw.startswith(f"ck_{api_key.prefix}_")
    assert raw not in api_key.secret_hash and len(api_key.secret_hash) == 64
    assert api_key.display_prefix == raw[:11]
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert raw not in str(stored.__dict__)
    assert AuditEvent.objects.filter(action="api_key.create", object_id=str(api_key.pk), team=team).exists()


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("", ["read"], "Give the key a name"),
        ("x", [], "Choose at least one scope"),
        ("x", ["read", "admin"], "Unknown scope(s) admin"),
    ],
)
def test_create_rejects_bad_input_and_writes_nothing(team, name, scopes, message) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        api_key_create(actor=ACTOR, team=team, name=name, scopes=scopes)
    assert not ApiKey.objects.exists()
    assert not AuditEvent.objects.filter(action="api_key.create").exists()


def test_authenticate_accepts_only_the_exact_key(team) -> None:
    api_key, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    assert api_key_authenticate(raw) == api_key
    assert api_key_authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert api_key_authenticate("ck_" + api_key.prefix) is None
    assert api_key_authenticate("not-a-key") is None


def test_last_used_is_recorded_but_written_at_most_once_a_minute(team) -> None:
    api_key, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    assert api_key.last_used_at is None
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        api_key_authenticate(raw)
        first = ApiKey.objects.get(pk=api_key.pk).last_used_at
        assert first is not None
        traveller.shift(timedelta(seconds=30))
        api_key_authenticate(raw)
        assert ApiKey.objects.get(pk=api_key.pk).last_used_at == first
        traveller.shift(timedelta(seconds=31))
        api_key_authenticate(raw)
        assert ApiKey.objects.get(pk=api_key.pk).last_used_at > first


def test_revoke_is_audited_once(team) -> None:
    api_key, _ = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    api_key_revoke(actor=ACTOR, api_key=api_key, reason="leaked in a log")
    api_key_revoke(actor=ACTOR, api_key=api_key, reason="again")
    events = AuditEvent.objects.filter(action="api_key.revoke", object_id=str(api_key.pk))
    assert [e.reason for e in events] == ["leaked in a log"]


# --- Over HTTP ---------------------------------------------------------------------------------


def test_valid_key_authenticates_the_api(client, team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="reader", scopes=["read"])
    response = client.get("/api/v1/me", **bearer(raw))
    assert response.status_code == 200
    assert response.json() == {
        "kind": "api_key",
        "name": "reader",
        "scopes": ["read"],
        "teams": [{"slug": "alpha", "name": "Alpha", "description": ""}],
    }


def test_x_api_key_header_works_too(client, team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="collector", scopes=["read"])
    assert client.get("/api/v1/me", HTTP_X_API_KEY=raw).status_code == 200


def test_missing_credentials_get_a_json_401(client) -> None:
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_unknown_key_is_401(client, team) -> None:
    response = client.get("/api/v1/me", **bearer("ck_aaaaaaaa_nope"))
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key."}


def test_revoked_key_is_refused_at_once(client, team) -> None:
    api_key, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    assert client.get("/api/v1/me", **bearer(raw)).status_code == 200
    api_key_revoke(actor=ACTOR, api_key=api_key)
    response = client.get("/api/v1/me", **bearer(raw))
    assert response.status_code == 401
    assert response.json() == {"detail": "This API key has been revoked."}


def test_key_without_the_scope_is_403_and_says_which(client, team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="ingest-only", scopes=[Scope.INGEST])
    response = client.get("/api/v1/me", **bearer(raw))
    assert response.status_code == 403
    assert response.json()["detail"] == "This API key lacks the 'read' scope (it has: ingest)."


def test_key_sees_only_its_own_team(client, team, other_team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    assert [t["slug"] for t in client.get("/api/v1/teams", **bearer(raw)).json()] == ["alpha"]
    assert client.get("/api/v1/teams/alpha", **bearer(raw)).status_code == 200
    response = client.get("/api/v1/teams/beta", **bearer(raw))
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_key_reads_only_its_teams_audit_events(client, team, other_team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    api_key_create(actor=ACTOR, team=other_team, name="theirs", scopes=["read"])
    items = client.get("/api/v1/audit", **bearer(raw)).json()["items"]
    assert items and {i["team"] for i in items} == {"alpha"}
    assert client.get("/api/v1/audit?team=beta", **bearer(raw)).json()["items"] == []


def test_bad_query_parameters_are_a_clear_422(client, team) -> None:
    _, raw = api_key_create(actor=ACTOR, team=team, name="k", scopes=["read"])
    response = client.get("/api/v1/audit?limit=0&since=yesterday", **bearer(raw))
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "The request is not valid: see 'errors'."
    assert {e["field"] for e in body["errors"]} == {"limit", "since"}


def test_session_users_use_the_api_with_their_roles(client, make_user, team, other_team) -> None:
    client.force_login(make_user("viewer", team))
    assert [t["slug"] for t in client.get("/api/v1/teams").json()] == ["alpha"]
    assert client.get("/api/v1/teams/beta").status_code == 404


def test_openapi_document_and_local_docs(client, admin_user) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["info"]["title"] == "Cockpit API"
    assert "/api/v1/audit" in schema["paths"]
    client.force_login(admin_user)
    docs = client.get("/api/v1/docs").content.decode()
    assert "/static/ninja/" in docs
    assert "cdn" not in docs.lower()
