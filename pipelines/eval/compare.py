"""Side-by-side generations of several models on the same held-out prompts.

Writes `generations.jsonl` (one row per prompt: every model's output, its length in new tokens and
whether it ended with eos) and `generations.md` (a metrics table, then prompt | reference | model A |
model B ...), and returns per-model metrics. `win_rates` turns per-prompt judgements into pairwise
win rates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipelines.eval.metrics import bleu, exact_match, reference_token_metrics
from pipelines.runner import Generation, Messages, generate_texts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "∅"


def _prompt_text(prompt: Messages | str) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def compare_models(
    loaders: dict[str, Callable[[], PreTrainedModel]],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages | str],
    references: Sequence[str],
    out_dir: Path,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    extra_metrics: Callable[[list[Generation]], dict[str, float]] | None = None,
    score_references: bool = False,
) -> dict[str, dict[str, float]]:
    """Generate with each model in turn (one in memory at a time) and write the comparison files.

    `extra_metrics` adds task metrics (e.g. execution accuracy, reward) computed from the generations;
    `score_references` adds each model's token accuracy and perplexity on the reference answers.
    """
    outputs: dict[str, list[Generation]] = {}
    metrics: dict[str, dict[str, float]] = {}
    for name, load in loaders.items():
        model = load()
        generations, stats = generate_texts(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            desc=f"Generating ({name})",
        )
        scored = reference_token_metrics(model, tokenizer, prompts, references) if score_references else {}
        del model
        texts = [g.text for g in generations]
        outputs[name] = generations
        metrics[name] = {
            "exact_match": exact_match(texts, references),
            "bleu": bleu(texts, references),
            "mean_new_tokens": sum(g.num_tokens for g in generations) / max(len(generations), 1),
            "eos_rate": sum(g.hit_eos for g in generations) / max(len(generations), 1),
            "generation_tokens_per_second": stats.tokens_per_second,
            **scored,
        }
        if extra_metrics is not None:
            metrics[name].update(extra_metrics(generations))
    write_comparison(out_dir, prompts, references, outputs, metrics)
    return metrics


def write_comparison(
    out_dir: Path,
    prompts: Sequence[Messages | str],
    references: Sequence[str],
    outputs: dict[str, list[Generation]],
    metrics: dict[str, dict[str, float]],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(outputs)
    with (out_dir / "generations.jsonl").open("w", encoding="utf-8") as handle:
        for i, prompt in enumerate(prompts):
            row: dict[str, Any] = {
                "prompt": _prompt_text(prompt),
                "reference": references[i],
            }
            row.update({name: outputs[name][i].text for name in names})
            row["new_tokens"] = {name: outputs[name][i].num_tokens for name in names}
            row["hit_eos"] = {name: outputs[name][i].hit_eos for name in names}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    keys = list(next(iter(metrics.values()), {}))
    lines = [
        f"# Generations on {len(prompts)} held-out prompts",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(f"{metrics[name][k]:.3f}" for k in keys) + " |" for name in names]
    lines += [
        "",
        "| prompt | reference | " + " | ".join(names) + " |",
        "|---" * (len(names) + 2) + "|",
    ]
    for i, prompt in enumerate(prompts):
        cells = [_prompt_text(prompt), references[i]] + [outputs[name][i].text for name in names]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    (out_dir / "generations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def win_rates(scores: Mapping[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """Each model against every model listed before it (sft vs base, ppo vs base, ppo vs sft), prompt by prompt.

    `scores[model][i]` is a judge's verdict on prompt i (1/0 from a verifier, a reward-model score): a win
    when the challenger's is higher, a tie when equal; `win_rate` counts a tie as half a win, so 0.5 means
    no difference.
    """
    names = list(scores)
    rates: dict[str, dict[str, Any]] = {}
    for j, challenger in enumerate(names):
        for baseline in names[:j]:
            pairs = list(zip(scores[challenger], scores[baseline], strict=True))
            wins = sum(a > b for a, b in pairs)
            losses = sum(a < b for a, b in pairs)
            ties = len(pairs) - wins - losses
            rates[f"{challenger} vs {baseline}"] = {
                "challenger": challenger,
                "baseline": baseline,
                "wins": wins,
                "ties": ties,
                "losses": losses,
                "win_rate": (wins + ties / 2) / len(pairs) if pairs else 0.0,
            }
    return rates
