"""The `argilla://workspace/dataset` data source: any stage trains on what annotators submitted.

    python -m pipelines.sft --config configs/sft/tiny.yaml --dataset argilla://demo/instructions
    python -m pipelines.reward --config configs/reward/tiny.yaml --dataset "argilla://demo/prefs?pair_rule=best_vs_rest"

The rows are those `python -m annotation export` would write (same rules, same keys, given as query
parameters: `?format=messages&tie_rule=first&min_submitted=1`): `text` for pretraining text,
`prompt`/`completion` (or `messages`) for instruction pairs, `prompt`/`chosen`/`rejected` for
comparisons and, with `?correction_pairs=true`, for instruction records an annotator rewrote
(corrected ≻ original). The keys are checked like a config's (closest key suggested, one line).
`pipelines.data.sources` imports this module on the first `argilla://` source.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from datasets import Dataset

from annotation.client import pull_dataset
from annotation.export import ExportConfig, build_export
from pipelines.cli import UserError
from pipelines.data.sources import register_scheme
from pipelines.runner.config import merge_config


def load_argilla(spec: str) -> Dataset:
    """Rows of `argilla://workspace/dataset[?key=value...]`, unified and shaped for the stages."""
    parts = urlsplit(spec)
    config = merge_config(ExportConfig, [(dict(parse_qsl(parts.query, keep_blank_values=True)), f"in {spec}")])
    kind, records = pull_dataset(f"{parts.netloc}{parts.path}")
    rows = build_export(kind, records, config).rows
    if not rows:
        raise UserError(f"{spec} has no exportable records yet (see `python -m annotation pull` for why)")
    return Dataset.from_list(rows)


register_scheme("argilla", load_argilla)
