"""Typed, validated reads of environment variables for settings.

Every helper raises ``ImproperlyConfigured`` naming the variable when its value cannot be
used, so a typo in production fails at start-up instead of being silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, environ)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false, 1/0, yes/no, on/off).")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}.")
    return number


def env_float(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    value = _raw(name, environ)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    return number


def env_list(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; blank items are dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_database(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse a ``postgres://`` or ``sqlite://`` URL into a Django ``DATABASES`` entry."""
    url = env_str(name, default, environ=environ) or default
    scheme = urlsplit(url).scheme
    if scheme not in {"postgres", "postgresql", "sqlite"}:
        raise ImproperlyConfigured(f"{name} must start with postgres:// or sqlite:// (got scheme {scheme!r}).")
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} could not be parsed: {exc}") from None
    if scheme == "sqlite":
        if not config.get("NAME") or config["NAME"] == ":memory:":
            raise ImproperlyConfigured(
                f"{name} must name a SQLite file (sqlite:////absolute/path.sqlite3): several "
                "processes share the database."
            )
        config["OPTIONS"] = {
            # Several processes (web, worker, beat) write: WAL lets readers run beside one writer;
            # BEGIN IMMEDIATE takes the write lock up front so read-then-write never deadlocks.
            "init_command": ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"),
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    else:
        # A pool per process: threads (the runs worker has dozens) wait for a free connection
        # instead of failing with "too many clients", and a thread that closes its connection
        # while it waits on a model hands it back to the pool at no cost.
        config["CONN_MAX_AGE"] = 0  # required with a pool: the pool keeps the connections
        config["OPTIONS"] = {
            **config.get("OPTIONS", {}),
            "pool": {
                "min_size": 1,
                "max_size": env_int("COCKPIT_DB_POOL_SIZE", 10, minimum=1, environ=environ),
                "timeout": env_int("COCKPIT_DB_POOL_TIMEOUT", 30, minimum=1, environ=environ),
            },
        }
    return config


def redis_urls(name: str, url: str) -> dict[str, str]:
    """Derive the client URLs for one Redis/Valkey server.

    ``redis://host:port/db``, ``rediss://…`` and ``unix:///path/to/socket?db=N`` are accepted.
    Kombu and Celery's result backend spell a unix socket ``redis+socket://``; redis-py (used by
    channels_redis and our own clients) spells it ``unix://``.
    """
    parts = urlsplit(url)
    if parts.scheme in {"redis", "rediss"}:
        return {"client": url, "celery": url}
    if parts.scheme == "unix":
        if not parts.path:
            raise ImproperlyConfigured(f"{name}={url!r} names no socket path.")
        db = parse_qs(parts.query).get("db", ["0"])[0]
        if not db.isdigit():
            raise ImproperlyConfigured(f"{name}={url!r}: db must be a number.")
        return {"client": url, "celery": f"redis+socket://{parts.path}?virtual_host={db}"}
    raise ImproperlyConfigured(f"{name} must start with redis://, rediss:// or unix:// (got scheme {parts.scheme!r}).")
