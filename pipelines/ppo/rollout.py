"""Rollouts: sample responses in wide left-padded batches, then score them token by token.

The policy and the value head see `query + response` with left-padded queries and right-padded
responses; position ids come from the attention mask so padding never shifts positions. With
`share_prefix`, the prompt prefix all rows of a micro-batch share (the chat template's system prompt)
is computed once and broadcast (`forward_sharing_prefix`): the same numbers for less compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import selective_log_softmax

from pipelines.runner import (
    Messages,
    NgramDrafter,
    decode,
    forward_sharing_prefix,
    mask_pad,
    render_prompts,
    shared_prefix_length,
)


@dataclasses.dataclass
class Rollout:
    prompts: list[Messages]
    query_ids: torch.Tensor  # [B, Q] left-padded
    query_mask: torch.Tensor
    response_ids: torch.Tensor  # [B, R] pad after the end
    response_mask: torch.Tensor  # 1 on response tokens up to and including eos
    texts: list[str]
    ended: torch.Tensor  # [B] bool: eos or a stop string before max_new_tokens
    # [B, R] log-probs the response tokens were sampled with (softmax(logits / temperature)), when the
    # decode loop sampled them; None after `generate` (stop strings)
    logprobs: torch.Tensor | None = None

    @property
    def sequence_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def sequence_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)

    def select(self, index: torch.Tensor) -> Rollout:
        """These rows, without the columns that are padding in all of them (leading query padding,
        trailing response padding): a micro-batch of short answers is computed at its own width."""
        rows = index.tolist()
        query_mask, response_mask = self.query_mask[index], self.response_mask[index]
        first = int(query_mask.any(0).float().argmax()) if len(rows) else 0
        width = int(response_mask.any(0).nonzero().max()) + 1 if response_mask.any() else 1
        return Rollout(
            [self.prompts[i] for i in rows],
            self.query_ids[index][:, first:],
            query_mask[:, first:],
            self.response_ids[index][:, :width],
            response_mask[:, :width],
            [self.texts[i] for i in rows],
            self.ended[index],
            self.logprobs[index][:, :width] if self.logprobs is not None else None,
        )

    def prefix_length(self, share_prefix: bool) -> int:
        """Leading query tokens all rows share (0 unless `share_prefix`): computed once in a forward."""
        return shared_prefix_length(self.query_ids, self.query_mask) if share_prefix else 0

    def lengths(self) -> torch.Tensor:
        return self.query_mask.sum(1) + self.response_mask.sum(1)


def micro_batches(rollout: Rollout, index: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`index` split into micro-batches of rows of similar length (less padding to compute on).

    The grouping does not change the accumulated gradient because the trainer divides every micro-batch's
    token losses by the whole mini-batch's token count (not by the micro-batch's own)."""
    ordered = index[torch.argsort(rollout.lengths()[index], stable=True)]
    return list(ordered.split(size))


def response_mask(response_ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 up to and including the first eos; 0 after it and on padding."""
    is_eos = response_ids == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return ((~after_eos) & (response_ids != pad_id)).long()


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    max_new_tokens: int,
    temperature: float | None,
    batch_size: int,
    stop_strings: list[str] | None = None,
    drafter: NgramDrafter | None = None,
    draft_tokens: int = 2,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample (or, with temperature None, greedily decode) one response per prompt; a `drafter`
    (kept across rollouts) speeds decoding up without changing the samples; the uniform numbers come
    from `generator`. The pad token is never sampled, so the response mask has no holes."""
    texts = render_prompts(tokenizer, prompts)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        queries = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    finally:
        tokenizer.padding_side = padding_side
    chunks, logprob_chunks = [], []
    for first in range(0, len(texts), batch_size):
        ids, mask = (
            queries["input_ids"][first : first + batch_size],
            queries["attention_mask"][first : first + batch_size],
        )
        if stop_strings:  # generate's stop-string matcher works on token ids, across token boundaries
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=temperature is not None,
                temperature=temperature,
                top_k=0 if temperature is not None else None,
                top_p=1.0 if temperature is not None else None,
                stop_strings=stop_strings,
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                suppress_tokens=[tokenizer.pad_token_id],
            )
            chunks.append(output[:, ids.shape[1] :])
        else:
            eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
            tokens, logprobs = decode(
                model, ids, mask, max_new_tokens, temperature, eos, pad, drafter, draft_tokens, generator
            )
            chunks.append(tokens)
            logprob_chunks.append(logprobs)
    width = max(c.shape[1] for c in chunks)
    response_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=tokenizer.pad_token_id) for c in chunks]
    )
    mask = response_mask(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    logprobs = (
        torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1])) for c in logprob_chunks]) * mask
        if logprob_chunks
        else None
    )
    ended = (response_ids == tokenizer.eos_token_id).any(1) | (mask.sum(1) < max_new_tokens)
    decoded = tokenizer.batch_decode(
        response_ids * mask + tokenizer.pad_token_id * (1 - mask), skip_special_tokens=True
    )
    return Rollout(
        list(prompts), queries["input_ids"], queries["attention_mask"], response_ids, mask, decoded, ended, logprobs
    )


def forward(
    model: torch.nn.Module,
    rollout: Rollout,
    temperature: float,
    share_prefix: bool = True,
    pad_id: int | None = None,
    eos_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits over response positions / temperature, log-probs of the sampled response tokens), pad masked
    as in sampling (`mask_pad`) so these log-probs and the sampled ones share one distribution."""
    logits, logprobs, _ = forward_with_values(model, rollout, temperature, share_prefix, pad_id, eos_id)
    return logits, logprobs


def forward_with_values(
    model: torch.nn.Module,
    rollout: Rollout,
    temperature: float,
    share_prefix: bool = True,
    pad_id: int | None = None,
    eos_id: int | None = None,
    value_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`forward`'s logits and log-probs and, with `value_head` (a value head on the policy's trunk), V(state
    before each response token) from the same forward: the hidden states the LM head reads. Values are None
    without one.

    The logits are upcast to fp32 before the log-softmax: under bf16 autocast the LM head returns bf16 logits,
    and PPO's ratio and KL need log-probs in fp32 (the decode loop upcasts the same way, `pick_tokens`).
    """
    # The LM head only where a response token is predicted: the query makes most of the sequence,
    # and the head is a fifth of SmolLM2's FLOPs.
    keep = rollout.response_ids.shape[1] + 1
    head_inputs: list[torch.Tensor] = []
    hook = (
        model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: head_inputs.append(args[0]))
        if value_head is not None
        else None
    )
    try:
        output = forward_sharing_prefix(
            model,
            rollout.sequence_ids,
            rollout.sequence_mask,
            rollout.prefix_length(share_prefix),
            use_cache=False,
            logits_to_keep=keep,
        )
    finally:
        if hook is not None:
            hook.remove()
    logits = mask_pad(output.logits[:, :-1].float() / temperature, pad_id, eos_id)
    values = value_head(head_inputs[-1][:, :-1]) if value_head is not None else None  # the last call: past the prefix
    return logits, selective_log_softmax(logits, rollout.response_ids), values


def token_values(value_model: torch.nn.Module, rollout: Rollout, share_prefix: bool = True) -> torch.Tensor:
    """The value head on every position: V(state before response token t), shape [B, R]."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = forward_sharing_prefix(
        backbone, rollout.sequence_ids, rollout.sequence_mask, rollout.prefix_length(share_prefix), use_cache=False
    ).last_hidden_state
    width = rollout.response_ids.shape[1]
    return value_model.score(hidden[:, -width - 1 : -1]).squeeze(-1).float()
