"""Verifiable preference pairs: a question's worked solution (chosen) against the same working with
one named student mistake (rejected).

Rules, so a pair is right by arithmetic, not by opinion:

- chosen is the gold solution; rejected is the solver's solution with one mistake of `KINDS`, whose
  final answer differs from the gold one. Both are read by `extract_answer`, so the PPO reward
  scores chosen 1 and rejected 0.
- Both sides come from the same solver in the same words; they differ where the mistake is (a
  forgotten step makes rejected one line shorter, the one length cue in the data).
- Held out by question, never by pair: pairs_train comes from train.jsonl questions, pairs_test from
  test.jsonl questions; splits that share a question are refused.
- A question's kind is drawn uniformly among the mistakes its template can make with its numbers;
  with `per_question` k > 1, k different kinds (fewer if it has fewer). off_by_one exists for every
  question, so it is the most frequent kind.
- Deterministic: each question's draw is seeded by (seed, question id).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

from pipelines.cli import UserError
from pipelines.tasks.mathqa.answers import extract_answer
from pipelines.tasks.mathqa.problems import KINDS
from pipelines.tasks.mathqa.questions import Row, rebuild
from pipelines.tasks.samples import PAIR_FILES, SPLITS, read_jsonl

PAIR_KEYS = ("id", "prompt", "chosen", "rejected", "kind", "difficulty")
CHANCE_ACCURACY = 0.5

Pair = dict[str, str]


def question_pairs(row: Row, seed: int = 0, per_question: int = 1) -> list[Pair]:
    """Up to `per_question` pairs for one question row, each with a different mistake kind."""
    problem = rebuild(row)
    kinds = list(problem.mistakes)
    random.Random(f"{seed}/{row['id']}").shuffle(kinds)
    return [
        {
            "id": f"{row['id']}-p{i}",
            "prompt": row["question"],
            "chosen": problem.solution.text,
            "rejected": problem.mistakes[kind].text,
            "kind": kind,
            "difficulty": row["difficulty"],
        }
        for i, kind in enumerate(kinds[:per_question])
    ]


def pair_splits(
    splits: Mapping[str, Sequence[Row]], seed: int = 0, per_question: int = 1, per_question_test: int = 1
) -> dict[str, list[Pair]]:
    """{"train": pairs of train questions, "test": pairs of test questions}; shared questions are refused."""
    shared = {r["question"] for r in splits["train"]} & {r["question"] for r in splits["test"]}
    if shared:
        raise UserError(
            f"train and test share {len(shared)} questions (e.g. {sorted(shared)[0]!r}); pairs are held out "
            "by question, so regenerate the data with `python -m pipelines.tasks.mathqa generate`"
        )
    counts = {"train": per_question, "test": per_question_test}
    return {split: [p for row in splits[split] for p in question_pairs(row, seed, counts[split])] for split in SPLITS}


def check_pairs(data_dir: Path, splits: Mapping[str, Sequence[Row]]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Pair counts per file and failures: a prompt not among its own split's questions, a chosen that
    does not read as the gold answer, a rejected that does, an unknown kind."""
    counts, failures = {}, []
    for split, name in PAIR_FILES.items():
        remedy = f"write it with `python -m pipelines.tasks.mathqa pairs --data {data_dir}`"
        pairs = read_jsonl(data_dir / name, PAIR_KEYS, remedy)
        counts[name.removesuffix(".jsonl")] = len(pairs)
        gold = {row["question"]: Fraction(row["answer"]) for row in splits[split]}
        for pair in pairs:
            answer = gold.get(pair["prompt"])
            if answer is None:
                failures.append((pair["id"], f"prompt is not a {split} question"))
            elif extract_answer(pair["chosen"]) != answer:
                failures.append((pair["id"], "chosen does not give the gold answer"))
            elif extract_answer(pair["rejected"]) in (None, answer):
                failures.append((pair["id"], "rejected does not give a different answer"))
            elif pair["kind"] not in KINDS:
                failures.append((pair["id"], f"unknown kind {pair['kind']!r}"))
    return counts, failures
