"""Shared set-up for the test suite: an offline Hugging Face environment, the tiny model, a CLI runner
and small fixture data sets written under pytest's tmp dirs (so no test depends on data/ contents)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
TINY_MODEL = REPO_ROOT / "models" / "tiny-llama"
TINY_CONFIG = REPO_ROOT / "configs" / "sft" / "tiny.yaml"

# Set before any test module imports transformers/datasets, which read these at import time.
TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HOME": str(REPO_ROOT / ".cache" / "huggingface"),
}
os.environ.update(TEST_ENV)


def cli_env() -> dict[str, str]:
    return {**os.environ, **TEST_ENV}


def in_server_venv(*args: str) -> str:
    """Run the embedded server venv's Python with `args` in the repository, without any ARGILLA_* setting (a
    test server's URL must not leak in); its standard output. Fails the test on a non-zero exit."""
    from annotation.server.launcher import REPO_ROOT, ensure_server_venv

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    done = subprocess.run(
        [str(ensure_server_venv()), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli_command(module: str, *args: Any) -> list[str]:
    """`.venv/bin/python -m <module> args...` (every argument turned into a string)."""
    return [PYTHON, "-m", module, *(str(a) for a in args)]


def _run_cli(module: str, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a project CLI from the repo root with the offline environment; never raises on a non-zero exit."""
    return subprocess.run(
        cli_command(module, *args),
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run_cli_many(*calls: Sequence[Any], timeout: float = 300) -> list[subprocess.CompletedProcess[str]]:
    """Run several `(module, *args)` commands at once (their start-up is mostly imports: they overlap well)."""
    with ThreadPoolExecutor(max_workers=len(calls) or 1) as pool:
        futures = [pool.submit(_run_cli, *call, timeout=timeout) for call in calls]
        return [future.result() for future in futures]


def _popen_cli(module: str, *args: Any, log: Path) -> subprocess.Popen[bytes]:
    """Start a project CLI in the background, stdout and stderr going to `log`, with SIGINT as a terminal gives
    it: under a non-interactive background shell (`nohup make test &`, some CI runners) children start with SIGINT
    ignored, and Python then never raises KeyboardInterrupt, so a Ctrl-C test would see the run finish."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            cli_command(module, *args),
            cwd=REPO_ROOT,
            env=cli_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def qa_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Question/answer rows with the sample data's extra columns (id, difficulty)."""
    return [
        {
            "question": f"What is {i} plus {i % 7}?",
            "answer": str(i + i % 7),
            "difficulty": "easy" if i % 2 else "medium",
            "id": f"q{i}",
        }
        for i in range(start, start + n)
    ]


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The 2-layer random Llama every training test uses."""
    if not (TINY_MODEL / "config.json").is_file():
        pytest.fail(
            f"{TINY_MODEL} is missing: build the offline models first with `python -m pipelines.models prepare`",
            pytrace=False,
        )
    return TINY_MODEL


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_cli(module, *args, timeout=300)`: run `.venv/bin/python -m module args` and return the result."""
    return _run_cli


@pytest.fixture(scope="session")
def run_cli_many() -> Callable[..., list[subprocess.CompletedProcess[str]]]:
    """`run_cli_many((module, *args), ..., timeout=300)`: several commands run concurrently, results in order."""
    return _run_cli_many


@pytest.fixture(scope="session")
def popen_cli() -> Callable[..., subprocess.Popen[bytes]]:
    """`popen_cli(module, *args, log=path)`: the same command started in the background."""
    return _popen_cli


@pytest.fixture(scope="session")
def write_qa_jsonl() -> Callable[..., Path]:
    """`write_qa_jsonl(path, n=16, rows=None)`: a question/answer JSONL file (the given rows, or n generated)."""

    def write(path: Path, n: int = 16, rows: Sequence[dict[str, Any]] | None = None) -> Path:
        return _write_jsonl(path, qa_rows(n) if rows is None else rows)

    return write


@pytest.fixture(scope="session")
def qa_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small train (64 rows) and test (16 rows) question/answer files, shaped like the text-to-SQL sample."""
    root = tmp_path_factory.mktemp("qa")
    return {
        "train": _write_jsonl(root / "train.jsonl", qa_rows(64)),
        "test": _write_jsonl(root / "test.jsonl", qa_rows(16, start=100)),
    }


@pytest.fixture(scope="session")
def tiny_sft_args(tiny_model: Path, qa_data: dict[str, Path]) -> Callable[..., list[str]]:
    """`tiny_sft_args(output_dir, *flags)`: configs/sft/tiny.yaml on the fixture data, no generation eval.

    Later flags override earlier ones, so `*flags` can change anything set here.
    """

    def args(output_dir: Path, *flags: Any) -> list[str]:
        return [
            "--config",
            str(TINY_CONFIG),
            "--model_name_or_path",
            str(tiny_model),
            "--dataset",
            str(qa_data["train"]),
            "--eval_dataset",
            str(qa_data["test"]),
            "--output_dir",
            str(output_dir),
            "--eval_generation_samples",
            "0",
            *(str(flag) for flag in flags),
        ]

    return args


# ---------------------------------------------------------------------------- the embedded Argilla server

import socket  # noqa: E402 - this section was appended to the file
from collections.abc import Iterator  # noqa: E402


class ArgillaServer:
    """The session's embedded Argilla server (see the `argilla_server` fixture)."""

    username = "argilla"

    def __init__(self, var_dir: Path, port: int) -> None:
        self.var_dir = var_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_key = ""
        self.password = ""

    def run_server(self, *args: Any, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`python -m annotation server <args>` for this var dir (never an ARGILLA_API_URL server)."""
        env = {k: v for k, v in cli_env().items() if k not in ("ARGILLA_API_URL", "ARGILLA_API_KEY")}
        env["ANNOTATION_HOME"] = str(self.var_dir)
        return subprocess.run(
            cli_command("annotation", "server", *args),
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """(Re)start on the same port, so `url` stays valid."""
        return self.run_server("start", "--port", self.port, "--timeout", 300)


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgillaServer]:
    """One embedded Argilla server for the whole session, in a temp var dir on free ports.

    Started with `python -m annotation server start` (the first use on a machine installs the
    server's venv, about a minute) and stopped at the end. Gives `.url`, the owner's `.api_key`,
    `.password` and `.username` ("argilla"), `.var_dir`, and `.run_server(*args)` to run
    `python -m annotation server ...` against it. A test that stops it must `.start()` it again
    (same URL and key). Use it through `.url`/`.api_key`; never through ARGILLA_API_URL defaults.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ArgillaServer(tmp_path_factory.mktemp("argilla") / "var", port)
    try:
        started = server.start()
    except subprocess.TimeoutExpired as err:
        started = subprocess.CompletedProcess(err.cmd, -1, str(err.stdout or ""), f"timed out after {err.timeout} s")
    if started.returncode != 0:
        server.run_server("stop")  # whatever it had started
        pytest.fail(f"the embedded Argilla server did not start:\n{started.stdout}{started.stderr}", pytrace=False)
    server.api_key = (server.var_dir / "owner-api-key").read_text().strip()
    server.password = (server.var_dir / "owner-password").read_text().strip()
    yield server
    server.run_server("stop")
