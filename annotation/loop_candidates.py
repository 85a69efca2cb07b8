"""A loop round's candidates: the current policy samples K distinct answers per prompt, the current
reward model scores them. Both run in-process on the runner's public API (its decode loop and its
one-output model loading and scoring), so a sampled answer and a score mean what they mean in PPO.

Sampling is temperature + nucleus (top-p): the runner's decode loop samples from softmax(logits / T)
over the whole vocabulary, so `top_p_filter` masks the logits outside the top-p set (computed at the
same temperature) as the model's output layer produces them; every token is still drawn by the decode
loop. Identical answers to one prompt are merged; a prompt with fewer than K distinct answers is
sampled again (up to `max_draws` passes), then left out of the round: Argilla's ranking question has a
fixed number of candidates, and a prompt the policy always answers alike has nothing to compare.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from trl import ModelConfig

from pipelines.runner import (
    Messages,
    Precision,
    generate_texts,
    load_model,
    load_scalar_model,
    load_tokenizer,
    score_conversations,
)


def nucleus(logits: torch.Tensor, top_p: float, temperature: float) -> torch.Tensor:
    """`logits` with every token outside the smallest set whose probability at `temperature` reaches
    `top_p` set to the dtype's minimum (the most likely token always stays)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # probability mass ranked above each token
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, torch.finfo(logits.dtype).min)


@contextmanager
def top_p_filter(model: Any, top_p: float, temperature: float) -> Iterator[None]:
    """While open, the model's output layer returns nucleus-filtered logits (no-op for top_p >= 1)."""
    if top_p >= 1.0:
        yield
        return
    handle = model.get_output_embeddings().register_forward_hook(
        lambda _module, _inputs, logits: nucleus(logits, top_p, temperature)
    )
    try:
        yield
    finally:
        handle.remove()


def sample_candidates(
    policy: str,
    prompts: Sequence[Messages],
    count: int,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    max_draws: int,
    batch_size: int,
    seed: int,
    precision: Precision,
) -> list[list[str]]:
    """Up to `count` distinct non-empty answers per prompt, in the order they were drawn."""
    tokenizer = load_tokenizer(policy)
    model = load_model(policy, ModelConfig(), precision.bf16)
    torch.manual_seed(seed)
    distinct: list[list[str]] = [[] for _ in prompts]
    with top_p_filter(model, top_p, temperature):
        for draw in range(1, max_draws + 1):
            short = [i for i, found in enumerate(distinct) if len(found) < count]
            if not short:
                break
            generations, _ = generate_texts(
                model,
                tokenizer,
                [prompts[i] for i in short for _ in range(count)],
                max_new_tokens,
                batch_size,
                do_sample=True,
                temperature=temperature,
                desc=f"Sampling {count} answers per prompt (pass {draw}/{max_draws})",
            )
            for position, i in enumerate(short):
                for generation in generations[position * count : (position + 1) * count]:
                    if generation.text and generation.text not in distinct[i] and len(distinct[i]) < count:
                        distinct[i].append(generation.text)
    return distinct


def score_candidates(
    reward_model: str,
    prompts: Sequence[Messages],
    candidates: Sequence[Sequence[str]],
    batch_size: int,
    precision: Precision,
) -> list[list[float]]:
    """The reward model's score of each candidate as the answer to its prompt."""
    tokenizer = load_tokenizer(reward_model)
    model = load_scalar_model(reward_model, None, precision.bf16, trained_head=True)
    conversations = [
        [*prompt, {"role": "assistant", "content": text}]
        for prompt, texts in zip(prompts, candidates, strict=True)
        for text in texts
    ]
    flat = score_conversations(model, tokenizer, conversations, batch_size, desc="Scoring candidates")
    scores, start = [], 0
    for texts in candidates:
        scores.append(flat[start : start + len(texts)])
        start += len(texts)
    return scores
