"""The verifiable math demo data: deterministic, checked answers, clean splits, a reward and an evaluation
that read answers the same way."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from pipelines.tasks.mathqa.__main__ import main
from pipelines.tasks.mathqa.answers import extract_answer
from pipelines.tasks.mathqa.dataset import check_dataset, write_dataset
from pipelines.tasks.mathqa.evaluate import evaluate_predictions
from pipelines.tasks.mathqa.problems import KINDS
from pipelines.tasks.mathqa.questions import load_split, rebuild
from pipelines.tasks.mathqa.reward import CORRECT_REWARD, DATA_ENV, NO_ANSWER_REWARD, WRONG_ANSWER_REWARD, answer_reward
from pipelines.tasks.samples import TIERS

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "mathqa"
FILES = ("train.jsonl", "test.jsonl", "pairs_train.jsonl", "pairs_test.jsonl", "README.md")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mathqa")
    write_dataset(out, seed=0, n_train=120, n_test=30)
    return out


def test_same_seed_gives_identical_files_and_shipped_data_is_the_default(tmp_path: Path) -> None:
    write_dataset(tmp_path)  # the defaults of `python -m pipelines.tasks.mathqa generate`
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), f"regenerate data/mathqa ({name})"


def test_every_row_and_pair_checks_out_and_splits_share_no_question(small: Path) -> None:
    report = check_dataset(small)
    assert report.ok, report.summary()
    train, test = load_split(small, "train"), load_split(small, "test")
    assert {r["question"] for r in train}.isdisjoint({r["question"] for r in test})
    assert sorted({r["difficulty"] for r in train}) == sorted(TIERS)
    tiers = [sum(r["difficulty"] == t for r in test) for t in TIERS]
    assert max(tiers) - min(tiers) <= 1  # equal shares per tier


def test_check_finds_a_tampered_answer(small: Path, tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / name).write_bytes((small / name).read_bytes())
    rows = read_jsonl(tmp_path / "test.jsonl")
    rows[3]["answer"] = str(Fraction(rows[3]["answer"]) + 7)
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = check_dataset(tmp_path)
    assert not report.ok
    assert rows[3]["id"] in {row_id for row_id, _ in report.failures}


def test_rows_rebuild_from_their_params_with_the_gold_answer(small: Path) -> None:
    for row in load_split(small, "test"):
        problem = rebuild(row)
        assert extract_answer(problem.solution.text) == Fraction(row["answer"])
        for kind, wrong in problem.mistakes.items():
            assert kind in KINDS
            assert extract_answer(wrong.text) != Fraction(row["answer"])


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Multiply first: 14 × 4 = 56\nThen add: 34 + 56 = 90\nThe answer is 90.", "90"),
        ("19 - 7 = 12", "12"),  # a subtraction is not a negative number
        ("x = -6, so the answer is: x = -6", "-6"),
        ("Total: $1,200.50", "1200.5"),
        ("#### 14", "14"),
        ("\\boxed{27.5} km", "27.5"),
        ("the answer is −3", "-3"),  # a typographic minus sign
        ("I do not know.", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == (None if expected is None else Fraction(expected))


def test_reward_scores_the_shipped_pairs_chosen_right_rejected_wrong() -> None:
    pairs = read_jsonl(SHIPPED / "pairs_test.jsonl")[:50]
    prompts = [p["prompt"] for p in pairs]
    assert answer_reward(prompts, [p["chosen"] for p in pairs]) == [CORRECT_REWARD] * len(pairs)
    assert answer_reward(prompts, [p["rejected"] for p in pairs]) == [WRONG_ANSWER_REWARD] * len(pairs)
    assert answer_reward(prompts[:1], ["no idea"]) == [NO_ANSWER_REWARD]


def test_reward_names_the_folder_when_a_prompt_is_unknown(monkeypatch: pytest.MonkeyPatch, small: Path) -> None:
    from pipelines.cli import UserError

    monkeypatch.setenv(DATA_ENV, str(small))
    with pytest.raises(UserError, match=DATA_ENV):
        answer_reward(["What is the airspeed of a swallow?"], ["11"])


def test_evaluation_gives_accuracy_by_tier_and_names_each_mistake(small: Path) -> None:
    rows = load_split(small, "test")[:12]
    predictions, expected = [], []
    for i, row in enumerate(rows):
        mistakes = rebuild(row).mistakes
        if i % 4 == 0:
            predictions.append(f"The answer is {row['answer']}.")
            expected.append(None)
        elif i % 4 == 1:
            predictions.append("Let me think about it.")
            expected.append("no_number")
        elif i % 4 == 2:
            # a mistake whose answer no kind listed before it also gives (the documented tie order)
            gold, answers = Fraction(row["answer"]), {k: extract_answer(m.text) for k, m in mistakes.items()}
            kind = next(
                k
                for k in KINDS[1:]
                if k in answers
                and abs(answers[k] - gold) != 1
                and all(answers.get(earlier) != answers[k] for earlier in KINDS[: KINDS.index(k)])
            )
            predictions.append(mistakes[kind].text)
            expected.append(kind)
        else:
            predictions.append(f"The answer is {row['answer']}0000 and more")
            expected.append("runaway_generation")
    no_eos = [e == "runaway_generation" for e in expected]
    report = evaluate_predictions(rows, predictions, no_eos=no_eos)
    assert report["answer_accuracy"] == pytest.approx(3 / 12)
    assert [p["category"] for p in report["per_prediction"]] == expected
    assert sum(report["n_by_difficulty"].values()) == 12
    correct_by_tier = {
        t: sum(1 for r, e in zip(rows, expected, strict=True) if e is None and r["difficulty"] == t) for t in TIERS
    }
    for tier, accuracy in report["by_difficulty"].items():
        assert accuracy == pytest.approx(correct_by_tier[tier] / report["n_by_difficulty"][tier])


def test_cli_generate_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--out", str(tmp_path / "m"), "--n-train", "30", "--n-test", "9"]) == 0
    assert "train 30" in capsys.readouterr().out
    assert main(["check", "--data", str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "--data", "/nonexistent/mathqa"], "is not a folder"),
        (["generate", "--out", "OUT", "--n-train", "0"], "--n-train: must be at least 1"),
        (["generate", "--out", "OUT", "--n-test", "many"], "--n-test: must be a whole number"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written
