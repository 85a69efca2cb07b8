"""`python -m annotation server start|stop|status|logs`: the embedded Argilla server.

    python -m annotation server start      # the first start installs argilla-server 2.8.0 (about a minute)
    python -m annotation server status     # URL, health, users, datasets (--json for scripts)
    python -m annotation server logs       # tail of the server, worker and Redis logs (--follow)
    python -m annotation server stop

`start` runs Redis (Debian's redis-server) on a free local port, migrates the database, then
starts the Argilla API + UI (uvicorn) and its rq worker from `annotation.server.app` in the server's
own venv (`var/argilla-venv`, pinned in annotation/server/requirements.txt: its pins clash with the
training stack), with the project's search engine (annotation/server/search_engine.py). All state lives in
the var dir: `var/argilla` in the repository, `$ANNOTATION_HOME`, or `--home`; the database is a SQLite file
there, or the PostgreSQL named by `start --database-url postgresql://...` (kept for later starts; the SQLite file
again with `--database-url sqlite`). The first start creates
the owner `argilla` with a random password and API key, kept in 0600 files there. Stopped and started
again, the server keeps all its data. With ARGILLA_API_URL and ARGILLA_API_KEY set, everything talks to
that external Argilla instead: `start` starts nothing and `status` reports on it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cli import CliParser, UserError, cli_entry, mask_passwords

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
OWNER = "argilla"
ENGINE = "annotation-sql"  # annotation.server.search_engine.ENGINE_NAME (that module imports argilla_server)
DEFAULT_PORT = 6900
DEFAULT_PROCESSES = min(2, os.cpu_count() or 1)
DEFAULT_CONCURRENCY = 1  # measured: annotation/server/app.py, Admission
SERVICES = ("redis", "server", "worker")
START_HINT = "start it with `python -m annotation server start`"
SQLITE = "sqlite"  # `--database-url sqlite`: the var dir's own SQLite file (the default)
POSTGRESQL = ("postgresql://", "postgresql+asyncpg://", "postgres://")


def home_dir(flag: str | None = None) -> Path:
    """The var dir: --home, else $ANNOTATION_HOME, else var/argilla in the repository."""
    return Path(flag or os.environ.get("ANNOTATION_HOME") or REPO_ROOT / "var" / "argilla").expanduser().resolve()


def venv_dir() -> Path:
    return Path(os.environ.get("ANNOTATION_SERVER_VENV") or REPO_ROOT / "var" / "argilla-venv").expanduser().resolve()


def external_server() -> tuple[str, str] | None:
    """(url, key) of the external Argilla named by ARGILLA_API_URL / ARGILLA_API_KEY, if any."""
    url = os.environ.get("ARGILLA_API_URL")
    if not url:
        return None
    key = os.environ.get("ARGILLA_API_KEY")
    if not key:
        raise UserError("ARGILLA_API_URL is set but ARGILLA_API_KEY is not: set both to use an external Argilla")
    return url.rstrip("/"), key


# ------------------------------------------------------------------------------------------------ the server venv


def ensure_server_venv() -> Path:
    """The server venv's python, installed from the pinned requirements on first use (a stamp marks them done)."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    stamp = venv / f".requirements-{digest}"
    if stamp.is_file() and python.is_file():
        return python
    print(f"server: installing argilla-server into {venv} (first use, about a minute)", flush=True)
    if not python.is_file():
        _run_step(["-m", "venv", str(venv)], sys.executable, "create the venv")
    log = venv / "install.log"
    _pip_install(python, log)
    for old in venv.glob(".requirements-*"):
        old.unlink()
    stamp.touch()
    return python


