"""The peer `bench ppo_vs_trl` measures against: PPO with trl==1.12.0's `trl.experimental.ppo.PPOTrainer`,
written the way TRL's own example script uses it. Runs in its own venv (trl 1.13 removed this trainer):

    .cache/bench/trl-1.12/bin/python bench/plain_trl112_ppo.py --config ppo.yaml --policy runs/demo/sft \
        --reward_model runs/demo/reward --data data/textsql/train.jsonl --output_dir /tmp/plain-ppo

`--config` takes trl 1.12 PPOConfig keys; any key is also a flag.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl import TrlParser
from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer


@dataclasses.dataclass
class ScriptArguments:
    policy: str = dataclasses.field(metadata={"help": "SFT model folder (policy and reference)."})
    reward_model: str = dataclasses.field(metadata={"help": "Reward model folder (reward and value init)."})
    data: str = dataclasses.field(metadata={"help": "JSONL file with a question column."})


class UpdateClock(TrainerCallback):
    """Wall-clock time at every logged update (the trainer logs once per update with logging_steps 1)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_log(self, args, state, control, **kwargs) -> None:
        self.times.append(time.perf_counter())


class ResponseTokens:
    """Counts the response tokens trl's rollouts sample (up to and including eos: generate pads after it), so
    the bench can show both sides did the same work per episode."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id, self.tokens, self.responses = pad_token_id, 0, 0
        self.generate = ppo_trainer.batch_generation
        ppo_trainer.batch_generation = self

    def __call__(self, model, queries, *args, **kwargs):
        query_responses, logits = self.generate(model, queries, *args, **kwargs)
        responses = query_responses[:, queries.shape[1] :]
        self.tokens += int((responses != self.pad_token_id).sum())
        self.responses += responses.shape[0]
        return query_responses, logits


def main() -> None:
    script, config = TrlParser((ScriptArguments, PPOConfig)).parse_args_and_config()
    tokenizer = AutoTokenizer.from_pretrained(script.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(script.policy, dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(script.policy, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(script.reward_model, num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(script.reward_model, num_labels=1)

    def tokenize(row: dict) -> dict:
        messages = [{"role": "user", "content": row["question"]}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return {"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}

    rows = load_dataset("json", data_files=script.data, split="train")
    prompts = rows.map(tokenize, remove_columns=rows.column_names)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=prompts,
        eval_dataset=prompts.select(range(config.per_device_eval_batch_size)),
    )
    counted = ResponseTokens(tokenizer.pad_token_id)
    clock = UpdateClock()
    trainer.add_callback(clock)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    out = Path(config.output_dir)
    trainer.save_model(str(out))  # the policy, for the held-out comparison
    tokenizer.save_pretrained(out)
    update_seconds = [t - previous for previous, t in zip([start, *clock.times], clock.times, strict=False)]
    result = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # as pipelines' summary.json
        "train_seconds": seconds,
        "episodes": trainer.state.episode,
        "update_seconds": update_seconds,
        "response_tokens_per_episode": counted.tokens / max(1, counted.responses),
        "log_history": trainer.state.log_history,
    }
    (out / "result.json").write_text(json.dumps(result))
    print(json.dumps({"train_seconds": seconds, "episodes_per_s": trainer.state.episode / seconds}))


if __name__ == "__main__":
    main()
