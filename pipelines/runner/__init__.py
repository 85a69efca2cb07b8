"""The one runner every stage shares: config, seeding, model loading, logging, checkpoints, outputs."""

from pipelines.errors import UserError, cli_entry
from pipelines.runner.config import RunArguments, parse_config
from pipelines.runner.modeling import load_model, load_tokenizer, lora_config, score_labelled_tokens_only
from pipelines.runner.run import (
    MetricsLogger,
    stage_defaults,
    start_run,
    train_evaluate_save,
    write_summary,
)

__all__ = [
    "MetricsLogger",
    "RunArguments",
    "UserError",
    "cli_entry",
    "load_model",
    "load_tokenizer",
    "lora_config",
    "parse_config",
    "score_labelled_tokens_only",
    "stage_defaults",
    "start_run",
    "train_evaluate_save",
    "write_summary",
]
