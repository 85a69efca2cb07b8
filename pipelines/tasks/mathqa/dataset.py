"""The data folder as a whole: write it (questions, pairs, data card) and check it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipelines.cli import UserError
from pipelines.tasks.mathqa.answers import extract_answer
from pipelines.tasks.mathqa.pairs import CHANCE_ACCURACY, Pair, check_pairs, pair_splits
from pipelines.tasks.mathqa.problems import KINDS, TEMPLATES, Problem, verify_answer
from pipelines.tasks.mathqa.questions import Row, generate_rows, load_split, rebuild
from pipelines.tasks.samples import (
    SPLITS,
    TIERS,
    CheckReport,
    update_readme,
    write_jsonl,
    write_pairs,
)
from pipelines.tasks.samples import pairs_section as samples_pairs_section

KIND_RULES = {
    "off_by_one": "one too many or too few: the fence-post error in counting templates, else a slip of +1 "
    "in the last step",
    "wrong_operation": "one step adds instead of multiplying, subtracts instead of dividing, multiplies "
    "instead of dividing, or adds a percentage back",
    "sign_error": "a term moved across `=` without changing sign, brackets after a minus removed without "
    "flipping the signs, a decrease added or an increase subtracted",
    "forgotten_step": "a step left out: the change instead of the new price, minutes not turned into hours, "
    "no division at the end",
    "order_of_operations": "worked left to right instead of multiplying first",
    "wrong_factor": "a wrong power of ten or conversion factor: ÷ 10 for a percentage, 100 metres in a "
    "kilometre, 100 minutes in an hour, ÷ 60 for ÷ 3600",
}


def tier_counts(rows: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(row["difficulty"] for row in rows)


def write_dataset(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 200,
    per_question: int = 1,
    per_question_test: int = 1,
) -> dict[str, Counter[str]]:
    """Write train.jsonl, test.jsonl, pairs_train.jsonl, pairs_test.jsonl and README.md into `out_dir`.

    Nothing is written until every question and pair exists, so a failed request leaves the folder
    as it was. Returns the tier counts per split.
    """
    out_dir = Path(out_dir)
    splits = generate_rows(seed=seed, n_train=n_train, n_test=n_test)
    pairs = pair_splits(splits, seed, per_question, per_question_test)
    for split in SPLITS:
        write_jsonl(out_dir / f"{split}.jsonl", splits[split])
    write_pairs(out_dir, pairs)
    readme = _readme(splits, seed) + "\n\n" + "\n".join(pairs_section(pairs, seed, per_question, per_question_test))
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return {split: tier_counts(rows) for split, rows in splits.items()}


def rewrite_pairs(data_dir: str | Path, seed: int = 0, per_question: int = 1, per_question_test: int = 1) -> dict:
    """The `pairs` command: new pair files from the folder's own questions and their README section."""
    data_dir = Path(data_dir)
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    pairs = pair_splits(splits, seed, per_question, per_question_test)
    write_pairs(data_dir, pairs)
    update_readme(data_dir / "README.md", pairs_section(pairs, seed, per_question, per_question_test))
    return pairs


def _example_rows(rows: Sequence[Row]) -> dict[str, Row]:
    examples: dict[str, Row] = {}
    for row in rows:
        examples.setdefault(row["template"], row)
    return examples


