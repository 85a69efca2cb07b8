"""Verifiable preference pairs for the reward stage: gold SQL (chosen) against a wrong rewrite (rejected).

Rules, so a pair is right by execution, not by opinion:

- chosen is a question's gold SQL; rejected is a rewrite of it from `perturb.candidates` that runs
  and returns a different result than the gold (compared as `execution_match` compares), so the
  preference can be re-checked by anyone with the database.
- Both sides are in the canonical SQL style, so formatting never gives the answer away: a reward
  model that cannot read the SQL scores the chance level, 0.5 pairwise accuracy.
- Held out by question, never by pair: pairs_train comes from train.jsonl questions and pairs_test
  from test.jsonl questions; splits that share a question are refused.
- The kind of a question's pair is uniform among the kinds that have a verified rewrite for it:
  kinds are tried in a random order and the first that verifies wins (the first available kind of
  a random permutation is uniform over the available ones), so only a few queries run per question.
  With `per_question` k > 1 the first k available kinds are used, then further rewrites of the same
  kinds in the same order; a question never repeats a rejected query. A question with no verified
  rewrite gets no pair.
- Deterministic: each question's draw is seeded by (seed, question id), so it does not depend on
  the other rows or their order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.cli import UserError
from pipelines.tasks.samples import pairs_section
from pipelines.tasks.textsql.execute import execute, has_order_by, results_match
from pipelines.tasks.textsql.perturb import KINDS, candidates

CHANCE_ACCURACY = 0.5  # one chosen vs one rejected: guessing is right half of the time

Pair = dict[str, str]


def question_pairs(db_path: str | Path, row: Mapping[str, str], seed: int = 0, per_question: int = 1) -> list[Pair]:
    """Up to `per_question` verified pairs for one question row ({id, question, answer, difficulty})."""
    gold_sql = row["answer"]
    gold = execute(db_path, gold_sql)
    if gold.rows is None:
        raise ValueError(f"gold SQL of {row['id']} fails ({gold.error}): {gold_sql}")
    gold_rows = gold.rows
    ordered = has_order_by(gold_sql)
    rng = random.Random(f"{seed}/{row['id']}")
    kinds = list(KINDS)
    rng.shuffle(kinds)
    pools: dict[str, list[str]] = {}  # filled on first use: most questions need one or two kinds

    def next_verified(kind: str) -> str | None:
        """Pop rewrites of `kind` until one runs with a different result; None once the kind is used up."""
        if kind not in pools:
            pools[kind] = candidates(gold_sql, kind)
            rng.shuffle(pools[kind])
        pool = pools[kind]
        while pool:
            wrong = pool.pop()
            result = execute(db_path, wrong)
            if result.rows is not None and not results_match(gold_rows, result.rows, ordered):
                return wrong
        return None

    picked: list[tuple[str, str]] = []
    live = kinds
    while len(picked) < per_question and live:
        found = []
        for kind in live:  # one round: the next verified rewrite of every kind, in the drawn order
            if len(picked) == per_question:
                break
            wrong = next_verified(kind)
            if wrong is not None:
                picked.append((kind, wrong))
                found.append(kind)
        live = found
    return [
        {
            "id": f"{row['id']}-p{i}",
            "prompt": row["question"],
            "chosen": gold_sql,
            "rejected": wrong,
            "kind": kind,
            "difficulty": row["difficulty"],
        }
        for i, (kind, wrong) in enumerate(picked)
    ]


def make_pairs(
    db_path: str | Path, rows: Sequence[Mapping[str, str]], seed: int = 0, per_question: int = 1
) -> list[Pair]:
    """Pairs for every question of one split, in row order."""
    return [pair for row in rows for pair in question_pairs(db_path, row, seed, per_question)]


def pair_splits(
    db_path: str | Path,
    splits: Mapping[str, Sequence[Mapping[str, str]]],
    seed: int = 0,
    per_question: int = 1,
    per_question_test: int = 1,
) -> dict[str, list[Pair]]:
    """{"train": pairs of train questions, "test": pairs of test questions}; shared questions are refused."""
    shared = {r["question"] for r in splits["train"]} & {r["question"] for r in splits["test"]}
    if shared:
        raise UserError(
            f"train and test share {len(shared)} questions (e.g. {sorted(shared)[0]!r}); pairs are held out "
            "by question, so regenerate the data with `python -m pipelines.tasks.textsql generate`"
        )
    return {
        "train": make_pairs(db_path, splits["train"], seed, per_question),
        "test": make_pairs(db_path, splits["test"], seed, per_question_test),
    }


def readme_section(
    pairs: Mapping[str, Sequence[Pair]], seed: int = 0, per_question: int = 1, per_question_test: int = 1
) -> list[str]:
    """The data card's "Preference pairs" section (lines), with the command and the counts per kind."""
    intro = [
        "`pairs_train.jsonl` and `pairs_test.jsonl` are verifiable preference pairs for the reward stage,",
        "written from `train.jsonl` and `test.jsonl` by:",
    ]
    notes = [
        '- One row per pair: `{"id": "tsql-00042-p0", "prompt": <question>, "chosen": <gold SQL>,',
        '  "rejected": <wrong SQL>, "kind": ..., "difficulty": ...}`.',
        "- chosen is the gold SQL; rejected is a rewrite of it (`pipelines/tasks/textsql/perturb.py`) that runs",
        "  and returns a different result, so every preference is checked by execution.",
        "- Held out by question, never by pair: `pairs_train` uses only train questions, `pairs_test` only",
        "  test questions, and no question is in both.",
        "- A question's kind is drawn uniformly among the kinds that have a verified rewrite for it;",
        "  `wrong_order` exists only for questions whose gold SQL has ORDER BY, so it is rare.",
        f"- Both sides share the canonical style, so the chance level is {CHANCE_ACCURACY} pairwise accuracy.",
    ]
    return pairs_section("textsql", intro, notes, pairs, KINDS, seed, per_question, per_question_test)
