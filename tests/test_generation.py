"""`decode`, the sampling loop behind evaluation and PPO rollouts, against transformers' `generate`;
the shared-prefix forward against a plain one; sampled log-probs against PPO's training forward.

SmolLM2 (built by the set-up) rather than the random tiny model: its greedy answers vary token by
token, so an eos can be planted mid-answer; a few short prompts keep the file to seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.ppo.rollout import forward, sample
from pipelines.runner.decoding import (
    NgramDrafter,
    decode,
    drop_prefix,
    forward_sharing_prefix,
    positions_from_mask,
    render_prompts,
    shared_prefix_length,
)

SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct"
PROMPTS = ["SELECT name FROM", "How many orders were placed in total last year by customers?", "Hi"]
QUESTIONS = ["Which products cost less than 50?", "How many customers live in Paris?", "List all orders."]
CHATS = [[{"role": "user", "content": q}] for q in QUESTIONS]  # the chat template adds a shared system prompt


@pytest.fixture(scope="module")
def model_and_batch():
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return model, tokenizer, batch


@pytest.fixture(scope="module")
def chat_batch(model_and_batch):
    _, tokenizer, _ = model_and_batch
    return tokenizer(render_prompts(tokenizer, CHATS), return_tensors="pt", padding=True, add_special_tokens=False)


def reference(model, tokenizer, batch, max_new_tokens: int, eos_id: int) -> torch.Tensor:
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_id,
    )
    return output[:, batch["input_ids"].shape[1] :]


def test_greedy_decode_matches_generate_on_left_padded_prompts(model_and_batch) -> None:
    model, tokenizer, batch = model_and_batch
    expected = reference(model, tokenizer, batch, 10, tokenizer.eos_token_id)
    got = decode(model, batch["input_ids"], batch["attention_mask"], 10, None, tokenizer.eos_token_id, 0).tokens
    assert torch.equal(got, expected)


def test_bf16_weights_decode_like_fp32_with_fp32_log_probs(model_and_batch, chat_batch) -> None:
    """Eval and generate load bf16 weights under `precision: bf16`: the decode loop runs them as they are
    (left padding, shared chat prefix), returns fp32 log-probs, and answers as the fp32 model does.

    Measured on these 3 chat prompts x 8 greedy tokens (AVX512-BF16): all 24 tokens equal to fp32's,
    log-probs within 0.067; bf16 rounding may flip a near-tie, so a token or two may differ elsewhere.
    """
    model, tokenizer, _ = model_and_batch
    bf16 = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.bfloat16).eval()
    ids, mask = chat_batch["input_ids"], chat_batch["attention_mask"]
    args = (ids, mask, 8, None, tokenizer.eos_token_id, tokenizer.pad_token_id)
    fp32, half = decode(model, *args), decode(bf16, *args)
    assert half.logprobs.dtype == torch.float32
    assert half.tokens.shape == fp32.tokens.shape
    same = half.tokens == fp32.tokens
    assert same.float().mean() >= 0.9, (half.tokens, fp32.tokens)
    assert (half.logprobs - fp32.logprobs)[same].abs().max() < 0.2


def test_finished_rows_leave_the_batch_and_the_others_are_unchanged(model_and_batch) -> None:
    """Make a later greedy token of row 0 the eos: that row stops there and pads, the others match generate."""
    model, tokenizer, batch = model_and_batch
    free = reference(model, tokenizer, batch, 10, tokenizer.eos_token_id)
    row = free[0].tolist()
    stop = next(k for k in range(1, len(row)) if row[k] not in row[:k])
    eos = row[stop]
    expected = reference(model, tokenizer, batch, 10, eos)
    got = decode(model, batch["input_ids"], batch["attention_mask"], 10, None, eos, tokenizer.pad_token_id).tokens
    assert got[0, : stop + 1].tolist() == row[: stop + 1]
    assert (got[0, stop + 1 :] == tokenizer.pad_token_id).all()
    width = min(got.shape[1], expected.shape[1])
    assert torch.equal(got[:, :width], expected[:, :width])


def test_sampling_is_seeded_and_respects_the_limit(model_and_batch) -> None:
    model, tokenizer, batch = model_and_batch
    args = (batch["input_ids"], batch["attention_mask"], 7, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(3)
    first = decode(model, *args).tokens
    torch.manual_seed(3)
    assert torch.equal(decode(model, *args).tokens, first)
    assert first.shape == (len(PROMPTS), 7)


def test_shared_prefix_length_stops_at_the_first_difference_and_leaves_each_row_a_token() -> None:
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 1]])
    mask = (ids != 0).long()
    assert shared_prefix_length(ids, mask) == 3  # 5 6 7, left padding ignored
    assert shared_prefix_length(ids[:1], mask[:1]) == 0  # one row: nothing to share
    same = torch.tensor([[0, 5, 6], [0, 5, 6]])
    assert shared_prefix_length(same, (same != 0).long()) == 1  # identical rows keep their last token


def test_drop_prefix_moves_padding_after_the_prefix_and_keeps_positions() -> None:
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9]])
    mask = (ids != 0).long()
    rest, full_mask = drop_prefix(ids, mask, 2)
    assert rest.tolist() == [[0, 0, 7, 8], [7, 9, 9, 9]]
    assert full_mask.tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
    # the tokens after the prefix keep the positions they had in their rows: 7 8 at 2 3; 7 9 9 9 at 2..5
    assert positions_from_mask(full_mask)[:, 2:][rest != 0].tolist() == [2, 3, 2, 3, 4, 5]


def test_forward_sharing_prefix_matches_a_plain_forward_in_values_and_gradients(model_and_batch, chat_batch) -> None:
    model = model_and_batch[0]
    ids, mask = chat_batch["input_ids"], chat_batch["attention_mask"]
    prefix = shared_prefix_length(ids, mask)
    assert prefix >= 20  # SmolLM2's system prompt
    weight = model.model.layers[0].self_attn.q_proj.weight
    outputs, grads = [], []
    for length in (0, prefix):
        model.zero_grad()
        logits = forward_sharing_prefix(model, ids, mask, length, logits_to_keep=4).logits
        logits.square().mean().backward()
        outputs.append(logits.detach())
        grads.append(weight.grad.clone())
    model.zero_grad()
    assert torch.allclose(outputs[1], outputs[0], atol=2e-4)
    assert (grads[1] - grads[0]).norm() < 1e-4 * grads[0].norm()


def test_gradient_checkpointing_falls_back_to_a_plain_forward(tiny_model) -> None:
    """Checkpointed layers drop `past_key_values`: sharing there would silently lose the prefix."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.tensor([[0, 5, 6, 7, 8], [5, 6, 7, 9, 10]])
    mask = (ids != 0).long()
    plain = forward_sharing_prefix(model, ids, mask, 0, logits_to_keep=2).logits
    model.gradient_checkpointing_enable()
    model.train()
    shared = forward_sharing_prefix(model, ids, mask, 3, logits_to_keep=2).logits
    assert torch.allclose(shared, plain, atol=1e-5)


