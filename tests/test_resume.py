"""Checkpoints and `--resume`: a run killed after a checkpoint continues at the checkpoint's step, logs each
step once, and ends exactly where the uninterrupted run ends (same data order, optimizer, scheduler, RNG).

The runs (each ~10 s, mostly imports) go two at a time: the reference next to the run that gets killed,
then the two resumes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

MAX_STEPS = 10
SAVE_STEPS = 5
ROWS, BATCH = 64, 8


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def logged_steps(output_dir: Path) -> list[int]:
    return [row["step"] for row in read_jsonl(output_dir / "metrics.jsonl") if "loss" in row]


def losses_by_step(output_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(output_dir / "metrics.jsonl") if "loss" in row}


def global_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def wait_for_checkpoint(output_dir: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    """Until checkpoint-<step> is complete (its trainer_state.json is written last)."""
    checkpoint = output_dir / f"checkpoint-{step}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended (code {process.returncode}) before checkpoint-{step}"
        try:
            if global_step(checkpoint) == step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    pytest.fail(f"no complete checkpoint-{step} after {timeout} s")


def tear_last_checkpoint(source: Path, target: Path) -> None:
    """What a kill while checkpoint-10 was being written leaves: its model file, no trainer state."""
    shutil.copytree(source, target)
    for path in target.iterdir():
        if path.is_file() and path.name != "metrics.jsonl":
            path.unlink()
    for name in ("trainer_state.json", "rng_state.pth", "scheduler.pt"):
        (target / f"checkpoint-{MAX_STEPS}" / name).unlink()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_sft_args, run_cli, popen_cli) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("resume")
    paths = {name: root / name for name in ("reference", "killed", "torn")}

    def args(output_dir: Path, *flags: Any) -> list[str]:
        steps = ["--max_steps", MAX_STEPS, "--save_steps", SAVE_STEPS, "--logging_steps", 1]
        return tiny_sft_args(output_dir, *steps, *flags)

    with ThreadPoolExecutor(max_workers=2) as pool:
        # Phase 1: the uninterrupted reference run, and beside it a run SIGKILLed once checkpoint-5 is complete.
        reference = pool.submit(run_cli, "pipelines.sft", *args(paths["reference"]))
        process = popen_cli("pipelines.sft", *args(paths["killed"]), log=root / "killed.log")
        try:
            wait_for_checkpoint(paths["killed"], SAVE_STEPS, process)
        finally:
            process.kill()
            process.wait()
        first = reference.result()
        assert first.returncode == 0, first.stderr[-4000:]
        killed_at = {"steps": logged_steps(paths["killed"]), "summary": (paths["killed"] / "summary.json").exists()}

        # Phase 2: resume the killed run; resume a copy of the reference whose last checkpoint is torn.
        tear_last_checkpoint(paths["reference"], paths["torn"])
        resumed = pool.submit(run_cli, "pipelines.sft", *args(paths["killed"], "--resume", "true"))
        torn = pool.submit(run_cli, "pipelines.sft", *args(paths["torn"], "--resume", "true"))
        return {**paths, "killed_at": killed_at, "resumed": resumed.result(), "torn_result": torn.result()}


def test_checkpoints_are_written_every_save_steps(runs: dict[str, Any]) -> None:
    for step in (SAVE_STEPS, MAX_STEPS):
        checkpoint = runs["reference"] / f"checkpoint-{step}"
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            assert (checkpoint / name).is_file(), checkpoint / name
        assert global_step(checkpoint) == step
    assert logged_steps(runs["reference"]) == list(range(1, MAX_STEPS + 1))


def test_killed_run_resumes_from_its_checkpoint_to_max_steps(runs: dict[str, Any]) -> None:
    assert not runs["killed_at"]["summary"], "the run was not killed mid-way"
    assert max(runs["killed_at"]["steps"]) < MAX_STEPS
    result = runs["resumed"]
    assert result.returncode == 0, result.stderr[-4000:]
    killed = runs["killed"]
    assert global_step(killed / f"checkpoint-{MAX_STEPS}") == MAX_STEPS
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["train"]["epoch"] == pytest.approx(MAX_STEPS * BATCH / ROWS)


def test_resumed_run_logs_every_step_exactly_once(runs: dict[str, Any]) -> None:
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-4000:]
    # Steps logged after checkpoint-5 but before the kill ran again: their first lines must be gone.
    assert logged_steps(runs["killed"]) == list(range(1, MAX_STEPS + 1))


def test_resumed_run_ends_where_the_uninterrupted_run_ends(runs: dict[str, Any]) -> None:
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-4000:]
    expected, got = losses_by_step(runs["reference"]), losses_by_step(runs["killed"])
    for step in range(SAVE_STEPS + 1, MAX_STEPS + 1):
        assert got[step] == pytest.approx(expected[step], abs=1e-4), f"step {step}"
    reference_weights = load_file(runs["reference"] / "model.safetensors")
    resumed_weights = load_file(runs["killed"] / "model.safetensors")
    assert reference_weights.keys() == resumed_weights.keys()
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def test_resume_survives_a_checkpoint_torn_by_a_kill(runs: dict[str, Any]) -> None:
    """Killed while writing checkpoint-10: its model file is there, its trainer state is not.

    `--resume` must not crash on it: either continue from the last complete checkpoint (5) to the end, or
    stop with exit code 2 and one line naming the torn checkpoint.
    """
    result = runs["torn_result"]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if result.returncode == 0:
        assert logged_steps(runs["torn"]) == list(range(1, MAX_STEPS + 1))
    else:
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"checkpoint-{MAX_STEPS}" in result.stderr.strip().splitlines()[-1]
