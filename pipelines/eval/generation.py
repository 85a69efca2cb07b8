"""Batched generation for evaluation and rollouts.

On CPU, generation dominates evaluation time (DESIGN.md §3: batch 1 ≈ 10 tokens/s, batch 32 ≈ 74),
so prompts are sorted by length and generated in wide left-padded batches with the KV cache, by
`decode`: a plain sampling loop over the model's forward that drops finished rows from the batch
and its cache, and skips `generate`'s per-step machinery (logits processors, stopping criteria,
input preparation), which on this CPU costs as much as a third of each small-batch decode step.
The prompt prefix all rows of a batch share (a chat template's system prompt) is computed once and
its KV cache broadcast to every row (`forward_sharing_prefix`), in decoding and in PPO's forwards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

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


class Decoded(NamedTuple):
    tokens: torch.Tensor  # [B, T] new tokens, pad after eos
    logprobs: torch.Tensor  # [B, T] log-prob of each token under softmax(logits / temperature); 0 on padding


def pick_tokens(logits: torch.Tensor, temperature: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their log-probs): greedy with no temperature (log-probs of softmax(logits)); otherwise
    a sample from softmax(logits / temperature), no top-k/top-p.

    Sampled by inverting the CDF with one uniform number per row: on CPU `torch.multinomial` over a
    49k vocabulary takes ~20 ms a step at batch 16, this ~2 ms.
    """
    if temperature is None:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(1, tokens[:, None]).squeeze(1)
    probs = torch.softmax(logits.double() / temperature, -1)
    cdf = probs.cumsum(-1)
    draw = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, draw).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log().float()


class _BufferLayer(DynamicLayer):
    """A KV-cache layer that writes into a buffer sized for prompt + answer instead of re-concatenating
    the whole cache at every step (a sixth of a decode step at batch 16 here)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads, _, dim = key_states.shape
            self.key_buffer = key_states.new_empty(batch, heads, self.capacity, dim)
            self.value_buffer = value_states.new_empty(batch, heads, self.capacity, dim)
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, 0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, 0)
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


def buffered_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """The model's dynamic cache with its plain (full-attention) layers writing into fixed buffers."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_BufferLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding, wherever it is (0 on padding before the first token)."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """How many leading tokens all (left-padded) rows share, leaving every row at least its last token.

    0 for a single row: sharing saves nothing there.
    """
    lengths = attention_mask.sum(1)
    limit = int(lengths.min()) - 1 if len(lengths) > 1 else 0
    if limit <= 0:
        return 0
    columns = attention_mask.argmax(1, keepdim=True) + torch.arange(limit, device=input_ids.device)
    heads = input_ids.gather(1, columns)
    same = (heads == heads[:1]).all(0) & attention_mask.gather(1, columns).bool().all(0)
    return int(same.long().cumprod(0).sum())


def drop_prefix(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows without their first `length` real tokens, the attention mask of prefix + those rows).

    Row i's padding moves from before the prefix to after it; the mask keeps it out of attention, so
    each remaining token sees the same tokens at the same positions as in the unsplit row.
    """
    starts = attention_mask.argmax(1, keepdim=True)
    columns = torch.arange(input_ids.shape[1] - length, device=input_ids.device).expand(len(input_ids), -1)
    source = columns + length * (columns >= starts)
    rest_mask = attention_mask.gather(1, source)
    return input_ids.gather(1, source), torch.cat([rest_mask.new_ones(len(rest_mask), length), rest_mask], 1)


