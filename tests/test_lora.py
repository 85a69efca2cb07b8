"""LoRA SFT: the run writes an adapter and a merged plain model, and the merged model computes exactly what
the base model + adapter computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = [{"role": "user", "content": "What is 3 plus 3?"}]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sft_args, run_cli) -> Path:
    output_dir = tmp_path_factory.mktemp("lora") / "run"
    args = tiny_sft_args(output_dir, "--max_steps", 6, "--save_strategy", "no", "--logging_steps", 1)
    args += ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]
    result = run_cli("pipelines.sft", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir


@pytest.fixture(scope="module")
def inputs(lora_dir: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    return tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_lora_run_writes_an_adapter_and_a_merged_model(lora_dir: Path) -> None:
    adapter = json.loads((lora_dir / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (lora_dir / "adapter_model.safetensors").is_file()
    assert not (lora_dir / "model.safetensors").exists()  # the top level holds the adapter only
    merged = lora_dir / "merged"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (merged / name).is_file(), name
    summary = json.loads((lora_dir / "summary.json").read_text())
    assert summary["merged_model"] == str(merged)


def test_merged_model_gives_the_same_logits_as_the_peft_model(lora_dir: Path, tiny_model: Path, inputs) -> None:
    from peft import AutoPeftModelForCausalLM

    peft_logits = logits(AutoPeftModelForCausalLM.from_pretrained(lora_dir, dtype=torch.float32), inputs)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(lora_dir / "merged", dtype=torch.float32), inputs)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), inputs)

    assert (peft_logits - base_logits).abs().max() > 1e-3  # the adapter learned something: the check is not vacuous
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)


def test_runner_loads_the_adapter_folder_as_a_merged_model(lora_dir: Path, inputs) -> None:
    from trl import ModelConfig

    from pipelines.runner import load_model

    loaded = load_model(str(lora_dir), ModelConfig(), use_bf16=False)
    merged = AutoModelForCausalLM.from_pretrained(lora_dir / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(loaded, inputs), logits(merged, inputs), atol=1e-5, rtol=0)
