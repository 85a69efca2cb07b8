"""`python -m annotation.server.conformance`: argilla-server 2.8.0's search-engine tests against the project's engine.

    python -m annotation.server.conformance                 # all of tests/unit/search_engine/, on SQLite
    python -m annotation.server.conformance --database-url postgresql://user:pw@/db?host=/run/postgresql
    python -m annotation.server.conformance -k metadata     # extra arguments go to pytest

Downloads the argilla-server sdist once into .cache/argilla-conformance (their code: never
committed), installs the test tools pinned in requirements.txt beside it, and runs the sdist's
`tests/unit/search_engine/` in the server venv with plugin.py in place of the sdist's conftests, on a
throwaway SQLite database, or on the PostgreSQL database `--database-url` names (migrated to Argilla's
schema; each test's rows are rolled back, so a fresh database stays empty). Prints pass/total and each skipped
test with its reason (only tests of
Elasticsearch internals are skipped). Exit code: pytest's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from annotation.server.launcher import (
    ENGINE,
    REPO_ROOT,
    SQLITE,
    async_database_url,
    checked_database_url,
    ensure_server_venv,
)
from pipelines.cli import UserError, cli_entry

VERSION = "2.8.0"
CACHE = REPO_ROOT / ".cache" / "argilla-conformance"
TOOLS = Path(__file__).with_name("requirements.txt")


def _pip(python: Path, *args: str, what: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["pip failed"]
        raise UserError(f"could not {what}: {errors[-1]}")


def sdist_tests(python: Path) -> Path:
    """The unpacked sdist (downloaded on first use)."""
    unpacked = CACHE / f"argilla_server-{VERSION}"
    if (unpacked / "tests" / "unit" / "search_engine").is_dir():
        return unpacked
    archive = CACHE / f"argilla_server-{VERSION}.tar.gz"
    if not archive.is_file():
        print(f"conformance: downloading the argilla-server {VERSION} sdist into {CACHE}", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        spec = f"argilla-server=={VERSION}"
        _pip(python, "download", "--no-binary", ":all:", "--no-deps", spec, "-d", str(CACHE), what=f"download {spec}")
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return unpacked


def test_tools(python: Path) -> Path:
    """A folder with pytest and the sdist's test dependencies (installed once per requirements.txt)."""
    site = CACHE / "site"
    stamp = site / f".requirements-{hashlib.sha256(TOOLS.read_bytes()).hexdigest()[:16]}"
    if not stamp.is_file():
        print("conformance: installing the test tools", flush=True)
        _pip(python, "install", "--no-deps", "--upgrade", "--target", str(site), "-r", str(TOOLS), what="install them")
        stamp.touch()
    return site


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotation.server.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL database to run on (default: a throwaway SQLite file)")
    args, pytest_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    database = checked_database_url(args.database_url)
    sqlite = database in (None, SQLITE)
    python = ensure_server_venv()
    sdist = sdist_tests(python)
    site = test_tools(python)
    with tempfile.TemporaryDirectory(prefix="argilla-conformance-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
        env.update(
            ARGILLA_HOME_PATH=home,
            ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{home}/conformance.db"
            if sqlite
            else async_database_url(database),
            ARGILLA_SEARCH_ENGINE=ENGINE,
            ARGILLA_ENABLE_TELEMETRY="false",
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(site)]),
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        )
        command = [
            str(python), "-m", "pytest", "tests/unit/search_engine", "--noconftest",
            "-p", "pytest_asyncio.plugin", "-p", "annotation.server.conformance.plugin", "-p", "no:cacheprovider",
            "-o", "log_cli=false", "-q", *pytest_args,
        ]  # fmt: skip
        return subprocess.run(command, cwd=sdist, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
