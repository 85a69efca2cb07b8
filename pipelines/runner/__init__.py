"""The one runner every stage shares: config, seeding, model loading, decoding, one-output models,
logging, checkpoints, outputs. Stages import these names from here, never from the modules below."""

from pipelines.cli import UserError, cli_entry
from pipelines.runner.config import RunArguments, parse_config
from pipelines.runner.decoding import (
    Generation,
    GenerationStats,
    Messages,
    NgramDrafter,
    decode,
    forward_sharing_prefix,
    generate_texts,
    mask_pad,
    render_prompts,
    shared_prefix_length,
)
from pipelines.runner.modeling import load_model, load_tokenizer, lora_config, score_labelled_tokens_only
from pipelines.runner.run import (
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsLogger,
    append_metrics,
    stage_defaults,
    start_run,
    train_evaluate_save,
    write_run_files,
    write_summary,
)
from pipelines.runner.scoring import load_scalar_model, render_conversations, score_conversations

__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "Generation",
    "GenerationStats",
    "Messages",
    "MetricsLogger",
    "NgramDrafter",
    "RunArguments",
    "UserError",
    "append_metrics",
    "cli_entry",
    "decode",
    "forward_sharing_prefix",
    "generate_texts",
    "load_model",
    "load_scalar_model",
    "load_tokenizer",
    "lora_config",
    "mask_pad",
    "parse_config",
    "render_conversations",
    "render_prompts",
    "score_conversations",
    "score_labelled_tokens_only",
    "shared_prefix_length",
    "stage_defaults",
    "start_run",
    "train_evaluate_save",
    "write_run_files",
    "write_summary",
]
