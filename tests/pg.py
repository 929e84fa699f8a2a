"""A throwaway PostgreSQL server on loopback for the tests: the ``postgres_url`` fixture.

The server binaries come from Debian's ``postgresql`` package (``bash tests/install_postgres.sh``,
part of the README's test command); this module installs nothing. Once per session it
``initdb``s a cluster in a temp folder, starts it with ``pg_ctl`` on a free port of 127.0.0.1
(unix socket in the same folder, fsync off), creates the user and database ``autoquant``
(trust auth, no password), yields a SQLAlchemy URL, and at the end stops the server and
removes the folder, also when the set-up or a test failed. The server refuses to run as
root, so under root every server command runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST = "127.0.0.1"  # the only address the server listens on and the tests connect to
assert ipaddress.ip_address(HOST).is_loopback
USER = DATABASE = "autoquant"
INSTALL_HINT = "run `bash tests/install_postgres.sh` (as root) to install Debian's postgresql"


def _bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(Path(p, "initdb"), os.X_OK) and os.access(Path(p, "pg_ctl"), os.X_OK)]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    return max(found, key=version) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, bindir: Path, root: Path, as_user: str | None) -> None:
        self.bindir, self.root, self.as_user = bindir, root, as_user
        self.data, self.sock, self.log = root / "data", root / "sock", root / "server.log"
        self.port = 0
        self.started = False

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                               + (f"\nserver log:\n{tail}" if tail else ""))
        return proc

    def init(self) -> None:
        self.sock.mkdir()
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        # A free port can be taken between probing and binding it: try a few.
        for attempt in range(3):
            self.port = _free_port()
            conf = (f"\n# tests/pg.py\nlisten_addresses = '{HOST}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sock}'\nfsync = off\n"
                    "synchronous_commit = off\nfull_page_writes = off\n")
            with open(self.data / "postgresql.conf", "a") as f:
                f.write(conf)
            try:
                self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                         "start", timeout=90)
                self.started = True
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def create_user_and_db(self) -> None:
        conn = ["-h", str(self.sock), "-p", str(self.port), "-U", "postgres"]
        self.run("createuser", *conn, USER)
        self.run("createdb", *conn, "-O", USER, DATABASE)

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        self.started = False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database on 127.0.0.1, for the whole session."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl) not found under "
                    f"/usr/lib/postgresql/*/bin: {INSTALL_HINT}")
    as_user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip(f"running as root but there is no `postgres` system user to run the server: {INSTALL_HINT}")
        as_user = "postgres"

    root = Path(tempfile.mkdtemp(prefix="autoquant-pg-"))
    server = _Server(bindir, root, as_user)
    try:
        t0 = time.perf_counter()
        server.init()
        server.start()
        server.create_user_and_db()
        print(f"\ntests/pg.py: PostgreSQL ({bindir.parent.name}) up on {HOST}:{server.port} "
              f"in {time.perf_counter() - t0:.1f} s")
        yield f"postgresql+psycopg2://{USER}@{HOST}:{server.port}/{DATABASE}"
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
