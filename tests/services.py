"""Helpers for tests that need real external programs or services.

Such a test skips when what it needs is missing, unless ``VENDORGUARD_REQUIRE_SERVICES=1``
(set in CI), where a missing service is a failure instead of a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["POSTGRES_LIB", "REQUIRE_SERVICES_ENV", "RedisServer", "missing_service",
           "postgres_bindir", "postgres_server", "require_binary", "require_postgres",
           "services_required"]

REQUIRE_SERVICES_ENV = "VENDORGUARD_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether missing services must fail the test run rather than skip."""
    return os.environ.get(REQUIRE_SERVICES_ENV) == "1"


def require_binary(name: str) -> str:
    """The path of executable ``name`` on PATH; skips the test (fails under
    ``VENDORGUARD_REQUIRE_SERVICES=1``) when it is not installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (not found on PATH)"
    if services_required():
        pytest.fail(f"{reason}, and {REQUIRE_SERVICES_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{reason}; set {REQUIRE_SERVICES_ENV}=1 to make this a failure")


# -- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_LIB = Path("/usr/lib/postgresql")
"""Where Debian installs PostgreSQL's server programs (``<version>/bin``, not on PATH)."""
_POSTGRES_PROGRAMS = ("initdb", "postgres", "pg_ctl", "pg_isready")


def missing_service(reason: str) -> NoReturn:
    """Skip the test because of ``reason`` (fail under ``VENDORGUARD_REQUIRE_SERVICES=1``)."""
    if services_required():
        pytest.fail(f"{reason}, and {REQUIRE_SERVICES_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{reason}; set {REQUIRE_SERVICES_ENV}=1 to make this a failure")


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's ``initdb`` and ``postgres``: on PATH, else Debian's
    newest ``/usr/lib/postgresql/<version>/bin``; None when PostgreSQL is not installed."""
    candidates = []
    found = shutil.which("initdb")
    if found is not None:
        candidates.append(Path(found).resolve().parent)  # a symlink on PATH: its real home
    versions = sorted((p for p in POSTGRES_LIB.glob("*/bin") if p.parent.name.isdigit()),
                      key=lambda p: int(p.parent.name), reverse=True)
    for bindir in [*candidates, *versions]:
        if all(os.access(bindir / name, os.X_OK) for name in _POSTGRES_PROGRAMS):
            return bindir
    return None


def require_postgres() -> Path:
    """PostgreSQL's bin directory; skips (or fails, see above) when it is not installed."""
    bindir = postgres_bindir()
    if bindir is None:
        missing_service(f"PostgreSQL is not installed (no initdb on PATH or in "
                        f"{POSTGRES_LIB}/<version>/bin; Debian: apt-get install postgresql)")
    return bindir


def _as_postgres_user(base: Path) -> list[str]:
    """The command prefix to run PostgreSQL's programs: root must hand them to the postgres
    system user (PostgreSQL refuses to run as root), who then gets ``base``."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing_service("running as root, and there is no postgres user to run PostgreSQL as")
    if runuser is None:
        missing_service("running as root, and runuser (to run PostgreSQL as postgres) is "
                        "missing")
    os.chown(base, user.pw_uid, user.pw_gid)
    return [runuser, "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def postgres_server(bindir: Path, *, timeout: float = 30.0) -> Iterator[str]:
    """Run a throwaway PostgreSQL server on 127.0.0.1 (a fresh ``initdb`` in a temporary
    directory, trust authentication, no fsync); yields its DSN (user and database
    ``postgres``); stops it and removes the directory afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vendorguard-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    data = base / "data"
    try:
        prefix = _as_postgres_user(base)
        init = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                               "-A", "trust", "-E", "UTF8", "--no-sync"],
                              capture_output=True, text=True, timeout=120, check=False)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        for _ in range(3):  # the free port may be taken before the server binds it
            port = _free_port()
            with open(base / "postgres.log", "wb") as log:
                proc = subprocess.Popen(
                    [*prefix, str(bindir / "postgres"), "-D", str(data), "-k", str(base),
                     "-h", "127.0.0.1", "-p", str(port), "-c", "fsync=off",
                     "-c", "full_page_writes=off", "-c", "max_connections=100"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            if _wait_ready(bindir, port, proc, timeout):
                break
            proc.wait(timeout=10)
            proc = None
        if proc is None:
            log_text = (base / "postgres.log").read_text(errors="replace")
            raise RuntimeError(f"PostgreSQL did not start: {log_text[-2000:]}")
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        if proc is not None:
            _stop_postgres(bindir, data, proc, prefix)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(bindir: Path, port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll (bounded) until the server accepts connections; False if it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        ready = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                                str(port), "-U", "postgres", "-t", "1"], check=False)
        if ready.returncode == 0:
            return True
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:g} s")
        time.sleep(0.05)
    return False


def _stop_postgres(bindir: Path, data: Path, proc: subprocess.Popen[bytes],
                   prefix: list[str]) -> None:
    """A fast shutdown (pg_ctl stop), then make sure nothing of this server is left."""
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast",
                    "-w", "-t", "20"], capture_output=True, timeout=30, check=False)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pid_file = data / "postmaster.pid"  # the server itself, under runuser
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)


# -- Redis --------------------------------------------------------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1: no persistence, not daemonized, its files in a
    temporary directory. :meth:`stop` kills it (as a crash would) and :meth:`start` runs it again
    on the same port, so a test can take Redis away mid-test and bring it back.

    ::

        with RedisServer(require_binary("redis-server")) as server:
            client = redis.Redis.from_url(server.url)
            server.stop(); server.start()
    """

    def __init__(self, binary: str, *, ready_timeout: float = 10.0) -> None:
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Run the server (on a free port the first time, on the same port afterwards) and
        wait, bounded, until it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server is already running on port {self.port}")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="vendorguard-redis-"))
        first = self.port == 0
        for _ in range(3 if first else 1):  # a free port may be taken before the server binds
            if first:
                self.port = _loopback_port()
            if self._launch():
                return self
        log = (self._dir / "redis.log").read_text(errors="replace")
        raise RuntimeError(f"redis-server did not start on port {self.port}: {log[-2000:]}")

    def _launch(self) -> bool:
        assert self._dir is not None
        with open(self._dir / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self._dir),
                 "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self._dir)
        deadline = time.monotonic() + self.ready_timeout
        while self._proc.poll() is None:
            if _redis_ping(self.port):
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within "
                                   f"{self.ready_timeout:g} s")
            time.sleep(0.01)
        self._proc = None  # it exited: most likely the port was taken
        return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, like a crash) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _redis_ping(port: int) -> bool:
    """Whether a Redis server on 127.0.0.1:``port`` answers PING (within half a second)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
