"""A private PostgreSQL server for the tests: started once per test run, a database per test.

``initdb`` in a temporary directory, a Unix socket only (no TCP port: nothing else on the
machine can reach it, and no port can clash), trust authentication, ``pg_ctl start``; stopped
and deleted when the run ends. Each test gets ``CREATE DATABASE ... TEMPLATE`` of a database
that already holds the journal's schema (~20-40 ms).

The server's binaries are Debian's (``/usr/lib/postgresql/*/bin``, or ``PG_BIN``). Without them
the tests that need it skip, saying so, except under CI (``CI=true``), where that fails the run:
CI must not pass by skipping what it was meant to run. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` user (or ``nobody``).

The server runs with ``fsync=off``: the tests kill relays, never the server, so a commit
survives in the server's memory as well as on disk, and the shared 2-core machine is spared the
flushes. scripts/bench measures a server with the default, durable settings.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

TEMPLATE = "relay_template"


def binaries() -> Path | None:
    if found := os.environ.get("PG_BIN"):
        return Path(found)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    found = Path(candidates[-1]) if candidates else None
    return found if found is not None and (found / "initdb").exists() else None


def _server_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and no user postgres or nobody to run PostgreSQL as")


class PrivateServer:
    def __init__(self, bin_dir: Path, *, settings: dict[str, str] | None = None):
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.dir / "data"
        self.user = _server_user()
        self.settings = settings if settings is not None else TEST_SETTINGS
        self._names = itertools.count(1)

    @property
    def socket_dir(self) -> str:
        return str(self.dir)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}"

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        user = self.user

        def demote():
            if user is not None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

        return subprocess.run(
            args, preexec_fn=demote, capture_output=True, text=True, check=True, **kwargs
        )

    def start(self) -> PrivateServer:
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = [f"-k {self.dir}", "-c listen_addresses=''"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.dir / "server.log"),
            "-o",
            " ".join(options),
            "start",
        )
        return self

    def admin(self):
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True)

    def make_template(self) -> None:
        """A database with the journal's schema, that each test's database copies."""
        from relay.journal.pg_schema import migrate

        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        import psycopg

        with psycopg.connect(self.url(TEMPLATE), autocommit=True) as conn:
            migrate(conn, TEMPLATE)

    def new_database(self, *, empty: bool = False) -> str:
        """A fresh database's URL: with the journal's schema, or ``empty``."""
        name = f"test_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {'template0' if empty else TEMPLATE}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}


# -- fixtures (conftest.py imports them) ---------------------------------------------------


@pytest.fixture(scope="session")
def postgresql_server():
    """The private server, once per test run."""
    bin_dir = binaries()
    if bin_dir is None:
        message = (
            "PostgreSQL's server binaries are not installed (looked in /usr/lib/postgresql/*/bin;"
            " apt-get install postgresql, or set PG_BIN)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: under CI these tests must run", pytrace=False)
        pytest.skip(message)
    server = PrivateServer(bin_dir)
    try:
        server.start()
        server.make_template()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def postgresql_url(postgresql_server) -> str:
    """A database of its own for this test, with the journal's schema."""
    return postgresql_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request) -> str | None:
    """For tests of the journal's promises, run on each engine: None (SQLite in the test's
    state_dir) or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgresql_url")


def rows(state_dir: Path, url: str | None, sql: str) -> list[tuple]:
    """What the journal holds, read as a test would (``sql`` in the SQL both engines speak)."""
    if url is None:
        import sqlite3

        with sqlite3.connect(state_dir / "journal.sqlite3", timeout=30) as conn:
            found = conn.execute(sql).fetchall()
        conn.close()
        return found
    import psycopg

    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
