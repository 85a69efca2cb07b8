"""Supervised fine-tuning and continued pretraining with TRL's `SFTTrainer`.

    # the default: SmolLM2-135M on the text-to-SQL sample data (CPU, ~10 min)
    python -m pipelines.sft --config configs/sft/default.yaml
    # LoRA instead of full fine-tuning; any key can be overridden the same way
    python -m pipelines.sft --config configs/sft/default.yaml --use_peft true --learning_rate 5e-4
    # two processes on this CPU (DDP over gloo); GPU configs live beside it
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m pipelines.sft --config configs/sft/tiny.yaml
    # fp32 even where the CPU multiplies bf16 natively (precision: auto picks bf16 there)
    python -m pipelines.sft --config configs/sft/default.yaml --precision fp32

Data shapes (text, prompt/completion, instruction/context/response, question/answer,
input/output, messages) are detected by column names or set with `columns`; see
`pipelines/data/formats.py`. After training, the base and tuned models answer the same
held-out prompts: `generations.md` shows them side by side, `summary.json` has the figures.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from accelerate import PartialState
from trl import ModelConfig, SFTConfig, SFTTrainer

from pipelines.data.formats import (
    detect_mapping,
    drop_overlong_prompts,
    generation_pairs,
    to_training_format,
)
from pipelines.data.sources import DataArguments, load_splits, metrics_sinks
from pipelines.eval.compare import compare_models
from pipelines.runner import (
    MetricsLogger,
    Precision,
    PrecisionArguments,
    RunArguments,
    UserError,
    check_weights,
    cli_entry,
    load_model,
    load_tokenizer,
    lora_config,
    parse_config,
    score_labelled_tokens_only,
    stage_defaults,
    start_run,
    train_evaluate_save,
    training_precision,
    use_training_attention,
    write_summary,
)


@dataclasses.dataclass
class GenerationEvalArguments:
    """The before/after comparison run once training is done."""

    eval_generation_samples: int = dataclasses.field(
        default=32,
        metadata={"help": "Held-out prompts answered by the base and the tuned model (0: skip)."},
    )
    max_new_tokens: int = dataclasses.field(default=64, metadata={"help": "Generation length limit."})
    generation_batch_size: int = dataclasses.field(
        default=32,
        metadata={"help": "Prompts per generate() call: wider is faster on CPU, until memory runs out."},
    )
    compare_base: bool = dataclasses.field(
        default=True,
        metadata={"help": "Also generate with the untrained base model (before/after table)."},
    )


def build_datasets(data_args: DataArguments, tokenizer: Any, training_args: SFTConfig) -> tuple[Any, Any]:
    train_rows, eval_rows = load_splits(data_args, training_args.seed, "sft")
    datasets = []
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        # Each split's own columns: an Argilla export (prompt/completion) may be held out
        # against a file (question/answer).
        formatted = to_training_format(
            rows, detect_mapping(rows.column_names, data_args.columns), data_args.system_prompt
        )
        datasets.append(drop_overlong_prompts(formatted, tokenizer, training_args.max_length, name))
    if "messages" in datasets[0].column_names and not training_args.assistant_only_loss:
        print("note: messages data trains on every token; set assistant_only_loss: true to train on replies only")
    return datasets[0], datasets[1]


def generation_eval(
    output_dir: Path,
    tokenizer: Any,
    eval_dataset: Any,
    model_args: ModelConfig,
    args: GenerationEvalArguments,
    precision: Precision,
) -> dict[str, Any]:
    """The base model and the saved tuned one answer the same held-out prompts, weights in the run's precision."""
    prompts, references = generation_pairs(eval_dataset)
    prompts, references = (
        prompts[: args.eval_generation_samples],
        references[: args.eval_generation_samples],
    )
    if not prompts:
        return {}
    device = PartialState().device
    models = {"base": model_args.model_name_or_path} if args.compare_base else {}
    models["tuned"] = str(output_dir)
    loaders = {
        name: (lambda m=path: load_model(m, model_args, precision.bf16).to(device)) for name, path in models.items()
    }
    return compare_models(
        loaders,
        tokenizer,
        prompts,
        references,
        output_dir,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.generation_batch_size,
    )


@cli_entry
def main(argv: list[str] | None = None) -> None:
    data_args, gen_args, precision_args, run_args, training_args, model_args = parse_config(
        [DataArguments, GenerationEvalArguments, PrecisionArguments, RunArguments, SFTConfig, ModelConfig],
        argv,
        defaults=stage_defaults(),
        prog="python -m pipelines.sft",
    )
    if not model_args.model_name_or_path:
        raise UserError("no model: set model_name_or_path (a folder under models/, a path, or a hub id)")
    # every mistake a user can make is found before the model loads or anything is written
    resume_from = start_run(run_args, training_args, metrics_sinks(data_args))
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    check_weights(model_args.model_name_or_path)
    train_dataset, eval_dataset = build_datasets(data_args, tokenizer, training_args)
    precision = training_precision(precision_args.precision, training_args)
    # fp32 master weights, bf16 by autocast; each packed example attends over itself, not the whole flattened row
    model = use_training_attention(load_model(model_args.model_name_or_path, model_args))
    score_labelled_tokens_only()
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args),
        callbacks=[MetricsLogger(training_args.output_dir)],
    )
    configs = (data_args, gen_args, precision_args, run_args, training_args, model_args)
    summary, output_dir = train_evaluate_save(trainer, run_args, configs, tokenizer, resume_from)
    summary["precision"] = precision.as_dict()
    summary["eval"]["eval_perplexity"] = math.exp(min(summary["eval"]["eval_loss"], 50.0))
    summary["data"] = {"train_examples": len(train_dataset), "eval_examples": len(eval_dataset)}
    if PartialState().is_main_process and gen_args.eval_generation_samples > 0:
        summary["generation"] = generation_eval(output_dir, tokenizer, eval_dataset, model_args, gen_args, precision)
    write_summary(output_dir, summary)
    if PartialState().is_main_process:
        print(f"done: model, metrics.jsonl, summary.json and generations.md in {output_dir}")


if __name__ == "__main__":
    main()
