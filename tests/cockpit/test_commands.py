"""Management commands used by operators and by `make demo`."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from cockpit.models import ApiKey, AuditEvent, Membership, Team
from cockpit.services import api_key_authenticate

pytestmark = pytest.mark.django_db
BASE_DIR = Path(__file__).resolve().parents[2]


def test_create_api_key_prints_only_the_key(team) -> None:
    out = StringIO()
    call_command(
        "create_api_key",
        "--team",
        "alpha",
        "--scopes",
        "ingest, read",
        "--name",
        "otel collector",
        stdout=out,
    )
    printed = out.getvalue()
    assert printed.count("\n") == 1 and printed.startswith("ck_")
    api_key = api_key_authenticate(printed.strip())
    assert api_key is not None and api_key.scopes == ["ingest", "read"] and api_key.team == team
    event = AuditEvent.objects.get(action="api_key.create")
    assert (event.actor_type, event.actor_label) == ("system", "create_api_key command")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--team", "nope", "--scopes", "read", "--name", "x"],
            "No team with slug 'nope' (known: alpha)",
        ),
        (["--team", "alpha", "--scopes", "read,root", "--name", "x"], "Unknown scope(s) root"),
        (["--team", "alpha", "--scopes", "read", "--name", "  "], "Give the key a name"),
    ],
)
def test_create_api_key_refuses_bad_input_clearly(team, args, message) -> None:
    with pytest.raises(CommandError) as error:
        call_command("create_api_key", *args, stdout=StringIO())
    assert message in str(error.value)
    assert not ApiKey.objects.exists()


def test_create_api_key_stdout_is_clean_in_a_real_process(tmp_path) -> None:
    """What a script captures with $(manage.py create_api_key …) must be the key alone, even
    when the live bus is unreachable (warnings go to stderr)."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}",
        "REDIS_URL": f"unix://{tmp_path}/none.sock",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, env=env, check=True)
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from cockpit.models import Team; Team.objects.create(slug='ops', name='Ops')",
        ],
        cwd=BASE_DIR,
        env=env,
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "create_api_key",
            "--team",
            "ops",
            "--scopes",
            "runs",
            "--name",
            "ci",
        ],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(result.stdout.split()) == 1 and result.stdout.startswith("ck_")


def test_seed_demo_is_idempotent_and_prints_passwords_once(monkeypatch) -> None:
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    first = StringIO()
    call_command("seed_demo", stdout=first)
    counts = (
        Team.objects.count(),
        get_user_model().objects.count(),
        Membership.objects.count(),
        AuditEvent.objects.filter(actor_label="seed_demo").count(),
    )
    assert counts[0] == 3 and counts[1] >= 6 and counts[3] > 0
    assert "(unchanged)" not in first.getvalue()
    second = StringIO()
    call_command("seed_demo", stdout=second)
    assert (
        Team.objects.count(),
        get_user_model().objects.count(),
        Membership.objects.count(),
        AuditEvent.objects.filter(actor_label="seed_demo").count(),
    ) == counts
    assert second.getvalue().count("(unchanged)") == counts[1]


def test_seed_demo_covers_every_role_and_honours_demo_password(monkeypatch) -> None:
    monkeypatch.setenv("DEMO_PASSWORD", "demo-Passw0rd")
    call_command("seed_demo", stdout=StringIO())
    assert set(Membership.objects.values_list("role", flat=True)) == {
        "viewer",
        "operator",
        "approver",
        "finance",
        "admin",
    }
    assert get_user_model().objects.get(username="olivia").check_password("demo-Passw0rd")
    assert get_user_model().objects.filter(is_superuser=True).exists()
