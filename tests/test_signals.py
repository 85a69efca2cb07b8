"""Ctrl-C (SIGINT) and SIGTERM during a stage: one line saying what was kept, exit 130 / 143, the last complete
checkpoint kept and nothing else the run wrote after it, and a rerun with --resume that logs every step once, in
metrics.jsonl and in TensorBoard (one run, no step drawn twice)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PPO_TINY = REPO / "configs" / "ppo" / "tiny.yaml"


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def logged_steps(out: Path, key: str) -> list[int]:
    return [row["step"] for row in rows(out / "metrics.jsonl") if key in row]


def complete_checkpoints(out: Path) -> list[int]:
    found = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(found)


def stop_after_a_checkpoint(process: subprocess.Popen[bytes], out: Path, key: str, signum: int) -> None:
    """Send `signum` once a checkpoint is complete and a later step was logged (the work a stop must undo)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be stopped"
        saved, steps = complete_checkpoints(out), logged_steps(out, key)
        if saved and steps and max(steps) > saved[-1]:
            process.send_signal(signum)
            process.wait(timeout=300)
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail("no checkpoint and later step within 10 minutes")


def stop_line(log: Path) -> str:
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, text[-3000:]
    lines = [line for chunk in text.splitlines() for line in chunk.split("\r") if line.strip()]
    # one stop line, and the last: no progress bar redrawn after it
    stops = [line for line in lines if line.startswith("stopped by ")]
    assert len(stops) == 1 and lines[-1] == stops[0], text[-3000:]
    return stops[0]


def tensorboard_steps(folder: Path, tag: str) -> list[int]:
    """The steps TensorBoard draws for `tag` (it purges a stopped run's events a resumed run logs again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_sft_stopped_by_ctrl_c_keeps_its_checkpoint_and_resumes_without_repeats(
    popen_cli: Callable[..., subprocess.Popen[bytes]], run_cli, tiny_sft_args, tmp_path: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_sft_args(out, "--max_steps", 6, "--save_steps", 2, "--logging_steps", 1, "--report_to", "tensorboard")
    process = popen_cli("pipelines.sft", *args, log=log)
    stop_after_a_checkpoint(process, out, "loss", signal.SIGINT)

    assert process.returncode == 130
    kept = complete_checkpoints(out)[-1]
    assert stop_line(log) == f"stopped by SIGINT: kept checkpoint-{kept} in {out} (step {kept}); continue with --resume"
    entries = {p.name for p in out.iterdir()}
    assert entries == {f"checkpoint-{s}" for s in complete_checkpoints(out)} | {"metrics.jsonl", "runs"}, entries
    assert max(logged_steps(out, "loss")) == kept  # steps after the checkpoint run again: not kept twice

    resumed = run_cli("pipelines.sft", *args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(out, "loss") == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in (out / "runs").iterdir() if p.is_dir()] == []  # one TensorBoard run, not one per start
    assert tensorboard_steps(out / "runs", "train/loss") == [1, 2, 3, 4, 5, 6]


def test_sft_stopped_by_sigterm_before_any_checkpoint_leaves_nothing(
    popen_cli: Callable[..., subprocess.Popen[bytes]], tiny_sft_args, tmp_path: Path
) -> None:
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_sft_args(out, "--max_steps", 50, "--save_strategy", "no", "--logging_steps", 1)
    process = popen_cli("pipelines.sft", *args, log=log)
    deadline = time.monotonic() + 600
    while not logged_steps(out, "loss") and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)

    assert process.returncode == 143
    assert stop_line(log) == f"stopped by SIGTERM: no checkpoint was complete, removed {out}; run again to start over"
    assert not out.exists()


def test_ppo_stopped_by_sigterm_resumes_with_each_update_logged_once(
    popen_cli: Callable[..., subprocess.Popen[bytes]], run_cli, tiny_model: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "ppo", tmp_path / "ppo.log"
    args = [
        *("--config", PPO_TINY, "--model_name_or_path", tiny_model, "--output_dir", out),
        *("--max_steps", 4, "--save_steps", 1, "--logging_steps", 1, "--sample_every", 1, "--eval_prompts", 0),
        *("--rollout_batch_size", 8, "--per_device_train_batch_size", 8, "--ppo_epochs", 1, "--max_new_tokens", 8),
    ]
    process = popen_cli("pipelines.ppo", *args, log=log)
    stop_after_a_checkpoint(process, out, "objective/kl", signal.SIGTERM)

    assert process.returncode == 143
    kept = complete_checkpoints(out)[-1]
    assert stop_line(log).startswith(f"stopped by SIGTERM: kept checkpoint-{kept} in {out}")
    assert max(logged_steps(out, "objective/kl")) == kept
    assert max(row["step"] for row in rows(out / "samples.jsonl")) == kept

    resumed = run_cli("pipelines.ppo", *args, "--resume", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(out, "objective/kl") == [1, 2, 3, 4]
    assert sorted({row["step"] for row in rows(out / "samples.jsonl")}) == [1, 2, 3, 4]
    assert len(rows(out / "samples.jsonl")) == 4 * len([r for r in rows(out / "samples.jsonl") if r["step"] == 1])
    assert tensorboard_steps(out / "runs", "objective/kl") == [1, 2, 3, 4]
