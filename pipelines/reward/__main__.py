r"""Reward model training with TRL's `RewardTrainer`, and scoring with a trained reward model.

    # train on chosen/rejected pairs (default: verifiable text-to-SQL pairs, from the SFT model)
    python -m pipelines.reward --config configs/reward/default.yaml
    python -m pipelines.reward --config configs/reward/tiny.yaml --output_dir runs/tiny-rm
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        -m pipelines.reward --config configs/reward/tiny.yaml
    # fp32 even where the CPU multiplies bf16 natively (precision: auto picks bf16 there)
    python -m pipelines.reward --config configs/reward/default.yaml --precision fp32
    # score prompt/response rows (JSONL/CSV/...): writes one JSON line per row with its score
    python -m pipelines.reward score --model runs/rm --input answers.jsonl --output scored.jsonl

Data: `prompt, chosen, rejected` (explicit prompt), `chosen, rejected` (implicit prompt), or a
ranking `prompt, responses, ranks` turned into pairs by `pair_rule` (see
`pipelines/data/preferences.py`). Chat templates are applied exactly as in SFT. After training,
held-out pairs are scored: accuracy, score histograms and margin calibration in
`reward_eval.png` / `reward_eval.json`, figures in `summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from accelerate import PartialState
from trl import ModelConfig, RewardConfig, RewardTrainer

from pipelines.cli import CliParser, check_output_file, write_atomically
from pipelines.data.formats import check_text_columns
from pipelines.data.preferences import PAIR_RULES, to_preference_format
from pipelines.data.sources import DataArguments, load_source, load_splits, metrics_sinks
from pipelines.eval.reward import pairwise_report
from pipelines.runner import (
    MetricsLogger,
    PrecisionArguments,
    RunArguments,
    UserError,
    add_precision_flag,
    announce_precision,
    check_ranges,
    check_scoring_model,
    cli_entry,
    load_scalar_model,
    load_tokenizer,
    lora_config,
    parse_config,
    resolve_precision,
    score_conversations,
    stage_defaults,
    start_run,
    train_evaluate_save,
    training_precision,
    use_training_attention,
    write_summary,
)


@dataclasses.dataclass
class PreferenceArguments:
    """How comparisons become training pairs."""

    pair_rule: str = dataclasses.field(
        default="all_pairs",
        metadata={
            "help": "Rankings to pairs: all_pairs | best_vs_rest (ties never make a pair).",
            "choices": PAIR_RULES,
        },
    )
    margin_column: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Numeric column used as TRL's margin (e.g. a rating difference; 'ranks' for rank gaps)."},
    )
    margin_scale: float = dataclasses.field(default=1.0, metadata={"help": "Multiplier applied to margin_column."})


def build_pairs(data_args: DataArguments, pref_args: PreferenceArguments, seed: int) -> tuple[Any, Any]:
    train_rows, eval_rows = load_splits(data_args, seed, "reward")
    return tuple(
        to_preference_format(
            rows, pref_args.pair_rule, pref_args.margin_column, pref_args.margin_scale, data_args.system_prompt
        )
        for rows in (train_rows, eval_rows)
    )


def report_length_filter(name: str, before: int, after: int, max_length: int | None) -> dict[str, int]:
    dropped = before - after
    if dropped:
        print(f"{name}: dropped {dropped}/{before} pairs longer than max_length={max_length} (chosen or rejected)")
    if after == 0:
        raise UserError(f"every {name} pair is longer than max_length={max_length}: raise max_length")
    return {f"{name}_pairs": after, f"{name}_dropped_over_max_length": dropped}


def evaluate_pairs(trainer: RewardTrainer, tokenizer: Any, eval_pairs: Any, batch_size: int) -> dict[str, Any]:
    """Score held-out chosen and rejected responses with the trained model: accuracy, plots, calibration."""

    def conversations(column: str) -> list[Any]:
        prompts = eval_pairs["prompt"] if "prompt" in eval_pairs.column_names else [[]] * len(eval_pairs)
        return [p + c for p, c in zip(prompts, eval_pairs[column], strict=True)]

    max_length, output_dir = trainer.args.max_length, trainer.args.output_dir
    # Under FSDP trainer.model is sharded across the processes (its forward is collective): the saved, gathered one
    model = load_scalar_model(output_dir, trained_head=True) if trainer.is_fsdp_enabled else trainer.model
    chosen = score_conversations(model, tokenizer, conversations("chosen"), batch_size, max_length, "Scoring chosen")
    rejected = score_conversations(
        model, tokenizer, conversations("rejected"), batch_size, max_length, "Scoring rejected"
    )
    return pairwise_report(chosen, rejected, Path(output_dir))


def train_main(argv: list[str]) -> None:
    data_args, pref_args, precision_args, run_args, training_args, model_args = parse_config(
        [DataArguments, PreferenceArguments, PrecisionArguments, RunArguments, RewardConfig, ModelConfig],
        argv,
        defaults={**stage_defaults(), "lora_task_type": "SEQ_CLS"},
        prog="python -m pipelines.reward",
    )
    if not model_args.model_name_or_path:
        raise UserError("no model: set model_name_or_path (the SFT output, a folder under models/, or a hub id)")
    # every mistake a user can make is found before the model loads or anything is written
    resume_from = start_run(run_args, training_args, metrics_sinks(data_args))
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_pairs, eval_pairs = build_pairs(data_args, pref_args, training_args.seed)
    precision = training_precision(precision_args.precision, training_args)
    # from a causal LM (e.g. the SFT output) the score head starts fresh; fp32 master weights, bf16 by autocast
    model = use_training_attention(
        load_scalar_model(
            model_args.model_name_or_path, model_args, trained_head=False, pad_token_id=tokenizer.pad_token_id
        )
    )
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs,
        processing_class=tokenizer,
        peft_config=lora_config(model_args),
        callbacks=[MetricsLogger(training_args.output_dir, language_model=False)],
    )
    data_report = {
        **report_length_filter("train", len(train_pairs), len(trainer.train_dataset), training_args.max_length),
        **report_length_filter("eval", len(eval_pairs), len(trainer.eval_dataset), training_args.max_length),
    }
    configs = (data_args, pref_args, precision_args, run_args, training_args, model_args)
    # The held-out pairs are scored once below (per-pair scores feed the plots): no second TRL evaluate pass.
    summary, output_dir = train_evaluate_save(trainer, run_args, configs, tokenizer, resume_from, evaluate=False)
    summary["precision"] = precision.as_dict()
    summary["data"] = data_report
    if PartialState().is_main_process:
        summary["pairwise"] = evaluate_pairs(trainer, tokenizer, eval_pairs, training_args.per_device_eval_batch_size)
        print(f"held-out pairwise accuracy {summary['pairwise']['accuracy']:.3f} on {len(eval_pairs)} pairs")
    write_summary(output_dir, summary)


RESPONSE_FIELDS = ("response", "completion", "answer", "output", "chosen")
PROMPT_FIELDS = ("prompt", "question", "instruction", "input")


def score_main(argv: list[str]) -> None:
    parser = CliParser(prog="python -m pipelines.reward score", description="Score prompt/response rows.")
    parser.add_argument("--model", required=True, help="a reward model folder (the output of pipelines.reward)")
    parser.add_argument("--input", required=True, help="rows with a prompt and a response column (any data source)")
    parser.add_argument("--output", type=Path, help="JSONL output (default: stdout)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=None)
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    # every mistake a user can make is found before the model loads or anything is written
    check_ranges(args, prefix="--")
    if args.output:
        check_output_file(args.output)
    check_scoring_model(args.model)
    rows = load_source(args.input)
    rows = rows["train"] if hasattr(rows, "keys") else rows
    prompt_field = next((f for f in PROMPT_FIELDS if f in rows.column_names), None)
    response_field = next((f for f in RESPONSE_FIELDS if f in rows.column_names), None)
    if response_field is None:
        raise UserError(f"{args.input} needs a response column ({', '.join(RESPONSE_FIELDS)}); has {rows.column_names}")
    check_text_columns(rows, [response_field], args.input, optional=[prompt_field] if prompt_field else [])
    tokenizer = load_tokenizer(args.model)
    precision = announce_precision(resolve_precision(args.precision))
    model = load_scalar_model(args.model, use_bf16=precision.bf16, trained_head=True)
    conversations = [
        ([{"role": "user", "content": row[prompt_field]}] if prompt_field and row[prompt_field] else [])
        + [{"role": "assistant", "content": row[response_field]}]
        for row in rows
    ]
    scores = score_conversations(model, tokenizer, conversations, args.batch_size, args.max_length)
    lines = "".join(
        json.dumps({**row, "score": s}, ensure_ascii=False, default=str) + "\n"
        for row, s in zip(rows, scores, strict=True)
    )
    if args.output:
        write_atomically(args.output, lines)
        print(f"scored {len(scores)} rows -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "score":
        score_main(args[1:])
    else:
        train_main(args)


if __name__ == "__main__":
    main()
