"""`python -m pipelines.tasks.shop_text build ...`: see corpus.py."""

import sys

from pipelines.tasks.shop_text.corpus import main

if __name__ == "__main__":
    sys.exit(main())
