"""The peer `bench reward_vs_trl` measures against: a reward model as a plain TRL script would train it.

    python bench/plain_trl_reward.py --config reward.yaml --model models/smollm2-135m-instruct \
        --data data/textsql/pairs_train.jsonl --output_dir /tmp/plain-rm --bf16 true

`--config` takes RewardConfig keys (the same YAML pipelines.reward gets); any key is also a flag.
`--bf16 true` trains under TRL's bf16 autocast (fp32 weights), as the bench's precision says.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer, TrlParser


@dataclasses.dataclass
class ScriptArguments:
    model: str = dataclasses.field(metadata={"help": "Model folder."})
    data: str = dataclasses.field(metadata={"help": "JSONL file with prompt/chosen/rejected columns."})
    max_train_samples: int | None = dataclasses.field(default=None, metadata={"help": "First N after a shuffle."})


def to_chat(row: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def main() -> None:
    script, config = TrlParser((ScriptArguments, RewardConfig)).parse_args_and_config()
    tokenizer = AutoTokenizer.from_pretrained(script.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        script.model, num_labels=1, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id
    )
    rows = load_dataset("json", data_files=script.data, split="train")
    if script.max_train_samples:
        rows = rows.shuffle(seed=config.seed).select(range(min(script.max_train_samples, len(rows))))
    dataset = rows.map(to_chat, remove_columns=rows.column_names)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    runtime = trainer.train().metrics["train_runtime"]
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    Path(config.output_dir, "log_history.json").write_text(json.dumps(trainer.state.log_history))
    print(json.dumps({"train_runtime": runtime, "samples": len(dataset)}))


if __name__ == "__main__":
    main()