def _readme(splits: Mapping[str, Sequence[Row]], seed: int) -> str:
    """The data card up to the pairs section: commands, files, counts, rules, templates, use."""
    n_train, n_test = len(splits["train"]), len(splits["test"])
    table = ["| split | easy | medium | hard | total |", "|---|---|---|---|---|"]
    for split in SPLITS:
        counts = tier_counts(splits[split])
        table.append(f"| {split} | " + " | ".join(str(counts[t]) for t in TIERS) + f" | {len(splits[split])} |")
    examples = _example_rows(splits["train"])
    templates = []
    for tier in TIERS:
        templates += [f"### {tier}", ""]
        for t in (t for t in TEMPLATES if t.tier == tier):
            kinds = ", ".join(t.mistake_kinds)
            if t.name in examples:
                row = examples[t.name]
                templates.append(f"- `{t.name}` ({t.topic}; mistakes: {kinds}): {row['question']} → {row['answer']}")
            else:
                templates.append(f"- `{t.name}` ({t.topic}; mistakes: {kinds})")
        templates.append("")
    example = next(iter(examples.values()))
    solution = "\n".join(f"    {line}" for line in example["solution"].splitlines())
    return "\n".join([
        "# mathqa: verifiable math demo data",
        "",
        "School-level math questions (arithmetic, percentages, linear equations, unit conversions, word",
        "problems) from templates, each with an exact answer that has been checked, a worked solution, and",
        "worked wrong solutions from named student mistakes for preference pairs. Generated by this",
        "project (`pipelines/tasks/mathqa/`), no outside data; licence Apache-2.0.",
        "",
        "```bash",
        f".venv/bin/python -m pipelines.tasks.mathqa generate --out data/mathqa --seed {seed} "
        f"--n-train {n_train} --n-test {n_test}",
        ".venv/bin/python -m pipelines.tasks.mathqa check --data data/mathqa   # rebuilds, re-checks each row and pair",
        "```",
        "",
        "The same command gives byte-identical files.",
        "",
        "## Files",
        "",
        "- `train.jsonl`, `test.jsonl`: one row per question:",
        '  `{"id": "math-train-00042", "question": ..., "answer": "14", "solution": <worked solution>,',
        '  "difficulty": "easy"|"medium"|"hard", "topic": ..., "template": ..., "params": <slot values, JSON>}`.',
        "  `params` is a JSON string (every row has the same column types), from which the template",
        "  rebuilds the row exactly.",
        "- `pairs_train.jsonl`, `pairs_test.jsonl`: preference pairs (below).",
        "",
        "A worked solution, e.g. for " + f"“{example['question']}”:",
        "",
        solution,
        "",
        "## Counts",
        "",
        *table,
        "",
        "## How questions are made",
        "",
        "- Each template draws its numbers with Python's `random` from the seed, computes the answer step by",
        "  step in exact fractions, and checks it against a separate equation for the answer (for equation",
        "  templates the equation itself, by substitution), evaluated by a small arithmetic interpreter; a",
        "  disagreement is a bug and stops the generator.",
        "- Answers are exact decimals with at most 2 places (`14`, `-2.5`, `391.25`); numbers are drawn so",
        "  they are, and other draws are skipped. Question texts are unique.",
        "- Tiers get equal shares of each split; inside a tier the templates take turns.",
        "- Split by question, never by pair: the test questions are drawn first, the train questions after",
        "  them skip every question already drawn, so no question text is in both splits.",
        "",
        "## Reading an answer (reward and evaluation)",
        "",
        "The final number of a response is the one after its last `answer is` / `Answer:` / `####` /",
        "`\\boxed{}` marker, else its last number; signs, decimals, `1,200`, `$` and `%` are read, fractions",
        "are not (`pipelines/tasks/mathqa/answers.py`). It is compared with the gold answer exactly (`14.0` = `14`).",
        "",
        "- PPO: `--reward_function pipelines.tasks.mathqa.reward:answer_reward` scores 1.0 for the gold answer,",
        "  0.0 for another number, -0.5 for no number (set `MATHQA_DATA` to use another folder).",
        "- Evaluation: `pipelines.tasks.mathqa.evaluate.evaluate_predictions(rows, predictions)` gives answer",
        "  accuracy by tier and sorts failures into no number, runaway generation and the mistake kinds",
        "  below (a wrong answer that equals what a mistake gives for that question).",
        "",
        "## Mistakes",
        "",
        *[f"- `{kind}`: {KIND_RULES[kind]}." for kind in KINDS],
        "",
        "Every wrong solution is the template's own working with the mistake in it, so its answer is what",
        "a student making that mistake writes. A mistake is kept for a question only if its answer, as",
        "written, differs from the gold one (and is not a tiny value rounded to 0).",
        "",
        "## Templates (with a train example each)",
        "",
        *templates,
        "## Using it",
        "",
        "```bash",
        "# SFT on worked solutions (or on the bare answer: completion=answer)",
        ".venv/bin/python -m pipelines.sft --config configs/sft/tiny.yaml --dataset data/mathqa/train.jsonl \\",
        "    --eval_dataset data/mathqa/test.jsonl --columns prompt=question,completion=solution --output_dir runs/m",
        "# a reward model on the pairs",
        ".venv/bin/python -m pipelines.reward --config configs/reward/tiny.yaml \\",
        "    --dataset data/mathqa/pairs_train.jsonl --eval_dataset data/mathqa/pairs_test.jsonl --output_dir runs/rm",
        "# PPO against the answer checker",
        ".venv/bin/python -m pipelines.ppo --config configs/ppo/tiny.yaml --dataset data/mathqa/train.jsonl \\",
        "    --eval_dataset data/mathqa/test.jsonl --reward_function pipelines.tasks.mathqa.reward:answer_reward",
        "```",
        "",
        "## Why not the `mathematics-dataset` package",
        "",
        "DeepMind's `mathematics-dataset` (PyPI 1.0.1, Apache-2.0, needs sympy and absl-py) generates",
        "question/answer pairs, but no worked solutions and no wrong answers with a known cause, which the",
        "pairs and the error categories here need; templates written for this project give both and need",
        "no extra package.",
    ])  # fmt: skip


