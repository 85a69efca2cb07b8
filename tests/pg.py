"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, `initdb` + `pg_ctl` in a temp dir,
reachable only through a unix socket in that dir, removed when the `with` block ends.

PostgreSQL refuses to run as root (as the tests do in CI): then the server runs as the `postgres` user the
Debian package creates (or `nobody`), which owns the temp dir. Password authentication is on, so tests use
URLs with a password the way users do.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "pipelines"
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"


@dataclass
class Cluster:
    socket_dir: Path
    password: str

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL with the password in it, through the unix socket."""
        return f"postgresql://{SUPERUSER}:{self.password}@/{database}?host={self.socket_dir}"


def server_bin_dir() -> Path:
    """The folder holding initdb/pg_ctl: on PATH, else the newest Debian install."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(Path("/").glob(DEBIAN_BIN_DIRS.lstrip("/")), key=lambda p: int(p.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: install Debian's `postgresql` (scripts/setup.sh)")
    return found[-1]


def _server_user() -> str | None:
    """Who runs the server: None (the current user) unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and no unprivileged user (postgres or nobody) to run PostgreSQL as")


def _run(user: str | None, *command: str | Path) -> None:
    argv = [str(part) for part in command]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


@contextmanager
def throwaway_cluster(password: str = "pg-test-secret") -> Iterator[Cluster]:
    """A running cluster (superuser `pipelines`, database `postgres`), stopped and deleted on exit."""
    bin_dir = server_bin_dir()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="pipelines-pg-"))
    data = root / "data"
    password_file = root / "password"
    password_file.write_text(password + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (root, password_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run(
            user,
            bin_dir / "initdb",
            "--pgdata",
            data,
            "--username",
            SUPERUSER,
            "--pwfile",
            password_file,
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",  # a throwaway cluster: skip the fsyncs
        )
        # no TCP at all (listen_addresses empty), the socket in our own dir, no fsync
        options = f"-c listen_addresses= -c unix_socket_directories={root} -c fsync=off"
        _run(user, bin_dir / "pg_ctl", "--pgdata", data, "--log", root / "server.log", "-w", "-o", options, "start")
        started = True
        yield Cluster(socket_dir=root, password=password)
    finally:
        if started:
            _run(user, bin_dir / "pg_ctl", "--pgdata", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
