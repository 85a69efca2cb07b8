"""Answer accuracy of math predictions, by difficulty tier, with every failure given a cause.

Predictions are read the way the PPO reward reads them (`answers.extract_answer`), so evaluation
and reward agree on what the model answered. A failure gets the first category that applies, in
this order (`ERROR_CATEGORIES`):

- runaway_generation: the prediction hit the token limit (`no_eos`) and is wrong, whatever else.
- no_number: no number in the text.
- a mistake kind (`problems.KINDS`): the number is what that mistake gives for this question (the
  row's template rebuilds every mistake's answer); off_by_one also takes any answer one away.
- other_wrong_answer: none of the above.

A number that two mistakes both give is counted under the first kind in `KINDS` order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from pipelines.tasks.mathqa.answers import extract_answer
from pipelines.tasks.mathqa.problems import KINDS
from pipelines.tasks.mathqa.questions import rebuild
from pipelines.tasks.samples import TIERS

ERROR_CATEGORIES = ("runaway_generation", "no_number", *KINDS, "other_wrong_answer")
EXAMPLES_PER_CATEGORY = 3
_EXAMPLE_CHARS = 300  # runaway predictions can be long; an example only needs their start


def failure_category(row: Mapping[str, Any], predicted: Fraction) -> str:
    """The mistake kind that gives `predicted` for this row's question, or other_wrong_answer."""
    gold = Fraction(row["answer"])
    mistakes = rebuild(row).mistakes if "params" in row and "template" in row else {}
    for kind in KINDS:
        if kind in mistakes and extract_answer(mistakes[kind].text) == predicted:
            return kind
        if kind == "off_by_one" and abs(predicted - gold) == 1:
            return kind
    return "other_wrong_answer"


def evaluate_predictions(
    rows: Sequence[Mapping[str, Any]], predictions: Sequence[str], no_eos: Sequence[bool] | None = None
) -> dict[str, Any]:
    """Answer accuracy (overall and by tier), how often a number was given, and failure categories.

    `rows` carry question, answer and difficulty (and template/params for the mistake categories);
    `no_eos[i]` is True when prediction i stopped at the token limit. Returns {n, answer_accuracy,
    answered, by_difficulty, n_by_difficulty, errors: {category: {count, examples}}, per_prediction}.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(predictions)} predictions")
    if no_eos is not None and len(no_eos) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(no_eos)} no_eos flags")
    errors: dict[str, dict[str, Any]] = {category: {"count": 0, "examples": []} for category in ERROR_CATEGORIES}
    per_prediction = []
    for i, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        predicted = extract_answer(prediction)
        correct = predicted is not None and predicted == Fraction(row["answer"])
        category = None
        if not correct:
            if no_eos is not None and no_eos[i]:
                category = "runaway_generation"
            elif predicted is None:
                category = "no_number"
            else:
                category = failure_category(row, predicted)
            errors[category]["count"] += 1
            if len(errors[category]["examples"]) < EXAMPLES_PER_CATEGORY:
                errors[category]["examples"].append(
                    {
                        "id": row.get("id"),
                        "question": row["question"],
                        "gold": row["answer"],
                        "prediction": prediction[:_EXAMPLE_CHARS],
                    }
                )
        per_prediction.append(
            {
                "difficulty": row["difficulty"],
                "answered": predicted is not None,
                "correct": correct,
                "category": category,
            }
        )

    n = len(per_prediction)
    n_by_tier = Counter(p["difficulty"] for p in per_prediction)
    hits = Counter(p["difficulty"] for p in per_prediction if p["correct"])
    tiers = [t for t in TIERS if t in n_by_tier] + sorted(set(n_by_tier) - set(TIERS))
    return {
        "n": n,
        "answer_accuracy": sum(p["correct"] for p in per_prediction) / n if n else 0.0,
        "answered": sum(p["answered"] for p in per_prediction) / n if n else 0.0,
        "by_difficulty": {tier: hits[tier] / n_by_tier[tier] for tier in tiers},
        "n_by_difficulty": {tier: n_by_tier[tier] for tier in tiers},
        "errors": errors,
        "per_prediction": per_prediction,
    }
