"""Sign-in, throttling, CSP and the other headers a security review looks at first."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cockpit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_pages_require_sign_in(client) -> None:
    for url in ("/", "/audit/", "/fleet/runs/", "/fleet/agents/", "/settings/api-keys/", "/system/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/account/login/"), url


def test_csp_forbids_inline_script_and_foreign_assets(client) -> None:
    response = client.get(reverse("login"))
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_pages_carry_no_inline_script(client, admin_user) -> None:
    client.force_login(admin_user)
    for url in ("/", "/audit/", "/settings/api-keys/", "/settings/teams/", reverse("login")):
        html = client.get(url).content.decode()
        for chunk in html.split("<script")[1:]:
            assert chunk.lstrip().startswith("src="), f"inline script on {url}"
        assert " onclick=" not in html and " style=" not in html, url


def test_sign_in_works_and_is_audited(client, make_user, team, password) -> None:
    user = make_user("viewer", team, username="vera")
    response = client.post(reverse("login"), {"username": "vera", "password": password}, REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 302 and response["Location"] == "/"
    event = AuditEvent.objects.get(action="user.login", object_id=str(user.pk))
    assert event.ip == "198.51.100.7"


def test_sign_in_is_locked_after_repeated_failures(client, make_user, team, password, settings) -> None:
    make_user("viewer", team, username="vera")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post(reverse("login"), {"username": "vera", "password": "wrong"}, REMOTE_ADDR="198.51.100.7")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    locked = client.post(reverse("login"), {"username": "vera", "password": "wrong"}, REMOTE_ADDR="198.51.100.7")
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()
    # Even the right password is refused while locked …
    still = client.post(reverse("login"), {"username": "vera", "password": password}, REMOTE_ADDR="198.51.100.7")
    assert still.status_code == 429
    # … from that address; the same account from elsewhere is not locked out.
    elsewhere = client.post(reverse("login"), {"username": "vera", "password": password}, REMOTE_ADDR="192.0.2.44")
    assert elsewhere.status_code == 302


def test_sign_out_is_a_post(client, admin_user) -> None:
    client.force_login(admin_user)
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout")).status_code == 302
    assert client.get("/").status_code == 302


def test_password_change_checks_the_old_one_and_is_audited(client, admin_user, password) -> None:
    client.force_login(admin_user)
    bad = client.post(
        reverse("password-change"),
        {
            "old_password": "nope",
            "new_password1": "N3w-passphrase!x",
            "new_password2": "N3w-passphrase!x",
        },
    )
    assert bad.status_code == 400
    assert not AuditEvent.objects.filter(action="user.password_change").exists()
    good = client.post(
        reverse("password-change"),
        {
            "old_password": password,
            "new_password1": "N3w-passphrase!x",
            "new_password2": "N3w-passphrase!x",
        },
    )
    assert good.status_code == 302
    assert client.get("/").status_code == 200  # still signed in
    assert AuditEvent.objects.filter(action="user.password_change", object_id=str(admin_user.pk)).exists()


def test_healthz_answers_without_details(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": True, "redis": True}


def test_static_assets_are_served_locally(client) -> None:
    from django.contrib.staticfiles import finders

    assert finders.find("django_htmx/htmx-2.min.js")
    assert finders.find("cockpit/js/live.js")