def _run_step(args: list[str], python: str, what: str) -> None:
    done = subprocess.run([python, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not {what} for the Argilla server: {last[0]}")


def _pip_install(python: Path, log: Path) -> None:
    """pip install -r requirements.txt with a progress bar over the pinned packages."""
    from tqdm import tqdm

    pins = [line for line in REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    with log.open("w") as out, tqdm(total=len(pins), desc="server: packages", unit="pkg") as bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            if line.startswith(("Collecting ", "Processing ", "Requirement already satisfied")) and bar.n < bar.total:
                bar.update(1)
            elif line.startswith("Installing collected packages"):
                bar.set_description("server: installing")
        code = process.wait()
        bar.update(bar.total - bar.n)
    if code != 0:
        errors = [line for line in log.read_text().splitlines() if line.startswith("ERROR")]
        raise UserError(
            f"installing argilla-server failed ({(errors or ['pip exit code ' + str(code)])[-1]}): see {log}"
        )


# ------------------------------------------------------------------------------------------------ state on disk


@dataclass
class Paths:
    home: Path

    @property
    def state(self) -> Path:
        return self.home / "server.json"

    @property
    def key_file(self) -> Path:
        return self.home / "owner-api-key"

    @property
    def password_file(self) -> Path:
        return self.home / "owner-password"

    @property
    def auth_secret_file(self) -> Path:
        """The key that signs the UI's login tokens: one for every server process and across restarts."""
        return self.home / "auth-secret"

    @property
    def database_url_file(self) -> Path:
        """The PostgreSQL URL given to `start --database-url` (0600: it may hold a password); none: SQLite."""
        return self.home / "database-url"

    @property
    def lock(self) -> Path:
        return self.home / "start.lock"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def sqlite_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.home / 'argilla.db'}"

    def database_url(self) -> str:
        """The database the server runs on: the saved PostgreSQL URL, else the SQLite file in the var dir."""
        if self.database_url_file.is_file():
            return self.database_url_file.read_text().strip()
        return self.sqlite_url

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass
class State:
    """What `start` launched: ports, URL and the processes (pid + start time, so a reused pid is not ours)."""

    host: str = "127.0.0.1"
    port: int | None = None
    redis_port: int | None = None
    processes: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def load(cls, paths: Paths) -> State:
        try:
            data = json.loads(paths.state.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(**{k: data[k] for k in ("host", "port", "redis_port", "processes") if k in data})

    def save(self, paths: Paths) -> None:
        tmp = paths.state.with_name(f".{paths.state.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(paths.state)

    def alive(self) -> dict[str, int]:
        """service -> pid of the recorded processes still running."""
        import psutil

        running = {}
        for name, proc in self.processes.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(int(proc["pid"]))
                if abs(process.create_time() - proc["created"]) < 1 and process.status() != psutil.STATUS_ZOMBIE:
                    running[name] = int(proc["pid"])
        return running


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    path.chmod(0o600)


# ------------------------------------------------------------------------------------------------ processes


def _port_free(port: int) -> bool:
    """Free for a server to listen on (connections of a stopped one in TIME_WAIT do not count, as for uvicorn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _choose_port(explicit: int | None, previous: int | None, default: int | None, what: str, flag: str) -> int:
    if explicit is not None:
        if not _port_free(explicit):
            raise UserError(f"{what} port {explicit} is taken by another program: choose another with {flag}")
        return explicit
    for candidate in (previous, default):
        if candidate and _port_free(candidate):
            return candidate
    return _free_port()


def _spawn(
    state: State, paths: Paths, name: str, command: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.Popen:
    """Start a service in its own session (so `stop` ends its whole process group) and record it at once."""
    import psutil

    with paths.log(name).open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    state.processes[name] = {"pid": process.pid, "created": psutil.Process(process.pid).create_time()}
    state.save(paths)
    if process.stdin is not None:
        with process.stdin:  # secrets go through a pipe: never on a command line or in a log
            process.stdin.write(stdin.encode())
    return process


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait_for(check: Any, process: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    """Poll `check` until it passes; a gap over 5 s between polls (a suspended machine) counts as 5 s."""
    waited, last = 0.0, time.monotonic()
    while not check():
        if process.poll() is not None:
            raise UserError(
                f"{what} exited during start-up ({_last_line(log)}): see `python -m annotation server logs`"
            )
        now = time.monotonic()
        waited, last = waited + min(now - last, 5.0), now
        if waited > timeout:
            raise UserError(
                f"{what} did not answer within {timeout:.0f} s: see `python -m annotation server logs` "
                "(or give it longer with --timeout)"
            )
        time.sleep(0.2)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:200] if lines else "empty log"


def _server_env(paths: Paths, redis_port: int) -> dict[str, str]:
    """The inherited environment minus any ARGILLA_* (a shell's database URL must not leak in), plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(
        ARGILLA_HOME_PATH=str(paths.home),
        ARGILLA_DATABASE_URL=async_database_url(paths.database_url()),
        ARGILLA_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        ARGILLA_SEARCH_ENGINE=ENGINE,
        ARGILLA_ENABLE_TELEMETRY="false",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
        COLUMNS="160",  # Argilla logs through rich, which wraps at 80 columns without a terminal
    )
    return env


def _stop_processes(state: State) -> list[str]:
    """SIGTERM every recorded process group, SIGKILL what is left after 15 s; returns the services stopped."""
    import psutil

    running = state.alive()
    order = [name for name in ("worker", "server", "redis") if name in running]
    for name in order:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running[name], signal.SIGTERM)
    processes = [psutil.Process(running[name]) for name in order]
    _, survivors = psutil.wait_procs(processes, timeout=15)
    for process in survivors:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    psutil.wait_procs(survivors, timeout=5)
    for name in running:  # the groups' other members (the worker's job processes) go with them
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running[name], signal.SIGKILL)
    state.processes = {}
    return order


# ------------------------------------------------------------------------------------------------ HTTP


def _get(url: str, key: str | None = None, timeout: float = 5) -> Any:
    request = urllib.request.Request(url, headers={"X-Argilla-Api-Key": key} if key else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        return "version" in _get(f"{url}/api/v1/status", timeout=3)
    except (OSError, ValueError):
        return False


def _inventory(url: str, key: str) -> dict[str, Any]:
    """Users and datasets as the owner's key sees them ({} on any error: status must not fail on them)."""
    try:
        users = _get(f"{url}/api/v1/users", key)["items"]
        workspaces = {w["id"]: w["name"] for w in _get(f"{url}/api/v1/me/workspaces", key)["items"]}
        datasets = _get(f"{url}/api/v1/me/datasets", key)["items"]
    except (OSError, ValueError, KeyError):
        return {}
    return {
        "users": [{"username": u["username"], "role": u["role"]} for u in users],
        "datasets": [f"{workspaces.get(d['workspace_id'], '?')}/{d['name']}" for d in datasets],
    }


# ------------------------------------------------------------------------------------------------ commands


def start(args: argparse.Namespace) -> int:
    for flag in ("processes", "concurrency"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    external = external_server()
    if external is not None:
        print(f"using the external Argilla at {external[0]} (ARGILLA_API_URL): nothing started here")
        return 0
    database = checked_database_url(args.database_url)
    paths = Paths(home_dir(args.home))
    if not paths.home.exists():  # nothing of ours can hold a port yet: fail before writing anything
        _choose_port(args.port, None, None, "the server", "--port")
        _choose_port(args.redis_port, None, None, "Redis", "--redis-port")
    with _start_lock(paths, args.timeout) as waited:
        state = State.load(paths)
        running = state.alive()
        if set(running) == set(SERVICES) and state.url and _healthy(state.url):
            _same_server(state, paths, args, database)
            also = ": another `start` started it at the same moment" if waited else ""
            print(f"already running at {state.url} (var dir {paths.home}){also}")
            return 0
        if waited:
            raise UserError(
                f"another `start` was starting the server in {paths.home} at the same moment and it did not come up: "
                "see `python -m annotation server logs`"
            )
        if running:
            missing = ", ".join(sorted(set(SERVICES) - set(running)))
            problem = f"{missing} stopped" if missing else "the server does not answer"
            print(f"server: {problem} ({', '.join(sorted(running))} still running): restarting everything")
            _stop_processes(state)
            state.save(paths)
        return _start_locked(args, paths, state, database)


def _start_locked(args: argparse.Namespace, paths: Paths, state: State, database: str | None) -> int:
    redis = shutil.which("redis-server")
    if redis is None:
        raise UserError(
            "redis-server not found: install it (Debian: apt-get install redis-server; macOS: brew install redis)"
        )
    state.host = args.host or "127.0.0.1"
    state.port = _choose_port(args.port, state.port, DEFAULT_PORT, "the server", "--port")
    state.redis_port = _choose_port(args.redis_port, None, None, "Redis", "--redis-port")
    if database == SQLITE:
        paths.database_url_file.unlink(missing_ok=True)
    elif database is not None:
        _write_secret(paths.database_url_file, database)
    paths.logs.mkdir(exist_ok=True)
    python = ensure_server_venv()
    began = time.monotonic()
    try:
        _start_services(state, paths, redis, python, args.timeout, args.processes, args.concurrency)
    except BaseException:
        _stop_processes(state)
        state.save(paths)
        raise
    print(f"Argilla is running at {state.url} (started in {time.monotonic() - began:.1f} s; var dir {paths.home})")
    print(f"  owner: {OWNER}; API key in {paths.key_file}; password in {paths.password_file}")
    print(f"  database: {mask_passwords(paths.database_url())}")
    print("  stop it with `python -m annotation server stop`; logs: `python -m annotation server logs`")
    return 0


def checked_database_url(value: str | None) -> str | None:
    """`--database-url` checked: a PostgreSQL URL, or `sqlite` (back to the var dir's SQLite file)."""
    if value is None or value == SQLITE:
        return value
    if not value.startswith(POSTGRESQL):
        raise UserError(f"--database-url takes a postgresql:// URL or `sqlite`, not {mask_passwords(value)!r}")
    return value


def async_database_url(url: str) -> str:
    """A PostgreSQL URL with the driver Argilla runs on (asyncpg; its migrations take the sync one themselves)."""
    for prefix in POSTGRESQL:
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


@contextlib.contextmanager
def _start_lock(paths: Paths, timeout: float) -> Iterator[bool]:
    """Held by one `start` at a time in a var dir; yields whether another `start` held it first (this one waited)."""
    with contextlib.suppress(FileExistsError):
        paths.home.mkdir(parents=True)
        paths.home.chmod(0o700)  # the database holds every user's API key
    descriptor = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited, deadline = False, time.monotonic() + timeout + 60
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() > deadline:
                    raise UserError(
                        f"another `start` has been starting the server in {paths.home} for too long"
                    ) from None
                time.sleep(0.2)
        yield waited
    finally:
        os.close(descriptor)


def _same_server(state: State, paths: Paths, args: argparse.Namespace, database: str | None) -> None:
    """A running server answers a `start` only if it is the one asked for (port, interface, database)."""
    asked = {
        "port": (args.port, state.port),
        "interface": (args.host, state.host),
        "database": (paths.sqlite_url if database == SQLITE else database, paths.database_url()),
    }
    different = " and ".join(name for name, (want, have) in asked.items() if want is not None and want != have)
    if different:
        raise UserError(
            f"a server with another {different} is already running at {state.url} (var dir {paths.home}): "
            "stop it first with `python -m annotation server stop`"
        )


def _start_services(
    state: State, paths: Paths, redis: str, python: Path, timeout: float, processes: int, concurrency: int
) -> None:
    if not paths.auth_secret_file.is_file():
        _write_secret(paths.auth_secret_file, secrets.token_hex(32))
    # Else Argilla draws a token key in each process: a login made by one server process was refused by the
    # other (the UI stuck on its splash screen), and every restart logged everybody out.
    env = _server_env(paths, state.redis_port)
    env["ARGILLA_AUTH_SECRET_KEY"] = paths.auth_secret_file.read_text().strip()
    redis_dir = paths.home / "redis"
    redis_dir.mkdir(exist_ok=True)
    redis_command = [redis, "--port", str(state.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
    process = _spawn(state, paths, "redis", [*redis_command, "--save", "60 1", "--appendonly", "no"], env)
    _wait_for(lambda: _redis_ready(state.redis_port), process, 15, "Redis", paths.log("redis"))

    replace = not (paths.key_file.is_file() and paths.password_file.is_file())
    if replace:
        _write_secret(paths.key_file, secrets.token_urlsafe(32))
        _write_secret(paths.password_file, secrets.token_urlsafe(12))
        password = paths.password_file.read_text().strip()
        print(f"server: owner {OWNER!r}, password {password} (shown once; also in {paths.password_file})")
    owner = {
        "api_key": paths.key_file.read_text().strip(),
        "password": paths.password_file.read_text().strip(),
        "replace": replace,  # new files: an existing owner (whose files were lost) gets these credentials
    }
    # Not `-m`: uvicorn's server processes start as fresh interpreters that re-run a `-m` main module, and died.
    app = [str(python), "-c", "from annotation.server.app import main; main()"]
    _spawn(state, paths, "worker", [*app, "worker"], env)
    serve = [*app, "serve", "--host", state.host, "--port", str(state.port), "--processes", str(processes)]
    serve += ["--concurrency", str(concurrency)]
    server = _spawn(state, paths, "server", serve, env, stdin=json.dumps(owner))
    _wait_for(lambda: _healthy(state.url), server, timeout, f"the Argilla server at {state.url}", paths.log("server"))


def stop(args: argparse.Namespace) -> int:
    external = external_server()
    if external is not None:
        print(f"ARGILLA_API_URL points at the external Argilla {external[0]}: it is not managed here, nothing stopped")
        return 0
    paths = Paths(home_dir(args.home))
    state = State.load(paths)
    stopped = _stop_processes(state)
    if paths.state.exists():
        state.save(paths)
    print(
        f"stopped {', '.join(stopped)}" if stopped else f"no embedded Argilla server is running (var dir {paths.home})"
    )
    return 0


def status(args: argparse.Namespace) -> int:
    external = external_server()
    if external is not None:
        url, key = external
        report: dict[str, Any] = {"url": url, "external": True, "running": None, "api_key_file": None}
    else:
        paths = Paths(home_dir(args.home))
        state = State.load(paths)
        running = state.alive()
        url = state.url if "server" in running else None
        key = paths.key_file.read_text().strip() if paths.key_file.is_file() else None
        report = {
            "url": url,
            "external": False,
            "running": sorted(running),
            "home": str(paths.home),
            "api_key_file": str(paths.key_file) if key else None,
            "password_file": str(paths.password_file) if paths.password_file.is_file() else None,
            "owner": OWNER,
            "database": mask_passwords(paths.database_url()),
        }
    report["healthy"] = bool(url) and _healthy(url)
    if report["healthy"] and key:
        report.update(_inventory(url, key))
    if args.json:
        print(json.dumps(report, indent=2))
    if not report["healthy"]:
        where = f"at {url}" if url else f"in {report.get('home')}"
        hint = "check ARGILLA_API_URL" if external else START_HINT
        raise UserError(f"no healthy Argilla server {where}: {hint}")
    if not args.json:
        _print_status(report)
    return 0


def _print_status(report: dict[str, Any]) -> None:
    print(f"Argilla at {report['url']}: healthy{' (external)' if report['external'] else ''}")
    if report.get("database"):
        print(f"  database: {report['database']}")
    if report.get("api_key_file"):
        print(f"  owner {report['owner']}: API key in {report['api_key_file']}, password in {report['password_file']}")
    users = report.get("users", [])
    print(f"  users ({len(users)}): " + ", ".join(f"{u['username']} ({u['role']})" for u in users))
    datasets = report.get("datasets", [])
    print(f"  datasets ({len(datasets)}): " + (", ".join(datasets) or "none"))


def logs(args: argparse.Namespace) -> int:
    paths = Paths(home_dir(args.home))
    files = [paths.log(name) for name in ("server", "worker", "redis") if paths.log(name).is_file()]
    if not files:
        raise UserError(f"no logs in {paths.logs}: the server was never started there ({START_HINT})")
    for path in files:
        print(f"==> {path} <==")
        print("\n".join(path.read_text(errors="replace").splitlines()[-args.lines :]))
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):
            for name, line in _follow(files):
                print(f"[{name}] {line}", flush=True)
    return 0


def _follow(files: list[Path]) -> Iterator[tuple[str, str]]:
    offsets = {path: path.stat().st_size for path in files}
    while True:
        for path in files:
            with path.open(errors="replace") as handle:
                handle.seek(offsets[path])
                chunk = handle.read()
                offsets[path] = handle.tell()
            for line in chunk.splitlines():
                yield path.stem, line
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="python -m annotation server", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="var dir with the database, logs and owner files ($ANNOTATION_HOME, var/argilla)")

    start_parser = commands.add_parser("start", parents=[home], help="start Redis, the server and its worker")
    start_parser.add_argument("--port", type=int, help=f"server port (default: the last one, {DEFAULT_PORT}, or free)")
    start_parser.add_argument("--redis-port", type=int, help="Redis port (default: a free one)")
    start_parser.add_argument("--host", help="interface to serve on (default 127.0.0.1; 0.0.0.0: the whole network)")
    start_parser.add_argument(
        "--database-url",
        help="run on this PostgreSQL (postgresql://user@host/db, kept for later starts; the database must exist); "
        "`sqlite`: back to the var dir's SQLite file (the default)",
    )
    start_parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the server to answer")
    start_parser.add_argument(
        "--processes",
        type=int,
        default=DEFAULT_PROCESSES,
        help=f"API server processes (default {DEFAULT_PROCESSES}: one per core, at most 2)",
    )
    start_parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests each server process works on at once; the others wait their turn (default "
        f"{DEFAULT_CONCURRENCY}: fastest for many annotators; raise it where long requests are common)",
    )
    commands.add_parser("stop", parents=[home], help="stop the server, its worker and Redis")
    status_parser = commands.add_parser("status", parents=[home], help="URL, health, users and datasets")
    status_parser.add_argument("--json", action="store_true", help="machine-readable (url, healthy, api_key_file...)")
    logs_parser = commands.add_parser("logs", parents=[home], help="the end of each log")
    logs_parser.add_argument("-n", "--lines", type=int, default=40, help="lines per log")
    logs_parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"start": start, "stop": stop, "status": status, "logs": logs}[args.command](args)
