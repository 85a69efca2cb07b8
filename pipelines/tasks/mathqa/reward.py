"""PPO's verifiable reward for the math data: read the response's final number and compare it with
the gold answer.

    python -m pipelines.ppo --config configs/ppo/tiny.yaml --dataset data/mathqa/train.jsonl \\
        --eval_dataset data/mathqa/test.jsonl --reward_function pipelines.tasks.mathqa.reward:answer_reward

`prompts` are the questions exactly as in train.jsonl / test.jsonl (the gold answer is looked up by
question text); the data folder is the repo's data/mathqa unless the environment variable
`MATHQA_DATA` names another folder written by `python -m pipelines.tasks.mathqa generate`.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

from pipelines.cli import UserError
from pipelines.models import PROJECT_ROOT
from pipelines.tasks.mathqa.answers import extract_answer
from pipelines.tasks.mathqa.questions import load_split
from pipelines.tasks.samples import SPLITS

DATA_ENV = "MATHQA_DATA"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "mathqa"

# As for the text-to-SQL reward: right vs wrong is the largest gap, and an answer with no number at
# all sits below a wrong number, so an untrained policy first learns to end with a number.
CORRECT_REWARD = 1.0  # the final number equals the gold answer
WRONG_ANSWER_REWARD = 0.0  # another number
NO_ANSWER_REWARD = -0.5  # no number in the response


def data_dir() -> Path:
    """The math data folder: `$MATHQA_DATA` if set, else the repo's data/mathqa."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


@functools.lru_cache(maxsize=4)
def gold_answers(folder: Path) -> dict[str, Fraction]:
    """Question text -> gold answer for a folder's train and test questions, loaded once per process."""
    return {row["question"].strip(): Fraction(row["answer"]) for split in SPLITS for row in load_split(folder, split)}


def score_answer(gold: Fraction, response: str) -> float:
    """One response's reward (see the constants above)."""
    answer = extract_answer(response)
    if answer is None:
        return NO_ANSWER_REWARD
    return CORRECT_REWARD if answer == gold else WRONG_ANSWER_REWARD


def answer_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """`reward_function` for PPO: 1.0 right final number, 0.0 wrong number, -0.5 no number."""
    folder = data_dir().resolve()
    gold = gold_answers(folder)
    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        answer = gold.get(prompt.strip())
        if answer is None:
            raise UserError(
                f"no gold answer for the question {prompt!r} in {folder}/train.jsonl or test.jsonl; the prompts "
                f"must be that data's questions verbatim (set {DATA_ENV} to the folder they come from)"
            )
        scores.append(score_answer(answer, response))
    return scores
