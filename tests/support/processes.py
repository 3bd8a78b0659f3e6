"""Real Cockpit processes (daphne, a Celery worker) against the test database, for tests whose
path crosses processes: worker → channel layer → browser, crash recovery, browser tests.

They inherit this process's environment (REDIS_URL, COCKPIT_REDIS_PREFIX, SECRET_KEY, …) with
DATABASE_URL pointing at the test database, so they see what a ``transactional_db`` test
commits. Each is stopped (and its process group killed) when its fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO
from urllib.parse import quote

from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]


def test_database_url() -> str:
    """A DATABASE_URL for the test database this process is using."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = quote(s["USER"] or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    host = quote(s.get("HOST") or "localhost", safe="")  # a socket directory is a path
    port = f":{s['PORT']}" if s.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{s['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One child process with its output captured to a file (shown when a test fails)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        # Kept open for the life of the process (closed in stop()).
        self.log: IO[str] = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix=f"cockpit-{name}-", suffix=".log", delete=False
        )
        full_env = {
            **os.environ,
            "DATABASE_URL": test_database_url(),
            "PYTHONUNBUFFERED": "1",
            "COCKPIT_SPAN_EXPORT_DELAY_MS": "500",  # as in production: runtime spans stored in batches
            **(env or {}),
        }
        full_env.pop("COCKPIT_TASKS_EAGER", None)
        self.proc = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not print {text!r} within {timeout}s:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole process group (a worker and its pool children) without warning."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        if self.log.closed:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill()
        self.log.close()
        os.unlink(self.log.name)


def start_worker(
    *,
    name: str = "worker",
    concurrency: int = 2,
    queues: str | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Process:
    queues = queues or "default,runs,escalations,notifications,ingest,rollups,maintenance"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "cockpit",
        "worker",
        "-l",
        "INFO",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "-n",
        f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
        "--without-gossip",
        "--without-mingle",
        *(extra or []),
    ]
    worker = Process(name, command, env)
    worker.wait_for_output(" ready.", timeout=60)
    return worker


def start_web(port: int | None = None, env: dict[str, str] | None = None) -> tuple[Process, str]:
    port = port or free_port()
    web = Process(
        "web",
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "cockpit.asgi:application",
        ],
        env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return web, url
        except OSError:
            pass
        if web.proc.poll() is not None:
            break
        time.sleep(0.2)
    output = web.output()
    web.stop()
    raise RuntimeError(f"daphne did not start:\n{output[-3000:]}")
