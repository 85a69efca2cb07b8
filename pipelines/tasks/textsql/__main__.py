r"""Make or check the text-to-SQL demo data.

    # the shipped data (deterministic: the same command gives the same files)
    python -m pipelines.tasks.textsql generate --out data/textsql
    python -m pipelines.tasks.textsql generate --out /tmp/textsql --seed 1 --n-train 500 --n-test 50
    # re-run every gold query against the folder's database; one summary line, exit 1 on failures
    python -m pipelines.tasks.textsql check --data data/textsql
    # verifiable preference pairs (gold vs a wrong rewrite) from the folder's train/test questions:
    # writes pairs_train.jsonl, pairs_test.jsonl and the README's "Preference pairs" section
    python -m pipelines.tasks.textsql pairs --data data/textsql --seed 0 --per-question 1

Mistakes a user can make (a missing folder, asking for more questions than exist) end with one
line on stderr and exit code 2.
"""

import sys

from pipelines.tasks.samples import SampleData, sample_data_cli
from pipelines.tasks.textsql.perturb import KINDS
from pipelines.tasks.textsql.questions import check_dataset, rewrite_pairs, write_dataset

TEXTSQL = SampleData(
    name="textsql",
    description="Make or check the text-to-SQL demo data.",
    write_dataset=write_dataset,
    rewrite_pairs=rewrite_pairs,
    check_dataset=check_dataset,
    kinds=KINDS,
    generate_help="write shop.sqlite, train.jsonl, test.jsonl, pairs_train/pairs_test.jsonl and README.md",
)
main = sample_data_cli(TEXTSQL)

if __name__ == "__main__":
    sys.exit(main())
