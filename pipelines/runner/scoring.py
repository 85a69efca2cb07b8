"""One-output models — reward models, value models, foreign classifiers — loaded and scored one way.

The reward stage trains one (its head starts fresh on a causal LM), `python -m pipelines.reward score`,
PPO and `pipelines.eval compare` score with one, and PPO's value model is one: each loads it through
`load_scalar_model` and reads a conversation's score with `score_conversations`, so a reward means the
same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from pipelines.cli import UserError
from pipelines.models import resolve_model
from pipelines.runner.modeling import load_model

Messages = list[dict[str, str]]


def _is_trained_classifier(config: Any) -> bool:
    return any(name.endswith("ForSequenceClassification") for name in getattr(config, "architectures", None) or [])


def _model_config(name_or_path: str, role: str) -> Any:
    try:
        return AutoConfig.from_pretrained(resolve_model(name_or_path))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load {role} {name_or_path!r}: {str(err).splitlines()[0]}") from None


def check_scoring_model(name_or_path: str, role: str = "reward model") -> None:
    """A one-line `UserError` unless `name_or_path` is a saved one-output classifier (its config only is read, so
    a CLI can check it before any work): a causal LM would load with a random head and score noise."""
    config = _model_config(name_or_path, role)
    if not _is_trained_classifier(config):
        kind = ", ".join(getattr(config, "architectures", None) or ["a model without a classification head"])
        raise UserError(
            f"{role} {name_or_path!r} is {kind}, not a trained one-output classifier: give the output of "
            "`python -m pipelines.reward`"
        )
    if config.num_labels != 1:
        raise UserError(f"{role} {name_or_path!r} has {config.num_labels} outputs; it needs exactly one")


def load_scalar_model(
    name_or_path: str,
    model_args: ModelConfig | None = None,
    use_bf16: bool = False,
    *,
    trained_head: bool,
    role: str = "reward model",
    **extra: Any,
) -> PreTrainedModel:
    """A sequence classifier with exactly one output.

    `trained_head=True` (scoring) refuses anything but a saved one-output classifier: a causal LM would
    load with a randomly initialised head and score noise. `trained_head=False` (training a reward or
    value model) also takes a causal LM, whose score head then starts fresh.
    """
    if trained_head:
        check_scoring_model(name_or_path, role)
    else:
        _model_config(name_or_path, role)
        extra = {"num_labels": 1, **extra}
    model = load_model(name_or_path, model_args or ModelConfig(), use_bf16, AutoModelForSequenceClassification, **extra)
    if model.config.num_labels != 1:
        raise UserError(f"{role} {name_or_path!r} has {model.config.num_labels} outputs; it needs exactly one")
    return model


def render_conversations(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages | str]) -> list[str]:
    """Conversations through the chat template (no generation prompt); plain strings kept as they are."""
    return [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]


@torch.inference_mode()
def score_conversations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages | str],
    batch_size: int = 32,
    max_length: int | None = None,
    desc: str | None = "Scoring",
) -> list[float]:
    """One scalar per conversation, batched by length (right padding; the model reads the last token)."""
    texts = render_conversations(tokenizer, conversations)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = [0.0] * len(texts)
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for first in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=desc is None):
            index = order[first : first + batch_size]
            batch = tokenizer(
                [texts[i] for i in index],
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                add_special_tokens=False,
            ).to(model.device)
            logits = model(**batch).logits[:, 0].float().tolist()
            for i, value in zip(index, logits, strict=True):
                scores[i] = value
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return scores
