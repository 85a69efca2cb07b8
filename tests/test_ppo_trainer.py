"""The PPO trainer in-process on the tiny model: gradients that do not depend on how a mini-batch is cut
into micro-batches, rollouts that never sample pad, and rewards that read a truncated answer as unfinished."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import FunctionReward, TokenRewardModel
from pipelines.ppo.rollout import Rollout, forward, response_mask, sample
from pipelines.ppo.trainer import PPOTrainer
from pipelines.runner import load_scalar_model, render_prompts, score_conversations
from tests.reward_fns import short_answers

QUESTIONS = [
    "How many customers live in Lyon?",
    "List the names of all products.",
    "What is the total of order 7?",
    "Which city has the most customers?",
    "How many orders were shipped in 2023?",
    "What is the cheapest product?",
    "Name the customers who never ordered.",
    "Count the products per category.",
]


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture
def trainer(tiny_model: Path, tmp_path: Path) -> PPOTrainer:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model)
    value = load_scalar_model(str(tiny_model), trained_head=False, pad_token_id=tokenizer.pad_token_id)
    config = PPOConfig(
        output_dir=str(tmp_path / "ppo"),
        max_steps=1,
        rollout_batch_size=8,
        per_device_train_batch_size=8,
        max_new_tokens=12,
        temperature=1.0,
        report_to=[],
        use_cpu=True,
        draft_tokens=0,
    )
    reward = FunctionReward("tests.reward_fns:short_answers", short_answers)
    prompts = [chat(q) for q in QUESTIONS]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).requires_grad_(False)
    return PPOTrainer(config, policy, value, reference, reward, tokenizer, prompts, [])


@contextlib.contextmanager
def favouring(model: torch.nn.Module, token: int, amount: float) -> Iterator[None]:
    """The random tiny model with `amount` added to one token's logit (it spreads its mass over 49k tokens)."""

    def add(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., token] += amount
        return output

    handle = model.lm_head.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def gradient(trainer: PPOTrainer, batch: dict, rows: torch.Tensor, micro: int) -> torch.Tensor:
    trainer.config.per_device_train_batch_size = micro
    trainer.optimizer.zero_grad()
    trainer.accumulate_gradients(batch, rows)
    grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
    trainer.optimizer.zero_grad()
    return torch.cat(grads)


def test_accumulated_gradient_is_the_same_for_any_split_into_micro_batches(trainer: PPOTrainer) -> None:
    # `micro_batches` groups rows of similar length: with per-micro-batch token means the short answers,
    # always together, would weigh more; normalised by the mini-batch's tokens, every split agrees.
    with favouring(trainer._unwrapped().policy, trainer.tokenizer.eos_token_id, 9.0):  # p(eos) ~ 0.15 a step
        batch = trainer.make_experience(trainer.prompts_for_step(0))
    lengths = batch["mask"].sum(1)
    assert lengths.max() > lengths.min()  # answers of different lengths: the case that used to differ
    rows = torch.arange(8)
    whole = gradient(trainer, batch, rows, 8)
    for micro in (1, 2, 3):
        torch.testing.assert_close(gradient(trainer, batch, rows, micro), whole, rtol=1e-4, atol=1e-6)


def test_rollouts_never_sample_pad_even_where_the_model_prefers_it(trainer: PPOTrainer) -> None:
    policy, tokenizer = trainer._unwrapped().policy, trainer.tokenizer
    pad = tokenizer.pad_token_id
    with favouring(policy, pad, 50.0):
        rollout = sample(policy, tokenizer, [chat(q) for q in QUESTIONS], 12, 1.0, 8)
        assert pad not in rollout.response_ids[rollout.response_mask.bool()].tolist()
        # no hole in the mask: ones up to the end of each answer, then zeros
        mask = rollout.response_mask
        assert torch.equal(mask, mask.cummin(1).values)
        assert (mask.sum(1) == 12).any()  # some answers ran to the limit (pad would have ended them)
        # the training forward scores with the same distribution the tokens were sampled from
        _, trained = forward(policy, rollout, 1.0, True, pad, tokenizer.eos_token_id)
        torch.testing.assert_close(trained * mask, rollout.logprobs, rtol=1e-4, atol=1e-4)


def rollout_of(tokenizer, question: str, answer_ids: list[int], ended: bool) -> Rollout:
    tokenizer.padding_side = "left"
    query = tokenizer(render_prompts(tokenizer, [chat(question)]), return_tensors="pt", add_special_tokens=False)
    ids = torch.tensor([answer_ids])
    mask = response_mask(ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    text = tokenizer.decode(answer_ids, skip_special_tokens=True)
    return Rollout(
        [chat(question)], query["input_ids"], query["attention_mask"], ids, mask, [text], torch.tensor([ended])
    )


def test_a_truncated_answer_is_scored_as_unfinished_text(tiny_model: Path, tmp_path: Path) -> None:
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    reward = TokenRewardModel(model, tokenizer, share_prefix=False)
    question = "How many customers live in Lyon?"
    answer = tokenizer("SELECT COUNT(*) FROM customers WHERE", add_special_tokens=False)["input_ids"]
    prompt_text = render_prompts(tokenizer, [chat(question)])[0]
    assert tokenizer.eos_token in prompt_text  # the chat-template prompt holds eos tokens of its own

    truncated = reward(rollout_of(tokenizer, question, answer, ended=False))
    as_text = score_conversations(model, tokenizer, [prompt_text + tokenizer.decode(answer)], desc=None)
    assert truncated.tolist() == pytest.approx(as_text, abs=1e-5)

    finished = reward(rollout_of(tokenizer, question, [*answer, tokenizer.eos_token_id], ended=True))
    conversation = [*chat(question), {"role": "assistant", "content": tokenizer.decode(answer)}]
    assert finished.tolist() == pytest.approx(
        score_conversations(model, tokenizer, [conversation], desc=None), abs=1e-5
    )
    assert finished.item() != pytest.approx(truncated.item(), abs=1e-4)
