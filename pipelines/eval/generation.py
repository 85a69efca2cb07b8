"""Batched generation for evaluation and rollouts.

On CPU, generation dominates evaluation time (DESIGN.md §3: batch 1 ≈ 10 tokens/s, batch 32 ≈ 74),
so prompts are sorted by length and generated in wide left-padded batches with the KV cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


@dataclasses.dataclass
class Generation:
    text: str
    num_tokens: int
    hit_eos: bool


@dataclasses.dataclass
class GenerationStats:
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Messages | str]) -> list[str]:
    """Chat prompts through the tokenizer's chat template; plain strings are kept as they are."""
    return [
        p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages | str],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    desc: str = "Generating",
) -> tuple[list[Generation], GenerationStats]:
    """Greedy (or sampled) completions of `prompts`, in input order, with a progress bar and ETA."""
    texts = render_prompts(tokenizer, prompts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    results: list[Generation | None] = [None] * len(texts)
    produced, start = 0, time.perf_counter()
    try:
        with tqdm(total=len(texts), desc=desc, unit="prompt") as bar:
            for first in range(0, len(order), batch_size):
                index = order[first : first + batch_size]
                batch = tokenizer(
                    [texts[i] for i in index],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                batch = batch.to(model.device)
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new_tokens = output[:, batch["input_ids"].shape[1] :]
                for row, i in zip(new_tokens.tolist(), index, strict=True):
                    hit_eos = tokenizer.eos_token_id in row
                    kept = row[: row.index(tokenizer.eos_token_id)] if hit_eos else row
                    kept = [t for t in kept if t != tokenizer.pad_token_id]
                    produced += len(kept) + int(hit_eos)
                    results[i] = Generation(
                        tokenizer.decode(kept, skip_special_tokens=True).strip(),
                        len(kept),
                        hit_eos,
                    )
                bar.update(len(index))
                bar.set_postfix(tok_s=f"{produced / (time.perf_counter() - start):.1f}")
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return [r for r in results if r is not None], GenerationStats(produced, time.perf_counter() - start)
