"""Preference data: rankings become chosen/rejected pairs, rows become TRL's preference format.

One implementation shared by the reward stage and the annotation export:
- `all_pairs`: every pair a ranking implies (N candidates, no ties -> N(N-1)/2 pairs);
- `best_vs_rest`: the top-ranked candidate against each other one (N-1 pairs).
Tied candidates (equal rank) never form a pair. Rank 1 is best.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from datasets import Dataset

from pipelines.cli import UserError
from pipelines.data.formats import bars_only_if_long

PairRule = Literal["all_pairs", "best_vs_rest"]
PAIR_RULES: tuple[str, ...] = ("all_pairs", "best_vs_rest")


def ranking_to_pairs(
    candidates: Sequence[str], ranks: Sequence[int | float], rule: PairRule = "all_pairs"
) -> list[tuple[str, str, float]]:
    """(chosen, rejected, rank gap) for the pairs a ranking implies under `rule`; ties are dropped."""
    if len(candidates) != len(ranks):
        raise UserError(f"a ranking has {len(candidates)} responses but {len(ranks)} ranks: give one rank per response")
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; use one of {', '.join(PAIR_RULES)}")
    order = sorted(range(len(candidates)), key=lambda i: ranks[i])
    if rule == "best_vs_rest":
        best = order[0]
        pairs = [(best, other) for other in order[1:]]
    else:
        pairs = list(itertools.combinations(order, 2))
    return [
        (candidates[a], candidates[b], float(ranks[b] - ranks[a]))
        for a, b in pairs
        if ranks[a] < ranks[b] and candidates[a] != candidates[b]
    ]


PREFERENCE_SHAPES = (
    "prompt+chosen+rejected",
    "chosen+rejected (implicit prompt)",
    "prompt+responses+ranks (a ranking)",
)


def to_preference_format(
    dataset: Dataset,
    rule: PairRule = "all_pairs",
    margin_column: str | None = None,
    margin_scale: float = 1.0,
    system_prompt: str | None = None,
) -> Dataset:
    """Rows -> conversational `prompt`/`chosen`/`rejected` (and `margin`), as TRL's RewardTrainer reads them.

    `margin_column` names a numeric column (e.g. a rating difference) scaled into TRL's margin; for
    rankings, `margin_column="ranks"` uses the rank gap of each pair. Without it there is no margin.
    """
    columns = set(dataset.column_names)
    ranking = {"prompt", "responses", "ranks"} <= columns
    if not ranking and not {"chosen", "rejected"} <= columns:
        raise UserError(
            f"comparisons need columns {' | '.join(PREFERENCE_SHAPES)}; found {', '.join(dataset.column_names)}"
        )
    if margin_column and margin_column not in columns:
        raise UserError(f"margin column {margin_column!r} not in the data ({', '.join(dataset.column_names)})")

    def as_messages(text: Any, role: str) -> list[dict[str, str]]:
        return text if isinstance(text, list) else [{"role": role, "content": str(text)}]

    def prompt_messages(prompt: Any) -> list[dict[str, str]]:
        if isinstance(prompt, list):
            return prompt
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*system, {"role": "user", "content": str(prompt)}]

    def convert(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"chosen": [], "rejected": [], "margin": []}
        if "prompt" in batch:
            out["prompt"] = []
        for i in range(len(next(iter(batch.values())))):
            if ranking:
                pairs = ranking_to_pairs(batch["responses"][i], batch["ranks"][i], rule)
            else:
                margin = float(batch[margin_column][i]) if margin_column else 0.0
                pairs = [(batch["chosen"][i], batch["rejected"][i], margin)]
            for chosen, rejected, gap in pairs:
                if "prompt" in out:
                    out["prompt"].append(prompt_messages(batch["prompt"][i]))
                out["chosen"].append(as_messages(chosen, "assistant"))
                out["rejected"].append(as_messages(rejected, "assistant"))
                out["margin"].append(gap * margin_scale)
        return out

    with bars_only_if_long(len(dataset)):
        converted = dataset.map(convert, batched=True, remove_columns=dataset.column_names, desc="Building pairs")
    if not margin_column:
        converted = converted.remove_columns("margin")
    same = sum(c == r for c, r in zip(converted["chosen"], converted["rejected"], strict=True))
    if len(converted) == 0 or same == len(converted):
        raise UserError("no usable comparison: every pair has chosen == rejected (or the rankings are all ties)")
    if same:
        with bars_only_if_long(len(converted)):
            converted = converted.filter(
                lambda row: row["chosen"] != row["rejected"], desc="Dropping chosen == rejected"
            )
        print(f"dropped {same} pairs whose chosen and rejected responses are identical")
    return converted
