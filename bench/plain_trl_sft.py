"""The peer `bench sft_vs_trl` measures against: SFT as a plain TRL script would write it.

    python bench/plain_trl_sft.py --config sft.yaml --model models/smollm2-135m-instruct \
        --data data/textsql/train.jsonl --output_dir /tmp/plain-sft --bf16 true

`--config` takes SFTConfig keys (the same YAML pipelines.sft gets); any key is also a flag.
`--bf16 true` trains under TRL's bf16 autocast (fp32 weights), as the bench's precision says.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer, TrlParser


@dataclasses.dataclass
class ScriptArguments:
    model: str = dataclasses.field(metadata={"help": "Model folder."})
    data: str = dataclasses.field(metadata={"help": "JSONL file with question/answer columns."})
    max_train_samples: int | None = dataclasses.field(default=None, metadata={"help": "First N after a shuffle."})


def to_chat(row: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": row["question"]}],
        "completion": [{"role": "assistant", "content": row["answer"]}],
    }


def main() -> None:
    script, config = TrlParser((ScriptArguments, SFTConfig)).parse_args_and_config()
    tokenizer = AutoTokenizer.from_pretrained(script.model)
    model = AutoModelForCausalLM.from_pretrained(script.model, dtype=torch.float32)
    rows = load_dataset("json", data_files=script.data, split="train")
    if script.max_train_samples:
        rows = rows.shuffle(seed=config.seed).select(range(min(script.max_train_samples, len(rows))))
    dataset = rows.map(to_chat, remove_columns=rows.column_names)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    runtime = trainer.train().metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    Path(config.output_dir, "log_history.json").write_text(json.dumps(trainer.state.log_history))
    print(json.dumps({"train_runtime": runtime, "num_input_tokens_seen": tokens, "tokens_per_s": tokens / runtime}))


if __name__ == "__main__":
    main()
