"""`decode`, the sampling loop behind evaluation and PPO rollouts, against transformers' `generate`.

SmolLM2 (built by the set-up) rather than the random tiny model: its greedy answers vary token by
token, so an eos can be planted mid-answer; three short prompts keep the file to seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.eval.generation import decode

SMOLLM2 = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m-instruct"
PROMPTS = ["SELECT name FROM", "How many orders were placed in total last year by customers?", "Hi"]


@pytest.fixture(scope="module")
def model_and_batch():
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    return model, tokenizer, batch


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
    got = decode(model, batch["input_ids"], batch["attention_mask"], 10, None, tokenizer.eos_token_id, 0)
    assert torch.equal(got, expected)


def test_finished_rows_leave_the_batch_and_the_others_are_unchanged(model_and_batch) -> None:
    """Make a later greedy token of row 0 the eos: that row stops there and pads, the others match generate."""
    model, tokenizer, batch = model_and_batch
    free = reference(model, tokenizer, batch, 10, tokenizer.eos_token_id)
    row = free[0].tolist()
    stop = next(k for k in range(1, len(row)) if row[k] not in row[:k])
    eos = row[stop]
    expected = reference(model, tokenizer, batch, 10, eos)
    got = decode(model, batch["input_ids"], batch["attention_mask"], 10, None, eos, tokenizer.pad_token_id)
    assert got[0, : stop + 1].tolist() == row[: stop + 1]
    assert (got[0, stop + 1 :] == tokenizer.pad_token_id).all()
    width = min(got.shape[1], expected.shape[1])
    assert torch.equal(got[:, :width], expected[:, :width])


def test_sampling_is_seeded_and_respects_the_limit(model_and_batch) -> None:
    model, tokenizer, batch = model_and_batch
    args = (batch["input_ids"], batch["attention_mask"], 7, 0.7, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(3)
    first = decode(model, *args)
    torch.manual_seed(3)
    assert torch.equal(decode(model, *args), first)
    assert first.shape == (len(PROMPTS), 7)
