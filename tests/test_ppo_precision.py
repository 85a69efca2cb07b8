"""PPO in bf16 and with less memory: rollout and training log-probs agree to a measured tolerance and come
from the same distribution, the old log-probs are the training forward's, the trained weights and AdamW state
stay fp32 (in-process on the tiny model, and a CLI run); a value head on the policy's trunk, and a LoRA
policy whose adapter-disabled base is the reference (CLI runs)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import FunctionReward
from pipelines.ppo.trainer import PPOTrainer, ValueHead
from tests.reward_fns import short_answers
from tests.test_ppo_trainer import QUESTIONS, chat, favouring

PPO_TINY = Path(__file__).resolve().parents[1] / "configs" / "ppo" / "tiny.yaml"
# The random tiny model spreads its mass over 49k tokens (mean -log p 10.8), where bf16 rounding hardly shows;
# its tied embeddings and LM head scaled by 8 make it as sure of its tokens as the SFT'd SmolLM2 (mean -log p
# about 1-2), where it does.
SHARPEN = 8.0


@pytest.fixture
def make_trainer(tiny_model: Path, tmp_path: Path) -> Iterator[Callable[..., PPOTrainer]]:
    """`make_trainer(bf16, seed)`: a PPO trainer on the sharpened tiny model, shared-backbone value head. The
    accelerate state is a process singleton fixed at the first Accelerator: reset around each one."""

    def make(bf16: bool, seed: int = 0, **overrides: Any) -> PPOTrainer:
        AcceleratorState._reset_state(reset_partial_state=True)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model)
        torch.manual_seed(seed)
        policy = AutoModelForCausalLM.from_pretrained(tiny_model)
        with torch.no_grad():
            policy.lm_head.weight.mul_(SHARPEN)
        reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16 if bf16 else None)
        config = PPOConfig(
            output_dir=str(tmp_path / f"ppo-{bf16}-{seed}"),
            max_steps=1,
            rollout_batch_size=8,
            per_device_train_batch_size=8,
            max_new_tokens=16,
            temperature=1.0,
            report_to=[],
            use_cpu=True,
            draft_tokens=0,
            bf16=bf16,
            seed=seed,
            **overrides,
        )
        reward = FunctionReward("tests.reward_fns:short_answers", short_answers)
        prompts = [chat(q) for q in QUESTIONS]
        value = ValueHead(policy.config.hidden_size)
        return PPOTrainer(config, policy, value, reference.requires_grad_(False), reward, tokenizer, prompts, [])

    yield make
    AcceleratorState._reset_state(reset_partial_state=True)


def sampled_vs_trained(trainer: PPOTrainer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sampled log-probs, the training forward's log-probs of the same tokens, response mask)."""
    rollout = trainer._sample(trainer.prompts_for_step(0), trainer.config.temperature)
    with torch.no_grad():
        _, trained, _ = trainer._trained_forward(rollout)
    return rollout.logprobs, trained, rollout.response_mask.bool()


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_rollout_logprobs_agree_with_the_training_forward(make_trainer, seed: int) -> None:
    # Sampled (decode loop, KV cache; in bf16 from the trainer's bf16 copy of the policy) vs recomputed (training
    # forward, autocast over the fp32 weights), |difference| over 128 tokens, measured on this model, seeds 0-4:
    # fp32 max <= 1.7e-6; bf16 max 0.047-0.057, mean 0.0042-0.0066 (sampling under autocast over the fp32 weights
    # instead: max 0.004-0.030, mean 0.9e-4-2.9e-4; the bf16 copy also rounds the norms' weights). SmolLM2-135M-
    # Instruct, 8 prompts x 24 tokens at T 0.7, under autocast: fp32 max 2e-5; bf16 max 0.33, mean 0.036 (so the
    # trainer takes the old log-probs from the training forward in bf16).
    sampled, trained_bf16, mask = sampled_vs_trained(make_trainer(bf16=True, seed=seed))
    gap = (trained_bf16 - sampled)[mask].abs()
    assert gap.max() < 0.1 and gap.mean() < 0.01, (gap.max(), gap.mean())
    # in fp32 the two agree to rounding: the bf16 gap above is bf16's (autocast was really on)
    sampled, trained_fp32, mask = sampled_vs_trained(make_trainer(bf16=False, seed=seed))
    fp32_gap = (trained_fp32 - sampled)[mask].abs()
    assert fp32_gap.max() < 1e-4, fp32_gap.max()
    assert gap.mean() > 10 * fp32_gap.mean()


