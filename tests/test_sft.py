"""The SFT stage end to end on the tiny model: configs/sft/tiny.yaml as shipped, what a run writes,
that training really lowers the loss, and that `pipelines.generate` answers with the result."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG_DATA = [REPO_ROOT / "data" / "textsql" / "train.jsonl", REPO_ROOT / "data" / "textsql" / "test.jsonl"]
SECRET = "hf_secret_value_for_tests"
GENERATE_PROMPTS = ["How many customers live in Lyon?", "List every product.", "What is 2 plus 3?"]
OVERFIT_ROWS = [
    {"question": f"Which colour is item {i}?", "answer": f"Item {i} is {colour}."}
    for i, colour in enumerate(["red", "blue", "green", "black", "white", "pink", "grey", "brown"])
]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_logs(output_dir: Path) -> list[dict[str, Any]]:
    """The per-step training lines of metrics.jsonl (not the final train/eval summaries)."""
    return [row for row in read_jsonl(output_dir / "metrics.jsonl") if "loss" in row]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, run_cli) -> dict[str, Any]:
    """`python -m pipelines.sft --config configs/sft/tiny.yaml` exactly as shipped, into a temporary dir."""
    missing = [str(p.relative_to(REPO_ROOT)) for p in TINY_CONFIG_DATA if not p.is_file()]
    if missing:
        pytest.fail(
            f"configs/sft/tiny.yaml trains on {', '.join(missing)}, which does not exist: generate the text-to-SQL "
            "sample data (pipelines/tasks/textsql) first",
            pytrace=False,
        )
    output_dir = tmp_path_factory.mktemp("tiny-sft") / "run"
    start = time.perf_counter()
    result = run_cli("pipelines.sft", "--config", "configs/sft/tiny.yaml", "--output_dir", output_dir, timeout=300)
    return {"result": result, "seconds": time.perf_counter() - start, "dir": output_dir}


@pytest.fixture(scope="module")
def tiny_dir(tiny_run: dict[str, Any]) -> Path:
    result = tiny_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    return tiny_run["dir"]


def test_tiny_config_runs_as_shipped_in_under_a_minute(tiny_run: dict[str, Any]) -> None:
    result = tiny_run["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert tiny_run["seconds"] < 60, f"took {tiny_run['seconds']:.1f} s"


def test_run_saves_a_reloadable_model_with_its_tokenizer(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (tiny_dir / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert AutoModelForCausalLM.from_pretrained(tiny_dir).config.num_hidden_layers == 2


def test_metrics_jsonl_has_step_loss_and_learning_rate_on_every_logged_step(tiny_dir: Path) -> None:
    rows = read_jsonl(tiny_dir / "metrics.jsonl")
    assert all("step" in row for row in rows)
    logged = train_logs(tiny_dir)
    for row in logged:
        assert {"step", "loss", "learning_rate"} <= row.keys(), row
    steps = [row["step"] for row in logged]
    assert steps == list(range(2, 21, 2))  # tiny.yaml: max_steps 20, logging_steps 2, each step once
    assert any("eval_loss" in row for row in rows)


def test_summary_json_has_train_eval_speed_memory_and_generation_figures(tiny_dir: Path) -> None:
    summary = json.loads((tiny_dir / "summary.json").read_text())
    assert summary["world_size"] == 1
    assert summary["train"]["train_loss"] > 0
    assert summary["train"]["train_tokens_per_second"] > 0
    assert summary["eval"]["eval_loss"] > 0
    assert summary["eval"]["eval_perplexity"] > 1
    assert summary["peak_rss_mib"] > 0
    assert summary["data"]["train_examples"] == 64  # max_train_samples
    for model in ("base", "tuned"):
        figures = summary["generation"][model]
        assert {"exact_match", "bleu", "eos_rate", "mean_new_tokens"} <= figures.keys()
        assert 0 <= figures["exact_match"] <= 1
        assert figures["mean_new_tokens"] <= 16  # max_new_tokens


def test_generations_md_compares_base_and_tuned_side_by_side(tiny_dir: Path) -> None:
    text = (tiny_dir / "generations.md").read_text(encoding="utf-8")
    assert "| prompt | reference | base | tuned |" in text
    rows = read_jsonl(tiny_dir / "generations.jsonl")
    assert len(rows) == 8  # eval_generation_samples
    assert {"prompt", "reference", "base", "tuned"} <= rows[0].keys()
    for row in rows:
        assert f"| {row['prompt'].replace('|', chr(92) + '|')} |" in text


def test_run_config_yaml_records_the_resolved_config(tiny_dir: Path) -> None:
    saved = yaml.safe_load((tiny_dir / "run_config.yaml").read_text(encoding="utf-8"))
    assert saved["model_name_or_path"] == "tiny-llama"
    assert saved["output_dir"] == str(tiny_dir)
    assert saved["max_steps"] == 20
    assert saved["columns"] == {"prompt": "question", "completion": "answer"}


def test_tensorboard_events_are_written(tiny_dir: Path) -> None:
    events = list(tiny_dir.rglob("events.out.tfevents.*"))
    assert events, sorted(str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*"))
    assert any(path.stat().st_size > 0 for path in events)


# --- training lowers the loss; generate answers with a trained model -----------------------------------


@pytest.fixture(scope="module")
def later_runs(
    tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory, tiny_sft_args, write_qa_jsonl, run_cli_many
) -> dict[str, Any]:
    """Run concurrently once the timed tiny.yaml run is done:

    - 20 steps on 8 same-shape examples (every batch is the whole set), logged at every step, with a hub token;
    - `pipelines.generate` on the tiny.yaml model: one prompt, and a JSONL file of prompts.
    """
    root = tmp_path_factory.mktemp("later")
    data = write_qa_jsonl(root / "eight.jsonl", rows=OVERFIT_ROWS)
    overfit_dir = root / "overfit"
    overfit = tiny_sft_args(overfit_dir, "--dataset", data, "--eval_dataset", data, "--max_steps", "20")
    overfit += ["--logging_steps", "1", "--save_strategy", "no", "--hub_token", SECRET]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in GENERATE_PROMPTS), encoding="utf-8")
    answers = root / "answers.jsonl"
    overfit_result, single, batch = run_cli_many(
        ("pipelines.sft", *overfit),
        ("pipelines.generate", "--model", tiny_dir, "--prompt", GENERATE_PROMPTS[0], "--max_new_tokens", 8),
        ("pipelines.generate", "--model", tiny_dir, "--input", prompts, "--output", answers, "--max_new_tokens", 8),
    )
    return {"overfit": overfit_result, "overfit_dir": overfit_dir, "single": single, "batch": batch, "answers": answers}


@pytest.fixture(scope="module")
def overfit_dir(later_runs: dict[str, Any]) -> Path:
    result = later_runs["overfit"]
    assert result.returncode == 0, result.stderr[-4000:]
    return later_runs["overfit_dir"]


def test_loss_goes_down_on_a_tiny_overfit_set(overfit_dir: Path) -> None:
    losses = [row["loss"] for row in train_logs(overfit_dir)]
    assert len(losses) == 20
    assert losses[-1] < 0.5 * losses[0], losses
    assert sum(losses[-3:]) < sum(losses[:3])


def test_hub_token_passed_as_a_flag_is_not_written_anywhere(overfit_dir: Path) -> None:
    for path in overfit_dir.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".json", ".jsonl", ".md"}:
            assert SECRET not in path.read_text(encoding="utf-8", errors="replace"), path
    assert yaml.safe_load((overfit_dir / "run_config.yaml").read_text())["hub_token"] == "<redacted>"


def test_generate_answers_a_single_prompt(later_runs: dict[str, Any]) -> None:
    result = later_runs["single"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr


def test_generate_answers_every_prompt_of_a_jsonl_file(later_runs: dict[str, Any]) -> None:
    result = later_runs["batch"]
    assert result.returncode == 0, result.stderr[-4000:]
    rows = read_jsonl(later_runs["answers"])
    assert [row["prompt"] for row in rows] == GENERATE_PROMPTS
    for row in rows:
        assert isinstance(row["response"], str)
        assert isinstance(row["hit_eos"], bool)
    assert f"{len(GENERATE_PROMPTS)} prompts" in result.stderr
