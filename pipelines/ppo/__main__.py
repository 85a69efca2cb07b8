r"""PPO: optimise the policy against a reward, with a KL penalty toward a frozen reference.

    # the default: the SFT model against the reward model trained by pipelines.reward
    python -m pipelines.ppo --config configs/ppo/default.yaml
    # a rule-based reward instead of a model ('module:function', prompts + responses -> floats)
    python -m pipelines.ppo --config configs/ppo/tiny.yaml \
        --reward_function pipelines.tasks.textsql.reward:execution_reward
    # continue a killed run; two processes on this CPU (DDP, or FSDP: the policy sharded)
    python -m pipelines.ppo --config configs/ppo/default.yaml --resume
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m pipelines.ppo --config configs/ppo/tiny.yaml
    accelerate launch --config_file configs/accelerate/cpu_fsdp_2proc.yaml \
        -m pipelines.ppo --config configs/ppo/tiny.yaml
    # fp32 even where the CPU multiplies bf16 natively (precision: auto picks bf16 there)
    python -m pipelines.ppo --config configs/ppo/default.yaml --precision fp32

Writes the policy (LoRA: adapter + merged/), value_model/ (with shared_backbone: value_head.safetensors),
metrics.jsonl (objective/kl, objective/scores, policy/clipfrac, ...), samples.jsonl, ppo_curves.png and
summary.json (held-out score/length/eos before and after, the precision and why).

Precision (`precision: auto`, runner/precision.py): where bf16 is native, the policy/value forwards run under
bf16 autocast over fp32 weights (the trained ones: AdamW's state is fp32 too), rollouts sample from a bf16 copy
of the policy refreshed every update (without LoRA), and the frozen reference and reward models hold bf16
weights. What stays fp32: the log-probs of PPO's ratio and KL (logits upcast before the log-softmax,
rollout.forward_with_values and the decode loop's pick_tokens), the value and reward heads' outputs
(trainer.ValueHead, the runner's fp32 score head), and the losses, advantages and whitening (core.py, on fp32
tensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState
from trl import ModelConfig

from pipelines.cli import mask_passwords, release_output_dir
from pipelines.data.formats import to_prompts
from pipelines.data.sources import DataArguments, load_splits, metrics_sinks
from pipelines.eval.curves import plot_curves
from pipelines.eval.verifiers import pick_verifier
from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import import_function, load_reward
from pipelines.ppo.trainer import PPOTrainer, ValueHead
from pipelines.runner import (
    METRICS_FILE,
    PrecisionArguments,
    RunArguments,
    UserError,
    check_scoring_model,
    cli_entry,
    load_model,
    load_scalar_model,
    load_tokenizer,
    lora_config,
    parse_config,
    stage_defaults,
    start_run,
    training_precision,
    use_training_attention,
    write_run_files,
    write_summary,
)


def load_value_model(path: str, model_args: ModelConfig, tokenizer: Any) -> Any:
    """A value model of its own, trained: fp32 weights (bf16 comes from autocast)."""
    value = use_training_attention(
        load_scalar_model(path, model_args, trained_head=False, role="value model", pad_token_id=tokenizer.pad_token_id)
    )
    if not hasattr(value, "score") or not hasattr(value, value.base_model_prefix):
        raise UserError(f"value model {path} must be a decoder classifier (a backbone + `score` head), like the policy")
    if value.config.vocab_size != len(tokenizer):
        raise UserError(f"value model {path} does not share the policy's tokenizer; set value_model_path")
    return value


@cli_entry
def main(argv: list[str] | None = None) -> None:
    data_args, precision_args, run_args, config, model_args = parse_config(
        [DataArguments, PrecisionArguments, RunArguments, PPOConfig, ModelConfig],
        argv,
        defaults=stage_defaults(),
        prog="python -m pipelines.ppo",
    )
    if not model_args.model_name_or_path:
        raise UserError("no policy: set model_name_or_path (the SFT output, or a folder under models/)")
    # every mistake a user can make is found before a model loads or anything is written
    if bool(config.reward_model_path) == bool(config.reward_function):
        raise UserError("set exactly one of reward_model_path or reward_function")
    if config.shared_backbone and config.value_model_path:
        raise UserError("shared_backbone puts the value head on the policy: drop value_model_path (or the flag)")
    reward_function = import_function(config.reward_function) if config.reward_function else None
    resume_from = start_run(run_args, config, metrics_sinks(data_args))
    if config.reward_model_path:
        check_scoring_model(config.reward_model_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train_rows, eval_rows = load_splits(data_args, config.seed, "ppo")
    train_prompts = to_prompts(train_rows, data_args.columns, data_args.system_prompt)
    eval_prompts = to_prompts(eval_rows, data_args.columns, data_args.system_prompt)[: config.eval_prompts]
    eval_dicts = [dict(row) for row in eval_rows.select(range(len(eval_prompts)))]
    verifier = pick_verifier(config.eval_verifier, eval_rows.column_names, Path(config.eval_db), eval_dicts)
    if not train_prompts:
        raise UserError(f"no prompts in {mask_passwords(str(data_args.dataset))}")
    precision = training_precision(precision_args.precision, config)

    state = PartialState()
    reward, reward_shares_tokenizer = load_reward(
        config.reward_model_path,
        reward_function,
        tokenizer,
        model_args,
        precision.bf16,  # frozen: bf16 weights where the precision is bf16
        state.device,
        config.share_prompt_prefix,
    )
    policy = use_training_attention(load_model(model_args.model_name_or_path, model_args))  # trained: fp32 weights
    peft_config = lora_config(model_args)
    ref_policy = None
    if peft_config is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config)
    if peft_config is None or config.ref_model_path:
        ref_policy = load_model(config.ref_model_path or model_args.model_name_or_path, model_args, precision.bf16)
        ref_policy.requires_grad_(False)
    if config.shared_backbone:
        value_model = ValueHead(policy.config.hidden_size)
    else:
        value_path = config.value_model_path or (
            config.reward_model_path if reward_shares_tokenizer else model_args.model_name_or_path
        )
        value_model = load_value_model(value_path, model_args, tokenizer)

    trainer = PPOTrainer(
        config,
        policy,
        value_model,
        ref_policy,
        reward,
        tokenizer,
        train_prompts,
        eval_prompts,
        eval_dicts,
        verifier,
    )
    release_output_dir()
    summary = trainer.train(resume_from)
    trainer.save()
    output_dir = Path(config.output_dir)
    summary["precision"] = precision.as_dict()
    write_run_files(output_dir, run_args, (data_args, precision_args, run_args, config, model_args), summary)
    if state.is_main_process:
        summary["curves"] = str(plot_curves(output_dir / METRICS_FILE, output_dir / "ppo_curves.png"))
        summary["world_size"] = state.num_processes
        summary["updates"] = trainer.step
        summary["episodes"] = trainer.step * config.rollout_batch_size * state.num_processes
    write_summary(output_dir, summary)
    if state.is_main_process:
        print(f"done: policy, value_model/, metrics.jsonl, ppo_curves.png and summary.json in {output_dir}")


if __name__ == "__main__":
    main()
