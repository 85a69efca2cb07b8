"""`python -m pipelines.data <step> ...`: data curation (see pipelines/data/curate.py)."""

from pipelines.data.curate import main

if __name__ == "__main__":
    raise SystemExit(main())
