"""The reward stage: rankings become pairs by one rule, training runs and reports, bad input is one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from datasets import Dataset

from pipelines.cli import UserError
from pipelines.data.preferences import ranking_to_pairs, to_preference_format

REPO = Path(__file__).resolve().parents[1]
REWARD_TINY = REPO / "configs" / "reward" / "tiny.yaml"


def test_all_pairs_of_a_ranking_and_ties_dropped():
    pairs = ranking_to_pairs(["a", "b", "c", "d"], [2, 1, 3, 2], "all_pairs")
    assert {(c, r) for c, r, _ in pairs} == {("b", "a"), ("b", "c"), ("b", "d"), ("a", "c"), ("d", "c")}
    assert dict(((c, r), gap) for c, r, gap in pairs)[("b", "c")] == 2.0


def test_best_vs_rest_pairs_the_top_candidate_with_each_other():
    pairs = ranking_to_pairs(["a", "b", "c"], [3, 1, 2], "best_vs_rest")
    assert [(c, r) for c, r, _ in pairs] == [("b", "c"), ("b", "a")]


def test_rankings_become_conversational_pairs_with_optional_rank_margin():
    rows = Dataset.from_list([{"prompt": "q", "responses": ["x", "y", "z"], "ranks": [1, 2, 3]}])
    pairs = to_preference_format(rows, "all_pairs", margin_column="ranks")
    assert len(pairs) == 3
    assert pairs[0]["prompt"] == [{"role": "user", "content": "q"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "x"}]
    assert sorted(pairs["margin"]) == [1.0, 1.0, 2.0]
    assert "margin" not in to_preference_format(rows, "all_pairs").column_names


def test_identical_chosen_and_rejected_everywhere_is_a_user_error():
    rows = Dataset.from_list([{"prompt": "q", "chosen": "same", "rejected": "same"}] * 3)
    with pytest.raises(UserError, match="chosen == rejected"):
        to_preference_format(rows)


def test_comparisons_missing_a_column_is_a_user_error():
    with pytest.raises(UserError, match="found prompt, chosen"):
        to_preference_format(Dataset.from_list([{"prompt": "q", "chosen": "a"}]))


def test_tiny_reward_config_trains_reports_and_scores(run_cli, tiny_model, tmp_path):
    out = tmp_path / "rm"
    result = run_cli("pipelines.reward", "--config", REWARD_TINY, "--output_dir", out, "--report_to", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train_pairs"] == 64
    assert summary["pairwise"]["pairs"] == summary["data"]["eval_pairs"]
    assert summary["precision"]["requested"] == "auto"
    assert (out / "reward_eval.png").stat().st_size > 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in line for line in lines) and any("loss" in line for line in lines)

    scored = tmp_path / "scored.jsonl"
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "How many orders?", "response": "SELECT COUNT(*) FROM orders;"}) + "\n")
    result = run_cli("pipelines.reward", "score", "--model", out, "--input", answers, "--output", scored)
    assert result.returncode == 0, result.stderr[-2000:]
    assert isinstance(json.loads(scored.read_text())["score"], float)


# A preference the random tiny model can learn in seconds from 64 pairs: the chosen answer names a word of
# GOOD, the rejected one a word of BAD. Held out: other prompts, other (good, bad) combinations.
GOOD = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "amber"]
BAD = ["fridge", "pencil", "carpet", "bottle", "ladder", "socket", "helmet", "magnet"]


def toy_preferences(count: int, first: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "prompt": f"Request {i}: name one thing.",
            "chosen": f"I name the {rng.choice(GOOD)}.",
            "rejected": f"I name the {rng.choice(BAD)}.",
        }
        for i in range(first, first + count)
    ]


def test_tiny_reward_model_learns_a_preference_it_can_learn(run_cli, tiny_model, tmp_path):
    """configs/reward/tiny.yaml (10 steps) on the toy preference: held-out pairwise accuracy far above chance.

    Measured on 64 held-out pairs, seeds 0-4: accuracy 1.00 for every seed in bf16 (precision auto on
    AVX512-BF16; mean margin 0.61 / 0.71 / 1.07 / 0.44 / 0.44) and in fp32 (0.59 / 0.70 / 1.09 / 0.50 / 0.64);
    the same runs at learning rate 0 (the fresh head): 0.27 / 0.48 / 0.30 (seeds 0-2). 0.85 leaves room.
    """
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in toy_preferences(64, 0, seed=1)))
    test.write_text("".join(json.dumps(r) + "\n" for r in toy_preferences(64, 1000, seed=2)))
    out = tmp_path / "rm"
    result = run_cli(
        "pipelines.reward",
        "--config",
        REWARD_TINY,
        "--dataset",
        train,
        "--eval_dataset",
        test,
        "--output_dir",
        out,
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pairwise = json.loads((out / "summary.json").read_text())["pairwise"]
    assert pairwise["pairs"] == 64
    assert pairwise["accuracy"] >= 0.85, pairwise


def test_pairs_over_max_length_are_dropped_and_counted(run_cli, tiny_model, tmp_path):
    rows = [{"prompt": "q" * (5 if i % 2 else 400), "chosen": "a", "rejected": "b"} for i in range(20)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    result = run_cli(
        "pipelines.reward",
        "--config",
        REWARD_TINY,
        "--dataset",
        data,
        "--eval_dataset",
        data,
        "--max_length",
        64,
        "--max_steps",
        2,
        "--output_dir",
        out,
        "--report_to",
        "none",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "summary.json").read_text())["data"]
    assert report["train_dropped_over_max_length"] == 10 and report["train_pairs"] == 10


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "q", "answer": "a"}], "comparisons need columns"),
        ([{"prompt": "q", "chosen": "a", "rejected": "a"}] * 4, "chosen == rejected"),
    ],
)
def test_reward_bad_data_is_one_line_exit_2(run_cli, tiny_model, tmp_path, rows, message):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm"
    result = run_cli(
        "pipelines.reward", "--config", REWARD_TINY, "--dataset", data, "--eval_dataset", data, "--output_dir", out
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr
    assert not out.exists()