def _checkpointing(model: torch.nn.Module) -> bool:
    """Gradient checkpointing in training drops `past_key_values` inside the layers (transformers 5)."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def forward_sharing_prefix(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prefix_length: int,
    past_key_values: Cache | None = None,
    **kwargs,
):
    """`model(...)` on left-padded rows whose first `prefix_length` tokens are the same in all of them:
    the prefix goes through the model once, at batch 1, and its KV cache is repeated for every row.

    The output covers the positions after the prefix, so its last positions line up with a plain
    forward's (use `logits_to_keep` or index from the end). The same values up to float rounding, and
    gradients flow through the shared prefix; on SmolLM2's chat template with short questions the
    system prompt is a third of a rollout sequence. Falls back to a plain forward when there is no
    prefix or gradient checkpointing is on.
    """
    if prefix_length <= 0 or _checkpointing(model):
        positions = positions_from_mask(attention_mask)
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=past_key_values,
            **kwargs,
        )
    cache = past_key_values if past_key_values is not None else DynamicCache(config=model.config)
    start = int(attention_mask[0].argmax())
    prefix = input_ids[:1, start : start + prefix_length]
    prefix_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in kwargs else {}
    model(
        input_ids=prefix,
        attention_mask=torch.ones_like(prefix),
        position_ids=torch.arange(prefix_length, device=prefix.device)[None],
        past_key_values=cache,
        **prefix_kwargs,
    )
    cache.batch_repeat_interleave(len(input_ids))
    rest_ids, full_mask = drop_prefix(input_ids, attention_mask, prefix_length)
    positions = positions_from_mask(full_mask)[:, prefix_length:]
    return model(input_ids=rest_ids, attention_mask=full_mask, position_ids=positions, past_key_values=cache, **kwargs)


def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    eos_id: int,
    pad_id: int,
) -> Decoded:
    """New tokens [B, <= max_new_tokens] for left-padded prompts (eos ends a row, padding after it),
    with the log-prob each was drawn with: PPO's old log-probs need no second forward.

    Finished rows leave the batch (and the KV cache), so the last long answers do not drag the
    whole batch along. Positions come from the attention mask, as in training. Runs in inference
    mode; the results are normal tensors, usable as inputs to a training forward.
    """
    with torch.inference_mode():
        tokens, logprobs = _decode(model, input_ids, attention_mask, max_new_tokens, temperature, eos_id, pad_id)
    return Decoded(tokens.clone(), logprobs.clone())


def _decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    eos_id: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = input_ids.shape[0]
    out = torch.full((batch, max_new_tokens), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    out_logprobs = torch.zeros(batch, max_new_tokens, device=input_ids.device)
    if max_new_tokens <= 0 or batch == 0:
        return out[:, :0], out_logprobs[:, :0]
    rows = torch.arange(batch, device=input_ids.device)  # row of `out` for each live batch entry
    next_position = positions_from_mask(attention_mask)[:, -1:] + 1
    prefix_length = shared_prefix_length(input_ids, attention_mask)
    cache = buffered_cache(model, input_ids.shape[1] + max_new_tokens)
    logits = forward_sharing_prefix(
        model, input_ids, attention_mask, prefix_length, past_key_values=cache, use_cache=True, logits_to_keep=1
    ).logits[:, -1]
    if prefix_length:  # the cache now holds the prefix first, then each row's padding and the rest
        attention_mask = drop_prefix(input_ids, attention_mask, prefix_length)[1]
    steps = 0
    for step in range(max_new_tokens):
        tokens, logprobs = pick_tokens(logits, temperature)
        out[rows, step], out_logprobs[rows, step] = tokens, logprobs
        steps = step + 1
        live = tokens != eos_id
        if not live.any() or steps == max_new_tokens:
            break
        if not live.all():
            keep = live.nonzero().squeeze(-1)
            rows, tokens, next_position = rows[keep], tokens[keep], next_position[keep]
            attention_mask = attention_mask[keep]
            for layer in cache.layers:
                layer.batch_select_indices(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], 1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        next_position = next_position + 1
    return out[:, :steps], out_logprobs[:, :steps]


@torch.no_grad()
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
                new_tokens, _ = decode(
                    model,
                    batch["input_ids"],
                    batch["attention_mask"],
                    max_new_tokens,
                    temperature if do_sample else None,
                    tokenizer.eos_token_id,
                    tokenizer.pad_token_id,
                )
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
