"""Settings come from the environment, and bad values stop the process with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from cockpit.lib.env import env_bool, env_database, env_int, env_list, env_str, redis_urls

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("YES", True), ("off", False), ("0", False), ("", False)],
)
def test_env_bool_reads_the_usual_spellings(raw: str, expected: bool) -> None:
    assert env_bool("X", not expected, environ={"X": raw}) is expected


def test_env_bool_rejects_anything_else_naming_the_variable() -> None:
    with pytest.raises(ImproperlyConfigured, match="DEBUG='ture' is not a boolean"):
        env_bool("DEBUG", False, environ={"DEBUG": "ture"})


def test_env_int_validates_type_and_bounds() -> None:
    assert env_int("N", 5, environ={}) == 5
    assert env_int("N", 5, environ={"N": " 42 "}) == 42
    with pytest.raises(ImproperlyConfigured, match="N='4x' is not a whole number"):
        env_int("N", 5, environ={"N": "4x"})
    with pytest.raises(ImproperlyConfigured, match="below the minimum of 1"):
        env_int("N", 5, minimum=1, environ={"N": "0"})


def test_env_list_splits_and_drops_blanks() -> None:
    assert env_list("HOSTS", ["a"], environ={"HOSTS": "x.example, y.example ,,"}) == [
        "x.example",
        "y.example",
    ]
    assert env_list("HOSTS", ["a"], environ={}) == ["a"]
    assert env_str("S", "d", environ={"S": ""}) == "d"


def test_database_url_postgres_and_sqlite() -> None:
    pg = env_database("DATABASE_URL", "", environ={"DATABASE_URL": "postgres://u:p@db.internal:6432/cockpit"})
    assert (pg["ENGINE"], pg["HOST"], pg["PORT"], pg["NAME"], pg["USER"]) == (
        "django.db.backends.postgresql",
        "db.internal",
        6432,
        "cockpit",
        "u",
    )
    assert pg["CONN_MAX_AGE"] == 0 and pg["OPTIONS"]["pool"]["max_size"] == 10
    lite = env_database("DATABASE_URL", "", environ={"DATABASE_URL": "sqlite:////tmp/x.sqlite3"})
    assert lite["NAME"] == "/tmp/x.sqlite3"
    assert lite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgress://u@h/db", "sqlite://"])
def test_database_url_rejects_unsupported_or_incomplete(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        env_database("DATABASE_URL", "", environ={"DATABASE_URL": url})


def test_redis_urls_for_tcp_and_unix_socket() -> None:
    assert redis_urls("REDIS_URL", "redis://r:6379/2") == {
        "client": "redis://r:6379/2",
        "celery": "redis://r:6379/2",
    }
    unix = redis_urls("REDIS_URL", "unix:///var/run/v.sock?db=3")
    assert unix == {
        "client": "unix:///var/run/v.sock?db=3",
        "celery": "redis+socket:///var/run/v.sock?virtual_host=3",
    }
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL must start with"):
        redis_urls("REDIS_URL", "http://r:6379")


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh process with ``env``, away from any demo's var/."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DEBUG",
            "SECRET_KEY",
            "ALLOWED_HOSTS",
            "DATABASE_URL",
            "COCKPIT_HTTPS",
            "COCKPIT_STATIC",
        }
    }
    return subprocess.run(
        [sys.executable, "-c", "import cockpit.settings"],
        env={**clean, "COCKPIT_VAR_DIR": str(tmp_path), **env},
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )


def test_secret_key_is_required_when_debug_is_off(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, ALLOWED_HOSTS="cockpit.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_allowed_hosts_are_required_when_debug_is_off(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, SECRET_KEY="x" * 60)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS must list the host names" in result.stderr


def test_a_typo_in_a_boolean_stops_start_up(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="flase")
    assert result.returncode != 0
    assert "DEBUG='flase' is not a boolean" in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"COCKPIT_HTTPS", "COCKPIT_STATIC", "DEBUG"}} | {
        "DEBUG": "false",
        "SECRET_KEY": "p" * 20 + "-production-secret-that-is-long-and-random-9f8e7d6c5b4a",
        "COCKPIT_AUDIT_KEY": "a" * 20 + "-audit-key-that-is-long-and-random-1a2b3c4d5e6f",
        "ALLOWED_HOSTS": "cockpit.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://cockpit.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "COCKPIT_BEHIND_PROXY": "true",
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_HOST_USER": "cockpit",
        "EMAIL_HOST_PASSWORD": "secret",
        "COCKPIT_VAR_DIR": str(tmp_path),  # no demo's var/demo.env
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_missing_smtp(tmp_path: Path) -> None:
    """Without EMAIL_HOST mail goes to files: fine for the demo, an error for production."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"COCKPIT_HTTPS", "COCKPIT_STATIC", "DEBUG", "EMAIL_HOST"}
    } | {
        "DEBUG": "false",
        "SECRET_KEY": "s" * 64,
        "ALLOWED_HOSTS": "cockpit.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        "COCKPIT_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "mail.E001" in result.stderr + result.stdout
    # No COCKPIT_AUDIT_KEY either: the audit key would change with SECRET_KEY.
    assert "cockpit.W001" in result.stderr + result.stdout


def test_a_short_audit_key_stops_start_up(tmp_path: Path) -> None:
    result = _import_settings(tmp_path, DEBUG="true", COCKPIT_AUDIT_KEY="short")
    assert result.returncode != 0
    assert "COCKPIT_AUDIT_KEY must be at least 32 characters" in result.stderr
