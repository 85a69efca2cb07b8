"""Where PPO's scalar reward per response comes from.

(a) a reward model sharing the policy's tokenizer: scored on the rollout's own token ids (no
    decode/re-encode round trip), laid out exactly as the reward stage trained it;
(b) any sequence classifier with its own tokenizer (e.g. an encoder such as MiniLM): responses
    are decoded and re-tokenised — as a chat if it has a chat template, else as a text pair;
(c) a function `module:function(prompts, responses) -> list[float]`, for heuristics and verifiers.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from trl import ModelConfig

from pipelines.cli import UserError
from pipelines.models import resolve_model
from pipelines.ppo.rollout import Rollout
from pipelines.runner import (
    forward_sharing_prefix,
    load_scalar_model,
    render_prompts,
    score_conversations,
    shared_prefix_length,
)


class RewardSource(Protocol):
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        """One score per response of the rollout."""
        ...


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template


class TokenRewardModel:
    """(a): the reward model reads the rollout's tokens; after a response that ended with eos, the chat
    template's text after eos is appended, as in a rendered conversation; a truncated response is read
    as it is (no end), as its rendered text would be. With `share_prefix`, the tokens all sequences
    start with go through the model once."""

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase, share_prefix: bool = True) -> None:
        self.model = model.eval()
        self.share_prefix = share_prefix
        self.pad_id = tokenizer.pad_token_id
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
        after_eos = rendered.split("a" + tokenizer.eos_token, 1)[-1] if tokenizer.eos_token in rendered else ""
        self.suffix = tokenizer(after_eos, add_special_tokens=False)["input_ids"]
        self.eos_id = tokenizer.eos_token_id

    @torch.inference_mode()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        ids, mask = rollout.sequence_ids, rollout.sequence_mask
        if self.suffix:
            # the response's own eos only: the chat-template prompt holds eos tokens of its own
            ended = ((rollout.response_ids == self.eos_id) & rollout.response_mask.bool()).any(1, keepdim=True)
            suffix = torch.tensor(self.suffix, device=ids.device).expand(len(ids), -1)
            ids = torch.cat([ids, torch.where(ended, suffix, self.pad_id)], 1)
            mask = torch.cat([mask, ended.long().expand(-1, len(self.suffix))], 1)
        # Move real tokens into one contiguous right-aligned block so "last non-pad token" is the end.
        order = torch.sort(mask, dim=1, stable=True).indices
        ids, mask = ids.gather(1, order), mask.gather(1, order)
        ids = torch.where(mask.bool(), ids, self.pad_id)
        prefix_length = shared_prefix_length(ids, mask) if self.share_prefix else 0
        return forward_sharing_prefix(self.model, ids, mask, prefix_length).logits[:, 0].float()


class TextRewardModel:
    """(b): a classifier with its own tokenizer reads the decoded text; with a chat template, a finished
    response as a whole conversation, a truncated one as the prompt followed by the unfinished text."""

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @torch.inference_mode()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        prompts, responses = rollout.prompts, rollout.texts
        if self.tokenizer.chat_template:
            opened = render_prompts(self.tokenizer, prompts)
            chats = [
                [*p, {"role": "assistant", "content": r}] if done else start + r
                for p, r, start, done in zip(prompts, responses, opened, rollout.ended.tolist(), strict=True)
            ]
            values = score_conversations(self.model, self.tokenizer, chats, self.batch_size, desc=None)
            return torch.tensor(values)
        questions = [p[-1]["content"] for p in prompts]
        batch = self.tokenizer(questions, list(responses), return_tensors="pt", padding=True, truncation=True)
        return self.model(**batch.to(self.model.device)).logits[:, 0].float().cpu()


class FunctionReward:
    """(c): a Python function; its output is checked (one finite float per response)."""

    def __init__(self, spec: str, function: Callable[[list[str], list[str]], Sequence[float]]) -> None:
        self.spec, self.function = spec, function

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        questions, responses = [p[-1]["content"] for p in rollout.prompts], rollout.texts
        values = self.function(questions, list(responses))
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise UserError(f"reward function {self.spec} must return a list of floats") from None
        if len(values) != len(responses):
            raise UserError(f"reward function {self.spec} returned {len(values)} values for {len(responses)} responses")
        if not all(math.isfinite(v) for v in values):
            raise UserError(f"reward function {self.spec} returned a NaN or infinite value")
        return torch.tensor(values)


def import_function(spec: str) -> FunctionReward:
    """The `module:function` reward, imported before any model loads so that a typo fails at once."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"reward_function must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import reward function module {module_name!r}: {err}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserError(f"{module_name} has no callable {attribute!r} (reward_function={spec})")
    return FunctionReward(spec, function)


def load_reward(
    reward_model_path: str | None,
    reward_function: FunctionReward | None,
    policy_tokenizer: PreTrainedTokenizerBase,
    model_args: ModelConfig,
    use_bf16: bool,
    device: torch.device,
    share_prefix: bool = True,
) -> tuple[RewardSource, bool]:
    """The reward source (the function, or the model at reward_model_path) and whether it is a model sharing the
    policy's tokenizer."""
    if reward_function is not None:
        return reward_function, False
    if not reward_model_path:
        raise UserError("set exactly one of reward_model_path or reward_function")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(reward_model_path))
    model = load_scalar_model(reward_model_path, model_args, use_bf16, trained_head=True).to(device)
    model.requires_grad_(False)
    if same_tokenizer(tokenizer, policy_tokenizer):
        return TokenRewardModel(model, policy_tokenizer, share_prefix), True
    return TextRewardModel(model, tokenizer), False
