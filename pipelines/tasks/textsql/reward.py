"""PPO's verifiable reward for text-to-SQL: run the model's SQL and compare its result with the gold one.

    python -m pipelines.ppo --config configs/ppo/default.yaml \\
        --reward_function pipelines.tasks.textsql.reward:execution_reward

`prompts` are the questions exactly as in train.jsonl / test.jsonl (the gold SQL is looked up by
question text); the data folder is the repo's data/textsql unless the environment variable
`TEXTSQL_DATA` names another folder written by `python -m pipelines.tasks.textsql generate`.

The model's SQL is read from its text by `extract_sql` (code fences and prose around it are
dropped), runs read-only through `execute`, and is compared as `execution_match` compares. Gold
results are computed once per question and cached, so a response costs one small query.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.cli import UserError
from pipelines.models import PROJECT_ROOT
from pipelines.tasks.samples import SPLITS
from pipelines.tasks.textsql.execute import Row, execute, has_order_by, mask_quoted, results_match
from pipelines.tasks.textsql.questions import DB_NAME, load_split

DATA_ENV = "TEXTSQL_DATA"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / "textsql"

# The three reward levels. Correct vs wrong is the largest gap (1.0), so getting the answer right
# dominates; SQL that does not run sits below wrong-but-runnable SQL (by 0.5), so an untrained policy
# first learns to write valid SQL, but not so far below that a valid query with any answer becomes
# a safe place to stop.
CORRECT_REWARD = 1.0  # runs and returns the gold result
WRONG_RESULT_REWARD = 0.0  # runs, but the result differs from the gold result
FAILED_REWARD = -0.5  # no SQL found, syntax/name error, not a single SELECT/WITH, or too slow

# Every gold query runs in well under a millisecond; a query that takes longer than this is a
# runaway (e.g. a cross join) and is scored as failing rather than stalling the PPO step.
REWARD_TIMEOUT_S = 0.5

_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|$)", re.DOTALL)
# SELECT, or a WITH that really opens a CTE (`WITH name [(cols)] AS (`), so prose like "with a join" is skipped.
_SQL_START = re.compile(r"\bSELECT\b|\bWITH\s+(?:RECURSIVE\s+)?\w+\s*(?:\([^)]*\)\s*)?AS\s*\(", re.IGNORECASE)
_SQL_END = re.compile(r";|\n\s*\n|```")  # first statement end, blank line, or closing fence


def extract_sql(text: str) -> str | None:
    """The first SELECT/WITH statement in a model's answer (a fenced block is searched first), or None.

    The statement runs to its first `;` outside quotes (kept), else to a blank line, a closing
    fence or the end of the text, so trailing prose and second statements never reach the database.
    """
    blocks = [match.group(1) for match in _FENCE.finditer(text)]
    for source in [*blocks, text]:
        start = _SQL_START.search(source)
        if start is None:
            continue
        rest = source[start.start() :]
        end = _SQL_END.search(mask_quoted(rest))
        if end is None:
            return rest.strip()
        return rest[: end.end() if end.group() == ";" else end.start()].strip()
    return None


@dataclass
class GoldTable:
    """Gold SQL per question of one data folder, and gold results computed on first use."""

    db_path: Path
    answers: dict[str, str]
    _results: dict[str, tuple[list[Row], bool]] = field(default_factory=dict)

    def result(self, question: str) -> tuple[list[Row], bool]:
        """Gold rows and whether their order counts; an unknown question is a `UserError`."""
        key = question.strip()
        if key not in self._results:
            if key not in self.answers:
                raise UserError(
                    f"no gold SQL for the question {question!r} in {self.db_path.parent}/train.jsonl or test.jsonl; "
                    f"the prompts must be that data's questions verbatim (set {DATA_ENV} to the folder they come from)"
                )
            gold_sql = self.answers[key]
            gold = execute(self.db_path, gold_sql)
            if gold.rows is None:
                raise UserError(f"gold SQL for {question!r} fails ({gold.error}); regenerate {self.db_path.parent}")
            self._results[key] = (gold.rows, has_order_by(gold_sql))
        return self._results[key]


def data_dir() -> Path:
    """The text-to-SQL data folder: `$TEXTSQL_DATA` if set, else the repo's data/textsql."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


@functools.lru_cache(maxsize=4)
def gold_table(folder: Path) -> GoldTable:
    """Load a folder's train and test questions once per process (PPO calls the reward every step)."""
    db_path = folder / DB_NAME
    if not db_path.is_file():
        raise UserError(
            f"{db_path} not found; create it with `python -m pipelines.tasks.textsql generate --out {folder}`"
        )
    answers = {row["question"].strip(): row["answer"] for split in SPLITS for row in load_split(folder, split)}
    return GoldTable(db_path=db_path, answers=answers)


def score_sql(table: GoldTable, question: str, response: str) -> float:
    """One response's reward (see the constants above)."""
    gold_rows, ordered = table.result(question)
    sql = extract_sql(response)
    if sql is None:
        return FAILED_REWARD
    pred = execute(table.db_path, sql, timeout_s=REWARD_TIMEOUT_S)
    if pred.rows is None:
        return FAILED_REWARD
    return CORRECT_REWARD if results_match(gold_rows, pred.rows, ordered) else WRONG_RESULT_REWARD


def execution_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """`reward_function` for PPO: 1.0 correct result, 0.0 wrong result, -0.5 SQL that does not run."""
    table = gold_table(data_dir().resolve())
    return [score_sql(table, prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
