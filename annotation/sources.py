"""The `argilla://workspace/dataset` data source: any stage trains on what annotators submitted.

    python -m pipelines.sft --config configs/sft/tiny.yaml --dataset argilla://demo/instructions
    python -m pipelines.reward --config configs/reward/tiny.yaml --dataset "argilla://demo/prefs?pair_rule=best_vs_rest"

The rows are those `python -m annotation export` would write (same rules, same keys, given as query
parameters: `?format=messages&tie_rule=first&min_submitted=1`): `text` for pretraining text,
`prompt`/`completion` (or `messages`) for instruction pairs, `prompt`/`chosen`/`rejected` for
comparisons and, with `?correction_pairs=true`, for instruction records an annotator rewrote
(corrected ≻ original). The keys are checked like a config's (closest key suggested, one line).
`pipelines.data.sources` imports this module on the first `argilla://` source. A dataset of a kind the
stage cannot use (a comparison dataset given to SFT) is refused before its records are fetched.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from datasets import Dataset

from annotation.client import connect, dataset_kind, fetch_records, find_dataset, split_address
from annotation.export import ExportConfig, build_export
from pipelines.cli import UserError
from pipelines.data.sources import register_scheme
from pipelines.runner import merge_config

# purpose (pipelines.data.sources.PURPOSES) -> (the stage, what it reads, the kinds of dataset that give it)
USES = {
    "sft": ("SFT (python -m pipelines.sft)", "text or instruction datasets", ("text", "instruction")),
    "reward": (
        "the reward model (python -m pipelines.reward)",
        "comparison datasets (or instruction datasets with ?correction_pairs=true)",
        ("comparison", "instruction pairs"),
    ),
    "ppo": (
        "PPO (python -m pipelines.ppo)",
        "the prompts of instruction or comparison datasets",
        ("instruction", "instruction pairs", "comparison"),
    ),
    "eval": ("eval compare", "instruction datasets (prompts with reference answers)", ("instruction",)),
}
FEEDS = {
    "text": "SFT (continued pretraining)",
    "instruction": "SFT (and, with ?correction_pairs=true, the reward model)",
    "comparison": "the reward model (and PPO's prompts)",
}


def check_kind(spec: str, kind: str, purpose: str | None, config: ExportConfig) -> None:
    """A one-line `UserError` when rows of a `kind` dataset (exported with `config`) are not what `purpose` reads."""
    if purpose is None:
        return
    stage, reads, kinds = USES[purpose]
    exported = "instruction pairs" if kind == "instruction" and config.correction_pairs else kind
    if exported in kinds:
        return
    if exported != kind:
        raise UserError(f"{spec} gives preference pairs (correction_pairs=true), which {stage} cannot use: drop it")
    article = "an" if kind[0] in "aeiou" else "a"
    raise UserError(f"{spec} is {article} {kind} dataset, which feeds {FEEDS[kind]}; {stage} reads {reads}")


def load_argilla(spec: str, purpose: str | None = None) -> Dataset:
    """Rows of `argilla://workspace/dataset[?key=value...]` for `purpose`, unified and shaped for the stages."""
    parts = urlsplit(spec)
    config = merge_config(ExportConfig, [(dict(parse_qsl(parts.query, keep_blank_values=True)), f"in {spec}")])
    address = f"{parts.netloc}{parts.path}"
    split_address(address)  # a malformed address is reported before connecting
    client = connect()
    dataset = find_dataset(client, address)
    kind = dataset_kind(dataset)
    check_kind(spec, kind, purpose, config)
    rows = build_export(kind, fetch_records(client, dataset), config).rows
    if not rows:
        raise UserError(f"{spec} has no exportable records yet (see `python -m annotation pull` for why)")
    return Dataset.from_list(rows)


register_scheme("argilla", load_argilla)
