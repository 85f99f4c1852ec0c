"""A real PostgreSQL server for the tests: Debian's ``postgresql``, started on loopback in a temporary folder.

:func:`running_postgres` runs ``initdb`` into a fresh folder under the system temp dir and starts ``postgres``
on a free 127.0.0.1 port (its Unix socket in the same folder, so it never meets a system cluster), with
trust authentication for one superuser and durability switched off (a test server loses nothing that
matters). PostgreSQL refuses to run as root: as root, the folder is handed to the ``postgres`` system user
(the Debian package creates it) and the server runs as that user. On exit the server is stopped (fast
shutdown) and the folder deleted.

The server binaries live off PATH (``/usr/lib/postgresql/<version>/bin``); when none is installed,
:func:`server_bin` installs Debian's ``postgresql`` through :func:`debian.ensure_binary` (or skips, or fails
under ``KBSEARCH_TEST_REQUIRE_TOOLS=1``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from debian import _unavailable, ensure_binary
from servers import free_port

#: Where Debian installs each PostgreSQL major version's server.
SERVER_DIRS = "/usr/lib/postgresql"
#: The superuser ``initdb`` creates (trust authentication: no password).
SUPERUSER = "kbsearch"
#: The server's own time zone: deliberately not UTC, so a value stored or read in local time shows.
SERVER_TIMEZONE = "Asia/Shanghai"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _installed() -> Path | None:
    """The bin folder of the newest installed PostgreSQL server, or None."""
    found = [p.parent for p in Path(SERVER_DIRS).glob("*/bin/postgres") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def server_bin() -> Path:
    """The bin folder of the newest installed PostgreSQL server, installing Debian's ``postgresql`` when missing.

    Skips the calling test (fails it under ``KBSEARCH_TEST_REQUIRE_TOOLS=1``) when no server can be found
    or installed.
    """
    found = _installed()
    if found is None:
        # the server binaries are not on PATH: pg_ctlcluster (postgresql-common, which only the server
        # package pulls in) stands for the package
        ensure_binary("pg_ctlcluster", "postgresql")
        found = _installed()
    if found is None:
        _unavailable(f"no PostgreSQL server under {SERVER_DIRS}/*/bin after installing Debian's postgresql")
    assert found is not None
    return found


@dataclass
class PostgresServer:
    """A running test server: where it listens and how to reach it."""

    bin: Path
    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def version(self) -> str:
        """``postgres --version`` (e.g. ``postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)``)."""
        return subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server (psycopg 3, over TCP on loopback)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A plain psycopg connection (autocommit) to ``database``."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True,
                               connect_timeout=5)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; return its SQLAlchemy URL."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        path = self.root / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _as_server_user() -> dict[str, Any]:
    """``subprocess`` arguments that run a command as ``postgres`` when we are root (nothing otherwise)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        raise
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: open sessions are ended, not waited for), a kill if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL server on a free loopback port; yield it; stop it and delete its folder."""
    import psycopg

    bin_dir = server_bin()
    who = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="kbsearch-pg-"))  # short: the socket path must fit in 107 bytes
    proc: subprocess.Popen[bytes] | None = None
    try:
        (root / "sock").mkdir()
        if who:
            for p in (root, root / "sock"):
                os.chown(p, who["user"], who["group"])
        init = subprocess.run([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust",
                               "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                              cwd=root, capture_output=True, text=True, timeout=120, check=False, **who)
        if init.returncode != 0:
            pytest.fail(f"initdb failed (exit {init.returncode}): {init.stderr.strip()[-2000:]}")
        port = free_port()
        with open(root / "server.log", "wb") as log:
            proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root / "sock"),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"TimeZone={SERVER_TIMEZONE}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, **who)
        server = PostgresServer(bin=bin_dir, root=root, port=port, proc=proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"postgres exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.connect().close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail(f"postgres did not accept connections in {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
                time.sleep(0.2)
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)
