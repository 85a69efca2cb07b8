"""Generation metrics computed offline: exact match and corpus BLEU on the generated text (sacrebleu;
`evaluate.load` needs the hub), and token accuracy / perplexity of the references under a model."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import sacrebleu
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def normalize(text: str) -> str:
    """Whitespace-insensitive form for exact match (case and punctuation are kept)."""
    return re.sub(r"\s+", " ", text).strip()


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    hits = sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def _prompt_and_full(tokenizer: PreTrainedTokenizerBase, prompt: Messages | str, reference: str) -> tuple[str, str]:
    """The prompt as the model sees it before answering, and the same text with the reference answer after it
    (chat: the template's assistant turn, end-of-turn included; plain text: reference + eos)."""
    if isinstance(prompt, str):
        return prompt, prompt + reference + tokenizer.eos_token
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reference}], tokenize=False)
    return head, full


@torch.no_grad()
def reference_token_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages | str],
    references: Sequence[str],
    batch_size: int = 8,
) -> dict[str, float]:
    """Teacher-forced token accuracy and perplexity on the reference answers (answer tokens only).

    The same quantities as SFT's `eval_mean_token_accuracy` / `eval_perplexity`, but for any model on the
    comparison prompts, so a base model and its fine-tuned versions are measured on equal terms.
    """
    sequences = []
    for prompt, reference in zip(prompts, references, strict=True):
        head, full = _prompt_and_full(tokenizer, prompt, reference)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        sequences.append((ids, min(start, len(ids) - 1)))
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    hits, nll, counted = 0, 0.0, 0
    try:
        for first in tqdm(range(0, len(order), batch_size), desc="Scoring references", unit="batch"):
            batch = [sequences[i] for i in order[first : first + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=model.device)
            attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
            labels = torch.full_like(input_ids, -100)
            for row, (ids, start) in enumerate(batch):
                labels[row, start : len(ids)] = input_ids[row, start : len(ids)]
            logits = model(input_ids=input_ids, attention_mask=attention.to(model.device)).logits[:, :-1].float()
            targets = labels[:, 1:]
            scored = targets != -100
            hits += int((logits.argmax(-1)[scored] == targets[scored]).sum())
            nll += float(torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum"))
            counted += int(scored.sum())
    finally:
        model.train(was_training)
    if not counted:
        return {}
    return {"token_accuracy": hits / counted, "perplexity": math.exp(min(nll / counted, 50.0))}
