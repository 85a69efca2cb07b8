"""The one runner every stage shares: config, seeding, model loading, decoding, one-output models,
logging, checkpoints, outputs. Stages import these names from here, never from the modules below.

Names are imported on first use (PEP 562 `__getattr__`): `from pipelines.runner import parse_flags`
costs no torch/transformers import, so light CLIs (`python -m annotation ...`) share the config loader and
still start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

# module -> the public names it defines
_EXPORTS: dict[str, tuple[str, ...]] = {
    "pipelines.cli": ("UserError", "cli_entry"),
    "pipelines.runner.config": (
        "RunArguments",
        "add_config_flags",
        "check_ranges",
        "config_fields",
        "config_layers",
        "flag_values",
        "merge_config",
        "parse_config",
        "parse_flags",
        "read_yaml",
    ),
    "pipelines.runner.decoding": (
        "Generation",
        "GenerationStats",
        "Messages",
        "NgramDrafter",
        "decode",
        "forward_sharing_prefix",
        "generate_texts",
        "mask_pad",
        "render_prompts",
        "shared_prefix_length",
    ),
    "pipelines.runner.distributed": ("enable_cpu_fsdp",),
    "pipelines.runner.modeling": (
        "check_weights",
        "load_model",
        "load_tokenizer",
        "lora_config",
        "score_labelled_tokens_only",
        "use_training_attention",
    ),
    "pipelines.runner.precision": (
        "PRECISIONS",
        "Precision",
        "PrecisionArguments",
        "add_precision_flag",
        "announce_precision",
        "resolve_precision",
        "training_precision",
    ),
    "pipelines.runner.run": (
        "METRICS_FILE",
        "SUMMARY_FILE",
        "TENSORBOARD_DIR",
        "MetricsLogger",
        "append_metrics",
        "checkpoint_dir",
        "complete_checkpoint",
        "stage_defaults",
        "start_run",
        "train_evaluate_save",
        "write_run_files",
        "write_summary",
    ),
    "pipelines.runner.scoring": (
        "check_scoring_model",
        "load_scalar_model",
        "render_conversations",
        "score_conversations",
    ),
}
_HOMES = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
