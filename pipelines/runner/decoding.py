"""The decode loop every stage shares: PPO rollouts, evaluation and `python -m pipelines.generate`.

On CPU, generation dominates evaluation and PPO time (SmolLM2-135M on 2 cores, `bench/generation.py`:
one prompt at a time is several times slower than a batch of 32), so prompts are sorted by length
and generated in wide left-padded batches with the KV cache, by `decode`: a plain sampling loop over
the model's forward that drops finished rows from the batch and its cache, and skips `generate`'s
per-step machinery (logits processors, stopping criteria, input preparation), which on this CPU
costs as much as a third of each small-batch decode step. The prompt prefix all rows of a batch
share (a chat template's system prompt) is computed once and its KV cache broadcast to every row
(`forward_sharing_prefix`), in decoding and in PPO's forwards. With an `NgramDrafter`, each decode
forward also checks a few drafted tokens a row (speculative decoding without a draft model); the
sampled tokens are the same with or without it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

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


def pick_tokens(
    logits: torch.Tensor, temperature: float | None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their log-probs) for rows of logits [N, V]: greedy with no temperature (log-probs of
    softmax(logits)); otherwise a sample from softmax(logits / temperature), no top-k/top-p.

    Sampled by inverting the CDF at one uniform number per row (`uniforms`, drawn here if not given):
    on CPU `torch.multinomial` over a 49k vocabulary takes ~20 ms a step at batch 16, this ~2 ms. A
    token is a function of its row's logits and uniform, which is what makes drafts checkable.
    """
    if temperature is None:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits.float(), -1).gather(1, tokens[:, None]).squeeze(1)
    probs = torch.softmax(logits.double() / temperature, -1)
    cdf = probs.cumsum(-1)
    if uniforms is None:
        uniforms = torch.rand(cdf.shape[0], device=cdf.device)
    draw = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, draw).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log().float()


def mask_pad(logits: torch.Tensor, pad_id: int | None, eos_id: int | None) -> torch.Tensor:
    """`logits` with the pad token made impossible (a pad distinct from eos is never a real output token).

    The decode loop samples from these and PPO's training forward scores with them, so the log-probs
    a token was sampled with and those it is trained with come from the same distribution. The most
    negative finite value, not -inf: an entropy over the logits stays finite.
    """
    if pad_id is None or pad_id == eos_id:
        return logits
    logits = logits.clone()
    logits[..., pad_id] = torch.finfo(logits.dtype).min
    return logits