def test_greedy_decode_with_a_shared_chat_prefix_matches_generate(model_and_batch, chat_batch) -> None:
    model, tokenizer, _ = model_and_batch
    expected = reference(model, tokenizer, chat_batch, 12, tokenizer.eos_token_id)
    got = decode(model, chat_batch["input_ids"], chat_batch["attention_mask"], 12, None, tokenizer.eos_token_id, 0)
    width = min(got.tokens.shape[1], expected.shape[1])
    assert torch.equal(got.tokens[:, :width], expected[:, :width])


@pytest.mark.parametrize("share_prefix", [True, False])
def test_sampled_logprobs_equal_the_training_forward(model_and_batch, share_prefix: bool) -> None:
    """PPO's old log-probs come from the decode loop: they must be the policy's log-probs at the same
    positions, temperature and padding as the forward the loss differentiates."""
    model, tokenizer, _ = model_and_batch
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, CHATS * 2, 16, 0.7, 4)  # two generation chunks of different widths
    mask = rollout.response_mask.bool()
    assert rollout.logprobs is not None and (rollout.logprobs[~mask] == 0).all()
    with torch.no_grad():
        trained = forward(model, rollout, 0.7, share_prefix)[1]
        part = rollout.select(torch.tensor([4, 1]))
        trained_part = forward(model, part, 0.7, share_prefix)[1]
    assert torch.allclose(trained[mask], rollout.logprobs[mask], atol=1e-4)
    assert torch.allclose(trained_part[part.response_mask.bool()], part.logprobs[part.response_mask.bool()], atol=1e-4)
    assert not torch.allclose(forward(model, rollout, 1.0)[1][mask], rollout.logprobs[mask], atol=1e-2)


def test_ngram_drafter_proposes_what_followed_the_latest_earlier_occurrence() -> None:
    drafter = NgramDrafter(order=2, history=2)
    drafter.begin([[1, 2, 3, 4, 1, 2, 5, 6]])
    (row,) = drafter.begin([[9, 1, 2]])
    assert drafter.propose(row, 3) == [5, 6]  # "1 2" last continued with 5 6 (not with 3 4)
    drafter.extend(row, [7])
    assert drafter.propose(row, 2) == []  # 7 was never seen before
    (other,) = drafter.begin([[8, 4]])
    assert drafter.propose(other, 2) == [1, 2]  # falls back to the 1-gram "4"
    drafter.begin([[0]])
    (last,) = drafter.begin([[3]])
    assert drafter.propose(last, 2) == []  # only the last `history` calls are remembered


@pytest.mark.parametrize("temperature", [None, 0.7])
def test_drafted_decoding_gives_the_same_tokens_and_logprobs(model_and_batch, chat_batch, temperature) -> None:
    """Speculative decoding keeps a drafted token only where it equals the model's own sample, so the
    answers must not change; a drafter that saw these answers before gets most drafts right."""
    model, tokenizer, _ = model_and_batch
    ids, mask = chat_batch["input_ids"], chat_batch["attention_mask"]
    args = (16, temperature, tokenizer.eos_token_id, tokenizer.pad_token_id)
    drafter = NgramDrafter()
    torch.manual_seed(1)
    plain = decode(model, ids, mask, *args)
    for _ in range(2):  # the first pass indexes the answers, the second drafts from them
        torch.manual_seed(1)
        drafted = decode(model, ids, mask, *args, drafter=drafter, draft_tokens=2)
        assert torch.equal(drafted.tokens, plain.tokens)
        assert torch.allclose(drafted.logprobs, plain.logprobs, atol=1e-4)
    assert drafter.accepted > 0.5 * drafter.drafted > 0
