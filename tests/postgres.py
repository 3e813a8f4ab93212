"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temporary folder, loopback only.

The server listens on 127.0.0.1 at a free port, with no Unix socket, and its only role authenticates
with a random password (scram-sha-256). PostgreSQL refuses to run as root, so under root the server
runs as the `postgres` system user. Where PostgreSQL is missing the tests skip, except under CI
(`CI=true`), where a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from services import free_port, unavailable

USER = "posweep"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One PostgreSQL cluster owned by a test session; `url(db)` gives a password URL to a database."""

    def __init__(self, binaries: Path):
        self.binaries = binaries
        self.password = f"pw{secrets.token_hex(12)}"
        self.root = Path(tempfile.mkdtemp(prefix="posweep-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        command = [*self._run_as, str(self.binaries / args[0]), *args[1:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def start(self) -> None:
        """initdb, then start on a free loopback port (a few tries in case a port is taken meanwhile)."""
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._run_as:
            account = pwd.getpwnam("postgres")
            os.chown(password_file, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            timeout=START_TIMEOUT_S,
        )
        password_file.unlink()
        base_config = (self.data / "postgresql.conf").read_text()
        error: Exception | None = None
        for _ in range(3):
            self.port = free_port()
            (self.data / "postgresql.conf").write_text(
                base_config
                + f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.root / "server.log"),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                    timeout=START_TIMEOUT_S + 10,
                )
                return
            except (RuntimeError, subprocess.TimeoutExpired) as failure:
                error = failure
        log = self.root / "server.log"
        raise RuntimeError(f"{error}; server log: {log.read_text()[-2000:] if log.exists() else ''}")

    def stop(self) -> None:
        """Stop the server (immediate shutdown; SIGKILL of its postmaster if that fails) and remove it."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    str(STOP_TIMEOUT_S),
                    "stop",
                    timeout=STOP_TIMEOUT_S + 10,
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, password: str | None = None, port: int | None = None) -> str:
        """A SQLAlchemy URL for a database of this server (optionally with another password or port)."""
        return f"postgresql://{USER}:{password or self.password}@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, always stopped and removed afterwards; skips (or fails under CI) without one."""
    binaries = find_binaries()
    if binaries is None:
        unavailable(
            "PostgreSQL", "initdb/pg_ctl not found (install PostgreSQL, e.g. apt-get install postgresql)"
        )
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        unavailable("PostgreSQL", "psycopg2 is not installed (pip install 'posweep[postgres]')")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable(
                "PostgreSQL", "running as root and there is no `postgres` system user to run the server as"
            )
        if shutil.which("runuser") is None:
            unavailable("PostgreSQL", "running as root and runuser (util-linux) is missing")
    server = PostgresServer(binaries)
    try:
        try:
            server.start()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
            unavailable("PostgreSQL", f"could not start a PostgreSQL server: {error}")
        yield server
    finally:
        server.stop()