class NgramDrafter:
    """Draft tokens for speculative decoding, without a draft model: what followed the latest earlier
    occurrence of the context's last n tokens (n = order, ..., 1), in the row's own prompt and answer
    or in the sequences of the last `history` decode calls (earlier batches, earlier PPO rollouts).

    Answers to templated prompts repeat (text-to-SQL: `SELECT ... FROM ... WHERE`), so drafts from
    earlier answers are often right; `acceptance` (a running mean of the share of drafted tokens that
    were right) decides whether drafting pays at full batch width. The index is rebuilt from the
    recent sequences at each call, so `state_dict` (those sequences and `acceptance`) is all a
    resumed run needs to draft exactly as the uninterrupted one.
    """

    def __init__(self, order: int = 3, history: int = 8) -> None:
        self.order, self.history = order, history
        self.recent: list[list[list[int]]] = []  # the sequences of each of the last `history` calls
        self.table: dict[tuple[int, ...], tuple[list[int], int]] = {}
        self.acceptance = 0.5
        self.drafted = self.accepted = 0  # totals, for reports

    def begin(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Index the recent sequences, then these prompts; returns the rows' sequences to `extend`."""
        self.table = {}
        for sequence in (s for call in self.recent for s in call):
            self.extend([], sequence)
        rows = []
        for prompt in prompts:
            rows.append([])
            self.extend(rows[-1], prompt)
        self.recent = [*self.recent, rows][-self.history :]
        return rows

    def extend(self, sequence: list[int], tokens: Sequence[int]) -> None:
        for token in tokens:
            sequence.append(token)
            end = len(sequence) - 1  # the n-grams ending just before the new token continue with it
            for n in range(1, min(self.order, end) + 1):
                self.table[tuple(sequence[end - n : end])] = (sequence, end)

    def propose(self, sequence: list[int], count: int) -> list[int]:
        for n in range(min(self.order, len(sequence)), 0, -1):
            hit = self.table.get(tuple(sequence[-n:]))
            if hit is not None and (draft := hit[0][hit[1] : hit[1] + count]):
                return draft
        return []

    def record(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.acceptance = 0.95 * self.acceptance + 0.05 * accepted / drafted
            self.drafted, self.accepted = self.drafted + drafted, self.accepted + accepted

    def state_dict(self) -> dict[str, Any]:
        return {"recent": self.recent, "acceptance": self.acceptance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent, self.acceptance = state["recent"], float(state["acceptance"])


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

    def drop_last(self, count: int) -> None:
        """Forget the last `count` positions (rejected drafts); the next update overwrites them."""
        self.length -= count
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
    rest_ids, full_mask = drop_prefix(input_ids, attention_mask, prefix_length)
    inputs: dict[str, torch.Tensor] = {"input_ids": prefix}
    rest: dict[str, torch.Tensor] = {"input_ids": rest_ids}
    if torch.is_grad_enabled():  # one embedding lookup: its backward writes a vocabulary-sized gradient
        vectors = model.get_input_embeddings()(torch.cat([prefix.flatten(), rest_ids.flatten()]))
        inputs = {"inputs_embeds": vectors[:prefix_length][None]}
        rest = {"inputs_embeds": vectors[prefix_length:].view(*rest_ids.shape, -1)}
    model(
        **inputs,
        attention_mask=torch.ones_like(prefix),
        position_ids=torch.arange(prefix_length, device=prefix.device)[None],
        past_key_values=cache,
        **({"logits_to_keep": 1} if "logits_to_keep" in kwargs else {}),
    )
    cache.batch_repeat_interleave(len(input_ids))
    positions = positions_from_mask(full_mask)[:, prefix_length:]
    return model(**rest, attention_mask=full_mask, position_ids=positions, past_key_values=cache, **kwargs)


# Drafting pays at any width once most drafts are right; with few rows left a forward costs about the
# same for one token a row or a few (it reads the weights once either way), so it is tried there anyway.
DRAFT_ACCEPTANCE = 0.3
DRAFT_BELOW_ROWS = 6


def decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    eos_id: int,
    pad_id: int,
    drafter: NgramDrafter | None = None,
    draft_tokens: int = 2,
    generator: torch.Generator | None = None,
) -> Decoded:
    """New tokens [B, <= max_new_tokens] for left-padded prompts (eos ends a row, padding after it),
    with the log-prob each was drawn with: PPO's old log-probs need no second forward.

    The pad token is never produced (its logit is masked, see `mask_pad`): a sampled pad would read as
    padding inside an answer. Samples draw their uniform numbers from `generator` (default: torch's
    global one): PPO gives each process its own, so ranks never answer the same prompt alike.

    Finished rows leave the batch (and the KV cache), so the last long answers do not drag the
    whole batch along. Positions come from the attention mask, as in training. With a `drafter`,
    each forward also checks up to `draft_tokens` drafted tokens a row (speculative decoding): every
    position is still sampled from the model's own distribution with its own uniform number, and
    a draft is kept only where it equals that sample, so the tokens do not depend on the drafts.
    Runs in inference mode; the results are normal tensors, usable as inputs to a training forward.
    """
    with torch.inference_mode():
        tokens, logprobs = _decode(
            model,
            input_ids,
            attention_mask,
            max_new_tokens,
            temperature,
            eos_id,
            pad_id,
            drafter,
            draft_tokens,
            generator,
        )
    return Decoded(tokens.clone(), logprobs.clone())


def _decode(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    eos_id: int,
    pad_id: int,
    drafter: NgramDrafter | None,
    draft_tokens: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, device = input_ids.shape[0], input_ids.device
    out = torch.full((batch, max_new_tokens), pad_id, dtype=input_ids.dtype, device=device)
    out_logprobs = torch.zeros(batch, max_new_tokens, device=device)
    if max_new_tokens <= 0 or batch == 0:
        return out[:, :0], out_logprobs[:, :0]
    # One uniform number per (row, answer position), whatever step samples it.
    uniforms = (
        torch.rand(batch, max_new_tokens, device=device, generator=generator) if temperature is not None else None
    )
    rows = torch.arange(batch, device=device)  # row of `out` for each live batch entry
    produced = torch.zeros(batch, dtype=torch.long, device=device)
    next_position = positions_from_mask(attention_mask)[:, -1:] + 1  # where the next input token sits
    prefix_length = shared_prefix_length(input_ids, attention_mask)
    draft_tokens = draft_tokens if drafter is not None else 0
    cache = buffered_cache(model, input_ids.shape[1] + max_new_tokens * (1 + draft_tokens))
    if not all(isinstance(layer, _BufferLayer) for layer in cache.layers):
        draft_tokens = 0  # rejected drafts are cropped from the cache: only plain layers can
    sequences = (
        drafter.begin([row[keep.bool()].tolist() for row, keep in zip(input_ids, attention_mask, strict=True)])
        if drafter is not None and draft_tokens
        else []
    )
    logits = forward_sharing_prefix(
        model, input_ids, attention_mask, prefix_length, past_key_values=cache, use_cache=True, logits_to_keep=1
    ).logits
    if prefix_length:  # the cache now holds the prefix first, then each row's padding and the rest
        attention_mask = drop_prefix(input_ids, attention_mask, prefix_length)[1]
    drafts = torch.empty(batch, 0, dtype=input_ids.dtype, device=device)
    after_prefill = True
    while True:
        # logits [R, 1 + D, V]: column c predicts answer position produced + c; input column c + 1 was draft c
        live, width = logits.shape[:2]
        columns = torch.arange(width, device=device)
        at = produced[rows][:, None] + columns  # answer position of each column's token
        picked = uniforms[rows[:, None], at.clamp(max=max_new_tokens - 1)].reshape(-1) if uniforms is not None else None
        tokens, logprobs = pick_tokens(mask_pad(logits, pad_id, eos_id).reshape(live * width, -1), temperature, picked)
        tokens, logprobs = tokens.view(live, width), logprobs.view(live, width)
        accepted = (tokens[:, :-1] == drafts).long().cumprod(1).sum(1)
        is_eos = (tokens == eos_id) & (columns <= accepted[:, None])
        count = torch.where(is_eos.any(1), is_eos.long().argmax(1), accepted) + 1  # tokens this row keeps
        kept = columns < count[:, None]
        target = (rows[:, None].expand(-1, width)[kept], at[kept])
        out[target], out_logprobs[target] = tokens[kept], logprobs[kept]
        produced[rows] += count
        if sequences:
            drafter.record(int((drafts >= 0).sum()), int(accepted.sum()))
            for row, row_tokens, n in zip(rows.tolist(), tokens.tolist(), count.tolist(), strict=True):
                drafter.extend(sequences[row], row_tokens[:n])
        if not after_prefill:  # keep the cache entries of the input token and the accepted drafts only
            attention_mask[:, -width:] = kept.long()
            surplus = width - int(count.max())
            if surplus:
                for layer in cache.layers:
                    layer.drop_last(surplus)
                attention_mask = attention_mask[:, :-surplus]
            next_position = next_position + count[:, None]
        after_prefill = False
        ended = is_eos.any(1) | (produced[rows] >= max_new_tokens)
        if ended.all():
            break
        last = tokens.gather(1, (count - 1)[:, None])
        if ended.any():
            keep = (~ended).nonzero().squeeze(-1)
            rows, last, next_position, attention_mask = (
                rows[keep],
                last[keep],
                next_position[keep],
                attention_mask[keep],
            )
            for layer in cache.layers:
                layer.batch_select_indices(keep)
        drafts = _propose(drafter, sequences, rows, produced, max_new_tokens, draft_tokens)
        inputs = torch.cat([last, torch.where(drafts >= 0, drafts, pad_id)], 1)
        attention_mask = torch.cat([attention_mask, torch.cat([torch.ones_like(last), (drafts >= 0).long()], 1)], 1)
        logits = model(
            input_ids=inputs,
            attention_mask=attention_mask,
            position_ids=next_position + torch.arange(inputs.shape[1], device=device),
            past_key_values=cache,
            use_cache=True,
        ).logits
    steps = int(produced.max())
    return out[:, :steps], out_logprobs[:, :steps]


def _propose(
    drafter: NgramDrafter | None,
    sequences: list[list[int]],
    rows: torch.Tensor,
    produced: torch.Tensor,
    max_new_tokens: int,
    draft_tokens: int,
) -> torch.Tensor:
    """Drafts [R, D] for the live rows, -1 where a row has fewer; none while drafting does not pay."""
    if drafter is None or not sequences or (len(rows) > DRAFT_BELOW_ROWS and drafter.acceptance < DRAFT_ACCEPTANCE):
        return torch.empty(len(rows), 0, dtype=torch.long, device=rows.device)
    budget = (max_new_tokens - 1 - produced[rows]).clamp(max=draft_tokens).tolist()
    proposed = [
        drafter.propose(sequences[row], n) if n > 0 else [] for row, n in zip(rows.tolist(), budget, strict=True)
    ]
    width = max(map(len, proposed))
    return torch.tensor([p + [-1] * (width - len(p)) for p in proposed], dtype=torch.long, device=rows.device)


@torch.no_grad()
def generate_texts(
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
    drafter = NgramDrafter()  # later batches draft from the answers of earlier ones
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
                    drafter,
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
