"""Two processes on a CPU machine: `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml`
must run ONE data-parallel training over 2 ranks (not two independent runs) and save one model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_2PROC = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
STEPS = 4


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, tiny_sft_args, run_cli) -> dict[str, Any]:
    output_dir = tmp_path_factory.mktemp("ddp") / "run"
    sft_args = tiny_sft_args(output_dir, "--max_steps", STEPS, "--logging_steps", 1, "--save_strategy", "no")
    sft_args += ["--eval_generation_samples", "2", "--compare_base", "false"]
    result = run_cli(
        "accelerate.commands.launch", "--config_file", CPU_2PROC, "-m", "pipelines.sft", *sft_args, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {"dir": output_dir, "result": result}


def test_two_ranks_train_as_one_run(ddp_run: dict[str, Any]) -> None:
    summary = json.loads((ddp_run["dir"] / "summary.json").read_text())
    assert "world_size" in summary, "summary.json does not report the world size"
    assert summary["world_size"] == 2
    # Global batch 2 ranks x 8 rows: 4 steps cover all 64 training rows once.
    assert summary["train"]["epoch"] == pytest.approx(STEPS * 2 * 8 / 64)


def test_metrics_are_logged_once_per_step(ddp_run: dict[str, Any]) -> None:
    rows = [json.loads(line) for line in (ddp_run["dir"] / "metrics.jsonl").read_text().splitlines() if line]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == list(range(1, STEPS + 1))


def test_exactly_one_model_and_one_summary_are_saved(ddp_run: dict[str, Any]) -> None:
    output_dir: Path = ddp_run["dir"]
    assert sorted(output_dir.rglob("*.safetensors")) == [output_dir / "model.safetensors"]
    assert sorted(output_dir.rglob("summary.json")) == [output_dir / "summary.json"]
    json.loads((output_dir / "summary.json").read_text())  # complete, not two interleaved writes
    assert (output_dir / "generations.md").is_file()
    assert ddp_run["result"].stdout.count("done: model") == 1  # only the main process reports
