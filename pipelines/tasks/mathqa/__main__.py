r"""Make or check the verifiable math demo data.

    # the shipped data (deterministic: the same command gives the same files)
    python -m pipelines.tasks.mathqa generate --out data/mathqa
    python -m pipelines.tasks.mathqa generate --out /tmp/mathqa --seed 1 --n-train 500 --n-test 50
    # rebuild every row from its template, re-check every answer and pair; one summary line, exit 1 on failures
    python -m pipelines.tasks.mathqa check --data data/mathqa
    # other preference pairs from the folder's own questions (and the README's "Preference pairs" section)
    python -m pipelines.tasks.mathqa pairs --data data/mathqa --seed 0 --per-question 2

Mistakes a user can make (a missing folder, asking for more questions than the templates hold)
end with one line on stderr and exit code 2.
"""

import sys

from pipelines.tasks.mathqa.dataset import check_dataset, rewrite_pairs, write_dataset
from pipelines.tasks.mathqa.problems import KINDS
from pipelines.tasks.samples import SampleData, sample_data_cli

MATHQA = SampleData(
    name="mathqa",
    description="Make or check the verifiable math demo data.",
    write_dataset=write_dataset,
    rewrite_pairs=rewrite_pairs,
    check_dataset=check_dataset,
    kinds=KINDS,
)
main = sample_data_cli(MATHQA)

if __name__ == "__main__":
    sys.exit(main())
