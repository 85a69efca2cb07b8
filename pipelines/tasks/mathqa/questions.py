"""Train and test question files drawn from the templates, seeded, and their re-verification.

Rules (the data card repeats them):

- Tiers get equal shares of each split; inside a tier the templates take turns, so every template
  is in both splits in the same proportion. A template that cannot produce a new question after
  `DRAWS` tries drops out and the others fill its turns.
- Split by question, never by pair: the test questions are drawn first, then the train questions,
  skipping every question text already drawn, so no question text is in both splits (and the test
  set does not change when only `n_train` does).
- Every row can be rebuilt from its template name and slot values (`rebuild`); `python -m
  pipelines.tasks.mathqa check` does that for every row (`dataset.check_dataset`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.cli import UserError
from pipelines.tasks.mathqa.problems import TEMPLATES, Problem, Template, make_problem
from pipelines.tasks.samples import TIERS, read_jsonl

DRAWS = 200  # tries for a new question before a template counts as used up
ROW_KEYS = ("id", "question", "answer", "solution", "difficulty", "template", "params")
TEMPLATES_BY_NAME = {template.name: template for template in TEMPLATES}

Row = dict[str, str]


def _new_problem(template: Template, rng: random.Random, seen: set[str]) -> Problem | None:
    for _ in range(DRAWS):
        problem = make_problem(template, template.sample(rng))
        if problem is not None and problem.question not in seen:
            return problem
    return None


def _draw_tier(templates: Sequence[Template], quota: int, rng: random.Random, seen: set[str]) -> list[Problem]:
    """`quota` new questions of one tier, the templates taking turns."""
    live = list(templates)
    problems: list[Problem] = []
    while len(problems) < quota and live:
        for template in list(live):
            if len(problems) == quota:
                break
            problem = _new_problem(template, rng, seen)
            if problem is None:
                live.remove(template)
                continue
            seen.add(problem.question)
            problems.append(problem)
    if len(problems) < quota:
        raise UserError(
            f"only {len(problems)} new {templates[0].tier} questions could be drawn; ask for fewer (--n-train/--n-test)"
        )
    return problems


def _draw_split(n: int, rng: random.Random, seen: set[str]) -> list[Problem]:
    problems = []
    for i, tier in enumerate(TIERS):
        quota = n // len(TIERS) + (1 if i < n % len(TIERS) else 0)
        problems += _draw_tier([t for t in TEMPLATES if t.tier == tier], quota, rng, seen)
    rng.shuffle(problems)
    return problems


def generate_rows(seed: int = 0, n_train: int = 2000, n_test: int = 200) -> dict[str, list[Row]]:
    """{"train": rows, "test": rows}; a row is `Problem.row()` plus an id (`math-<split>-00042`)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    test = _draw_split(n_test, rng, seen)  # first, so it does not depend on n_train
    train = _draw_split(n_train, rng, seen)
    return {
        split: [{"id": f"math-{split}-{i:05d}", **problem.row()} for i, problem in enumerate(problems)]
        for split, problems in (("train", train), ("test", test))
    }


def rebuild(row: Mapping[str, Any]) -> Problem:
    """The problem a row was made from (its template and slot values); a row that names no known
    template or whose slot values give no problem is a `UserError`."""
    template = TEMPLATES_BY_NAME.get(str(row.get("template")))
    if template is None:
        raise UserError(f"row {row.get('id')}: unknown template {row.get('template')!r}")
    try:
        params = json.loads(row["params"])
        problem = make_problem(template, params)
    except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as err:
        raise UserError(f"row {row.get('id')}: params {row.get('params')!r} do not fit {template.name}: {err}") from err
    if problem is None:
        raise UserError(f"row {row.get('id')}: params {row.get('params')!r} give no usable {template.name} question")
    return problem


def load_split(data_dir: str | Path, split: str) -> list[Row]:
    """Rows of train.jsonl or test.jsonl in `data_dir`."""
    remedy = f"create it with `python -m pipelines.tasks.mathqa generate --out {data_dir}`"
    return read_jsonl(Path(data_dir) / f"{split}.jsonl", ROW_KEYS, remedy)
