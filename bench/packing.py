"""packing: real (non-padding) training tokens/s with `--packing true` vs padding, on length-skewed data.

    python -m bench.packing                     # SmolLM2-135M, 48 examples one epoch each way (~4 min on 2 cores)
    python -m bench.packing --precision fp32    # both ways in fp32 (default auto: bf16 where native)
    python -m bench.packing --quick             # tiny-llama smoke test

The data is plain text, 80 % short (~30 tokens) and 20 % long (~240 tokens), the same examples both
ways; one epoch each, so both runs train on exactly the same real tokens and the ratio is the ratio
of their `train_runtime`s. Padded batches are as wide as their longest row; packing (TRL's `bfd`,
padding-free) fills `max_length` rows with whole examples. Target: ratio >= 1.5.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    SMOLLM2,
    TINY,
    Recorder,
    Verdict,
    abba,
    add_common_flags,
    apply_threads,
    common_args,
    median,
    model_path,
    run_pipelines_sft,
    write_jsonl,
    write_yaml,
)
from pipelines.runner import add_precision_flag, announce_precision, resolve_precision

NAME = "packing"
TARGET = 1.5
WORDS = " ".join(
    [
        "the customer order product price city total shipped returned between before after each every month",
        "year report table value count average highest lowest name category supplier invoice payment discount",
        "stock warehouse delivery review rating region manager employee department salary budget revenue cost",
    ]
).split()


def skewed_texts(tokenizer: Any, count: int, long_share: float, seed: int) -> list[dict[str, str]]:
    """`count` texts: most ~30 tokens, `long_share` of them ~240 (always under max_length 256 with eos)."""
    rng = random.Random(seed)
    n_long = round(count * long_share)
    kinds = [True] * n_long + [False] * (count - n_long)
    rng.shuffle(kinds)
    rows = []
    for is_long in kinds:
        target = rng.randint(225, 245) if is_long else rng.randint(24, 36)
        words = " ".join(rng.choice(WORDS) for _ in range(target * 2))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"][:target]
        rows.append({"text": tokenizer.decode(ids).strip()})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    parser.add_argument("--examples", type=int, default=None, help="examples, one epoch each way (48; quick 16)")
    parser.add_argument("--long_share", type=float, default=0.2, help="share of long examples")
    parser.add_argument("--reps", type=int, default=1, help="A/B pairs (2: A B B A)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    from transformers import AutoTokenizer

    model = model_path(TINY if args.quick else SMOLLM2)
    examples = args.examples or (16 if args.quick else 48)
    recorder = Recorder(NAME, args.quick, precision)
    tokenizer = AutoTokenizer.from_pretrained(model)
    sft_args = common_args(max_steps=-1, num_train_epochs=1, completion_only_loss=None, packing_strategy="bfd")

    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp_name:
        tmp = Path(tmp_name)
        rows = skewed_texts(tokenizer, examples, args.long_share, seed=0)
        lengths = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
        data = (write_jsonl(tmp / "skewed.jsonl", rows), write_jsonl(tmp / "eval.jsonl", rows[:2]))
        config = write_yaml(tmp / "sft.yaml", sft_args)
        runs = []
        for i, mode in enumerate(order := abba(args.reps, "packing", "padding")):
            label = f"run {i + 1}/{len(order)} {mode}"
            extra = ["--packing", "true" if mode == "packing" else "false"]
            _, record = run_pipelines_sft(label, tmp, config, model, data, 0, precision, extra)
            runs.append({"mode": mode, **record})

    def mode_median(mode: str) -> float:
        return median([r["tokens_per_s"] for r in runs if r["mode"] == mode])

    verdict = Verdict(
        NAME,
        "packing",
        mode_median("packing"),
        "padding",
        mode_median("padding"),
        "real tok/s",
        TARGET,
        note=f"{precision.name}, {examples} examples, {round(args.long_share * 100)}% long, one epoch each",
    )
    recorder.finish(
        verdict,
        {
            "model": model,
            "sft_config": sft_args,
            "data": {
                "examples": len(rows),
                "long_examples": sum(n > 100 for n in lengths),
                "token_lengths": lengths,
                "real_tokens": sum(lengths),
            },
            "same_real_tokens": len({r["tokens"] for r in runs}) == 1,
            "padding_share_of_computed_tokens": {
                r["label"]: 1 - r["tokens"] / r["padded_tokens"] if r["padded_tokens"] else None for r in runs
            },
            "order": order,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
