"""curation: near-dedup of 20,000 texts (< 60 s) and token stats of 100,000 rows (< 15 s) on this CPU.

    python -m bench.curation                 # both figures (~1.5 min on 2 cores)
    python -m bench.curation --quick         # 2,000 texts / 10,000 rows: a smoke test, not a figure
    python -m bench.curation --threads 1     # torch threads for the embeddings

Near-dedup times `pipelines.data.dedup` as the `dedup` step runs it, in this process: loading the
offline MiniLM, embedding (default batch size and max_seq_length), the faiss range search at the
default threshold and the clusters. The texts are made up: 8-40 words drawn from MiniLM's vocabulary
(so distinct texts are far apart), 5 % of them edited copies of others (a word dropped, two words
swapped, or case and punctuation changed), which the run must find; the JSON has the token lengths,
the planted duplicates found and any other row removed.
Token stats times the `stats` step (tokenizer load, token counts with `num_proc` processes, the
summaries and the PNG) on 100,000 prompt/completion rows of 8-40 and 10-100 words (instruction-data
sized, ~100 tokens a row), in memory; the time grows with the tokens, so the JSON has tokens/s too.
The line: budget / measured seconds for each; both targets are ratio >= 1.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import SMOLLM2, Recorder, Verdict, add_common_flags, apply_threads, loadavg, model_path

NAME = "curation"
DEDUP_BUDGET_S = 60.0
STATS_BUDGET_S = 15.0
PLANTED_SHARE = 0.05


def vocabulary() -> list[str]:
    """Whole lower-case words of MiniLM's WordPiece vocabulary (one token each, mostly)."""
    from pipelines.data.dedup import default_model_path

    words = (default_model_path() / "vocab.txt").read_text(encoding="utf-8").split()
    return [w for w in words if w.isalpha() and w.isascii() and len(w) >= 3]


def sentence(rng: random.Random, words: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high))).capitalize() + "."


def edited(rng: random.Random, text: str) -> str:
    """A near-duplicate: one word dropped, two neighbours swapped, or case and punctuation changed."""
    words = text.rstrip(".").split()
    kind = rng.randrange(3)
    if kind == 0:
        del words[rng.randrange(len(words))]
    elif kind == 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    else:
        return text.lower().rstrip(".") + "!"
    return " ".join(words) + "."


def dedup_texts(count: int, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """`count` texts, the last 5 % edited copies of earlier ones: (texts, {copy index: original index})."""
    rng = random.Random(seed)
    words = vocabulary()
    originals = count - int(count * PLANTED_SHARE)
    texts = [sentence(rng, words, 8, 40) for _ in range(originals)]
    planted = {}
    for index in range(originals, count):
        source = rng.randrange(originals)
        planted[index] = source
        texts.append(edited(rng, texts[source]))
    return texts, planted


def measure_dedup(count: int) -> dict[str, Any]:
    import numpy as np
    from datasets import Dataset

    from pipelines.data import dedup
    from pipelines.data.curate import DedupStep
    from pipelines.data.fields import ROW

    texts, planted = dedup_texts(count)
    splits = {"train": Dataset.from_dict({ROW: list(range(count)), "text": texts})}
    defaults = DedupStep()
    start = time.perf_counter()
    encoder = dedup.load_encoder(defaults.model, defaults.max_seq_length)
    loaded = time.perf_counter()
    kept, removed, report = dedup.near_dedup(
        splits, ["text"], encoder, defaults.threshold, defaults.batch_size, "dedup", defaults.precision
    )
    seconds = time.perf_counter() - start
    found = {r["row"]: r["kept_row"] for r in removed}
    lengths = np.array([len(ids) for ids in encoder.tokenizer(texts)["input_ids"]])
    return {
        "texts": count,
        "seconds": round(seconds, 2),
        "model_load_s": round(loaded - start, 2),
        **{key: report[key] for key in ("embed_s", "texts_per_s", "search_s", "pairs", "bf16")},
        "tokens_per_text": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},
        "batch_size": defaults.batch_size,
        "max_seq_length": defaults.max_seq_length,
        "threshold": defaults.threshold,
        "planted": len(planted),
        "planted_found": sum(found.get(copy) == source for copy, source in planted.items()),
        "other_removed": sum(row not in planted for row in found),
        "kept": len(kept["train"]),
    }


def stats_rows(count: int, seed: int = 1) -> dict[str, list[str]]:
    rng = random.Random(seed)
    words = vocabulary()
    return {
        "prompt": [sentence(rng, words, 8, 40) for _ in range(count)],
        "completion": [sentence(rng, words, 10, 100) for _ in range(count)],
    }


def measure_stats(count: int, tokenizer: str, num_proc: int) -> dict[str, Any]:
    from datasets import Dataset

    from pipelines.data.curate import Context, CurationConfig, StatsStep
    from pipelines.data.fields import ROW
    from pipelines.data.stats import TOTAL

    rows = Dataset.from_dict({ROW: list(range(count)), **stats_rows(count)})
    with tempfile.TemporaryDirectory() as work:
        context = Context(CurationConfig(tokenizer=tokenizer, num_proc=num_proc), Path(work))
        start = time.perf_counter()
        outcome = StatsStep().run(context, {"train": rows}, 1)
        seconds = time.perf_counter() - start
    tokens = outcome.report["tokens"]["train"]
    return {
        "rows": count,
        "seconds": round(seconds, 2),
        "num_proc": num_proc,
        "tokenizer": tokenizer,
        "tokens": {
            field: {k: v for k, v in s.items() if k in ("tokens", "mean", "max")} for field, s in tokens.items()
        },
        "tokens_per_s": round(sum(s["tokens"] for field, s in tokens.items() if field != TOTAL) / seconds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.curation", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    parser.add_argument("--texts", type=int, default=None, help="texts to near-dedup (default 20000; quick 2000)")
    parser.add_argument("--rows", type=int, default=None, help="rows to count tokens of (default 100000; quick 10000)")
    parser.add_argument("--num_proc", type=int, default=2, help="token-counting processes (the stats step's num_proc)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    recorder = Recorder(NAME, args.quick)

    stats = measure_stats(args.rows or (10_000 if args.quick else 100_000), model_path(SMOLLM2), args.num_proc)
    print(f"token stats: {stats['rows']} rows in {stats['seconds']} s", flush=True)
    near = measure_dedup(args.texts or (2_000 if args.quick else 20_000))
    print(f"near-dedup: {near['texts']} texts in {near['seconds']} s", flush=True)
    stats_ok = stats["seconds"] < STATS_BUDGET_S
    verdict = Verdict(
        NAME,
        "near-dedup budget",
        DEDUP_BUDGET_S,
        f"near-dedup {near['texts']} texts",
        near["seconds"],
        "s",
        1.0,
        note=f"planted {near['planted_found']}/{near['planted']} found, {near['other_removed']} other removed; "
        f"token stats {stats['rows']} rows ({stats['tokens_per_s'] * stats['seconds'] / 1e6:.1f}M tokens) "
        f"{stats['seconds']:.2f} s (< {STATS_BUDGET_S:g} s: "
        f"{'yes' if stats_ok else 'no'})",
    )
    recorder.finish(
        verdict,
        {
            "near_dedup": near,
            "token_stats": stats,
            "token_stats_budget_s": STATS_BUDGET_S,
            "token_stats_met": stats_ok,
            "loadavg": loadavg(),
        },
    )


if __name__ == "__main__":
    main()