def test_bf16_samples_and_trains_on_one_distribution_without_pad(make_trainer) -> None:
    trainer = make_trainer(bf16=True)
    pad = trainer.tokenizer.pad_token_id
    # the trained policy and the bf16 copy rollouts sample from, both made to prefer pad
    with favouring(trainer._unwrapped().policy, pad, 50.0), favouring(trainer.rollout_copy, pad, 50.0):
        rollout = trainer._sample(trainer.prompts_for_step(0), 1.0)
        with torch.no_grad():
            logits, trained, _ = trainer._trained_forward(rollout)
    mask = rollout.response_mask.bool()
    assert pad not in rollout.response_ids[mask].tolist()
    assert torch.equal(rollout.response_mask, rollout.response_mask.cummin(1).values)  # no hole in the mask
    assert logits.dtype == trained.dtype == torch.float32  # log-softmax over fp32 logits
    assert (logits[..., pad] == torch.finfo(torch.float32).min).all()  # pad impossible in training too
    assert (trained - rollout.logprobs)[mask].abs().max() < 0.1


def test_bf16_old_logprobs_are_the_training_forwards(make_trainer) -> None:
    # The first epoch's ratio starts at 1: the old log-probs come from the experience forward, not the sampler.
    trainer = make_trainer(bf16=True)
    rollout = trainer._sample(trainer.prompts_for_step(0), trainer.config.temperature)
    batch = trainer.experience(rollout)
    with torch.no_grad():
        _, trained, values = trainer._trained_forward(rollout)
    mask = batch["mask"].bool()
    torch.testing.assert_close(batch["logprobs"][mask], trained[mask], rtol=0, atol=1e-6)
    assert not torch.equal(batch["logprobs"][mask], rollout.logprobs[mask])
    assert values.dtype == torch.float32 and batch["values"].dtype == torch.float32


def test_bf16_cli_run_keeps_fp32_master_weights_and_optimizer_state(run_cli, tiny_model, tmp_path) -> None:
    out = tmp_path / "bf16"
    flags = ["--config", PPO_TINY, "--model_name_or_path", tiny_model, "--output_dir", out, "--report_to", "none"]
    flags += ["--precision", "bf16", "--max_steps", 1, "--save_steps", 1, "--eval_prompts", 0]
    flags += ["--shared_backbone", "true", "--reward_function", "tests.reward_fns:short_answers"]
    result = run_cli("pipelines.ppo", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"]["precision"] == "bf16"
    assert "precision: bf16" in result.stderr  # said once, with the reason
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.float32}
    head = load_file(out / "value_head.safetensors")
    assert head["score.weight"].shape == (1, 64) and head["score.weight"].dtype == torch.float32
    assert not (out / "value_model").exists()  # the value head rides on the policy: no second model
    optimizer = torch.load(out / "checkpoint-1" / "optimizer.bin", weights_only=False)
    moments = [t for state in optimizer["state"].values() for k, t in state.items() if k.startswith("exp_avg")]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_lora_policy_is_referenced_by_its_own_base(run_cli, tiny_model, tmp_path) -> None:
    # No reference model is loaded: the reference forward is the policy's with the adapters off. LoRA's B starts
    # at 0, so the first update's policy is its base exactly (KL 0); after it the adapters moved (KL > 0).
    out = tmp_path / "lora"
    flags = ["--config", PPO_TINY, "--model_name_or_path", tiny_model, "--output_dir", out, "--report_to", "none"]
    flags += ["--max_steps", 2, "--save_strategy", "no", "--eval_prompts", 0, "--shared_backbone", "true"]
    flags += ["--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", 1e-2]
    flags += ["--reward_function", "tests.reward_fns:short_answers"]
    result = run_cli("pipelines.ppo", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kl = [row["objective/kl_k1"] for row in rows if "objective/kl_k1" in row]
    assert abs(kl[0]) < 1e-6 and abs(kl[1]) > 1e-4, kl
    assert (out / "adapter_config.json").is_file() and (out / "value_head.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # the adapters folded into the base
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(merged.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_bf16_rollouts_sample_from_a_bf16_copy_of_the_current_weights(make_trainer) -> None:
    assert make_trainer(bf16=False).rollout_copy is None  # fp32 samples from the trained module itself
    trainer = make_trainer(bf16=True)
    trained = trainer._unwrapped().policy
    with torch.no_grad():
        for parameter in trained.parameters():  # an update's worth of change, which the next rollout must see
            parameter.add_(torch.randn_like(parameter) * 0.01)
    with trainer._sampling_policy() as sampler:
        assert sampler is trainer.rollout_copy
        pairs = list(zip(sampler.parameters(), trained.parameters(), strict=True))
        assert {copy.dtype for copy, _ in pairs} == {torch.bfloat16}
        for copy, weight in pairs:
            assert torch.equal(copy, weight.to(torch.bfloat16))

    lean = make_trainer(bf16=True, bf16_rollout_copy=False)  # for less memory: the trained module, under autocast
    assert lean.rollout_copy is None
    with lean._sampling_policy() as sampler:
        assert sampler is lean._unwrapped().policy
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
