"""The `argilla://workspace/dataset` data source: any stage trains on what annotators submitted.

    python -m pipelines.sft --config configs/sft/tiny.yaml --dataset argilla://demo/instructions
    python -m pipelines.reward --config configs/reward/tiny.yaml --dataset "argilla://demo/prefs?pair_rule=best_vs_rest"

The rows are those `python -m annotation export` would write (same rules, same keys, given as query
parameters: `?format=messages&tie_rule=first&min_submitted=1`): `text` for pretraining text,
`prompt`/`completion` (or `messages`) for instruction pairs, `prompt`/`chosen`/`rejected` for
comparisons. `pipelines.data.sources` imports this module on the first `argilla://` source.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from datasets import Dataset

from annotation.export import ExportConfig, build_export
from annotation.pull import pull_dataset
from pipelines.cli import UserError
from pipelines.data.sources import register_scheme

NUMERIC_KEYS = {"min_submitted": int, "min_rating": float}


def export_config(query: str, spec: str) -> ExportConfig:
    values: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        try:
            values[key] = NUMERIC_KEYS[key](value) if key in NUMERIC_KEYS else value
        except ValueError:
            raise UserError(f"{key}={value!r} in {spec} is not a number") from None
    return ExportConfig.from_mapping(values, spec)


def load_argilla(spec: str) -> Dataset:
    """Rows of `argilla://workspace/dataset[?key=value...]`, unified and shaped for the stages."""
    parts = urlsplit(spec)
    config = export_config(parts.query, spec)
    kind, records = pull_dataset(f"{parts.netloc}{parts.path}")
    rows = build_export(kind, records, config).rows
    if not rows:
        raise UserError(f"{spec} has no exportable records yet (see `python -m annotation pull` for why)")
    return Dataset.from_list(rows)


register_scheme("argilla", load_argilla)