def pairs_section(
    pairs: Mapping[str, Sequence[Pair]], seed: int = 0, per_question: int = 1, per_question_test: int = 1
) -> list[str]:
    """The data card's "Preference pairs" section, with the command and the counts per kind."""
    intro = ["Written from `train.jsonl` and `test.jsonl` (by `generate` with one pair per question, or by):"]
    notes = [
        '- One row per pair: `{"id": "math-train-00042-p0", "prompt": <question>, "chosen": <worked solution>,',
        '  "rejected": <worked solution with one mistake>, "kind": ..., "difficulty": ...}`.',
        "- rejected's final answer differs from the gold one; the answer reward scores chosen 1, rejected 0.",
        "- Held out by question, never by pair: `pairs_train` uses only train questions, `pairs_test` only",
        "  test questions.",
        "- A question's kind is drawn uniformly among the mistakes its template can make with its numbers",
        "  (off_by_one exists for every question, so it is the most frequent). Both sides share the words of",
        "  one solver; a forgotten step makes rejected one line shorter, the one length cue. Chance level is",
        f"  {CHANCE_ACCURACY} pairwise accuracy.",
    ]
    return samples_pairs_section("mathqa", intro, notes, pairs, KINDS, seed, per_question, per_question_test)


def row_failure(row: Row) -> str | None:
    """Why a question row fails the check, or None: it must be exactly what its template writes for its
    slot values, its answer must satisfy the template's equation, its solution must read as its answer,
    and every wrong solution must read as another answer."""
    try:
        problem: Problem = rebuild(row)
    except UserError as err:
        return str(err)
    for key, value in problem.row().items():
        if row.get(key) != value:
            return f"{key} differs from what template {problem.template.name} writes"
    answer = Fraction(row["answer"])
    if not verify_answer(problem.template, problem.params, answer):
        return f"answer {row['answer']} fails `{problem.template.check(problem.params)}`"
    if extract_answer(row["solution"]) != answer:
        return "the answer read from the solution differs from the answer"
    for kind, wrong in problem.mistakes.items():
        if extract_answer(wrong.text) in (None, answer):
            return f"the {kind} solution does not read as a different answer"
    return None


def check_dataset(data_dir: str | Path) -> CheckReport:
    """Re-check every question row and pair of a data folder (see `row_failure`, `check_pairs`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir} is not a folder; create it with `python -m pipelines.tasks.mathqa generate --out {data_dir}`"
        )
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    failures = [(row["id"], why) for rows in splits.values() for row in rows if (why := row_failure(row)) is not None]
    pair_counts, pair_failures = check_pairs(data_dir, splits)
    questions = [{row["question"] for row in rows} for rows in splits.values()]
    return CheckReport(
        counts={split: len(rows) for split, rows in splits.items()} | pair_counts,
        tiers=tier_counts(row for rows in splits.values() for row in rows),
        failures=failures + pair_failures,
        shared_questions=len(set.intersection(*questions)),
        checked="rows and pairs check out",
    )
