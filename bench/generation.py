"""generation: tokens/s of the eval step's batched `generate` at batch 1/8/32/64 vs plain one-at-a-time.

    python -m bench.generation                     # SmolLM2-135M, 64 new tokens, greedy (~4 min on 2 cores)
    python -m bench.generation --precision fp32    # fp32 weights (default auto: bf16 where the CPU has it)
    python -m bench.generation --quick             # tiny-llama smoke test

Held-out prompts (data/textsql/test.jsonl, chat-formatted as the eval step does) go through
`pipelines.runner.generate_texts` (length-sorted, left-padded batches, KV cache) at each batch
size, and through plain `model.generate` one prompt at a time. tokens/s counts generated tokens up
to and including eos (padding of finished rows is not counted). Wider batches need more prompts:
each size runs on max(its batch, a minimum) prompts. The line compares the widest batch with the
plain loop; no target (on a 2-core AVX2 CPU batch 1 gave about 10, batch 64 about 81 tokens/s).
Both sides load the weights in the run's precision (bf16 or fp32), as `pipelines.eval` does.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.common import (
    SMOLLM2,
    TEXTSQL_TEST,
    TINY,
    Recorder,
    Verdict,
    add_common_flags,
    apply_threads,
    loadavg,
    model_path,
    standin_pairs,
    write_jsonl,
)
from pipelines.runner import add_precision_flag, announce_precision, resolve_precision

NAME = "generation"
BATCH_SIZES = (1, 8, 32, 64)


def held_out_prompts(count: int, tmp: Path) -> tuple[list[Any], str]:
    """Chat prompts from the held-out split, built the way pipelines.sft's eval step builds them."""
    from pipelines.data.formats import detect_mapping, generation_pairs, to_training_format
    from pipelines.data.sources import load_source

    path, note = TEXTSQL_TEST, ""
    if not path.is_file():
        path = write_jsonl(tmp / "standin_test.jsonl", standin_pairs(count, seed=1))
        note = "stand-in question/SQL prompts (data/textsql/test.jsonl missing)"
    rows = load_source(str(path))
    prompts, _ = generation_pairs(to_training_format(rows, detect_mapping(rows.column_names, None)))
    if len(prompts) < count:
        prompts = (prompts * (count // len(prompts) + 1))[:count]
        note = " ".join(filter(None, [note, f"prompts repeated to reach {count}"]))
    return prompts[:count], note


@torch.inference_mode()
def plain_generate(model: Any, tokenizer: Any, prompts: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """`model.generate` one prompt at a time (greedy), as a script without batching would."""
    produced, start = 0, time.perf_counter()
    for prompt in tqdm(prompts, desc="plain model.generate (batch 1)", unit="prompt", leave=False):
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        produced += new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
    seconds = time.perf_counter() - start
    return {"prompts": len(prompts), "tokens": produced, "seconds": seconds, "tokens_per_s": produced / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--min_prompts", type=int, default=None, help="prompts per batch size at least (8; quick 4)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    from transformers import AutoModelForCausalLM

    from pipelines.runner import generate_texts, load_tokenizer

    model_dir = model_path(TINY if args.quick else SMOLLM2)
    min_prompts = args.min_prompts or (4 if args.quick else 8)
    recorder = Recorder(NAME, args.quick, precision)
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp_name:
        prompts, data_note = held_out_prompts(max(*BATCH_SIZES, min_prompts), Path(tmp_name))
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.dtype)
    model.eval()
    generate_texts(model, tokenizer, prompts[:2], max_new_tokens=16, batch_size=2, desc="warm-up")

    plain_prompts = prompts[:min_prompts]
    plain = {"loadavg": loadavg(), **plain_generate(model, tokenizer, plain_prompts, args.max_new_tokens)}
    tqdm.write(f"  plain model.generate b=1   {plain['tokens_per_s']:8.2f} tok/s ({plain['tokens']} tokens)")
    batched: dict[int, dict[str, Any]] = {}
    for size in BATCH_SIZES:
        subset = prompts[: max(size, min_prompts)]
        load = loadavg()
        generations, stats = generate_texts(
            model, tokenizer, subset, max_new_tokens=args.max_new_tokens, batch_size=size, desc=f"generate b={size}"
        )
        batched[size] = {
            "prompts": len(subset),
            "tokens": stats.tokens,
            "seconds": stats.seconds,
            "tokens_per_s": stats.tokens_per_second,
            "eos_rate": sum(g.hit_eos for g in generations) / len(generations),
            "loadavg": load,
        }
        tqdm.write(f"  pipelines generate b={size:<4} {stats.tokens_per_second:8.2f} tok/s ({stats.tokens} tokens)")
    del model
    gc.collect()

    widest = max(BATCH_SIZES)
    per_size = " ".join(f"b{size}={batched[size]['tokens_per_s']:.1f}" for size in BATCH_SIZES)
    verdict = Verdict(
        NAME,
        f"generate b={widest}",
        batched[widest]["tokens_per_s"],
        "plain b=1",
        plain["tokens_per_s"],
        "tok/s",
        None,
        note=f"{precision.name}, {per_size}; b1 vs plain {batched[1]['tokens_per_s'] / plain['tokens_per_s']:.3f}",
    )
    recorder.finish(
        verdict,
        {
            "model": model_dir,
            "data": str(TEXTSQL_TEST),
            "data_note": data_note,
            "max_new_tokens": args.max_new_tokens,
            "decoding": "greedy, KV cache, eos stops a row",
            "plain": plain,
            "pipelines_generate": {str(size): figures for size, figures in batched.items()},
            "tokens_per_s_by_batch": {str(size): batched[size]["tokens_per_s"] for size in BATCH_SIZES},
        },
    )


if __name__ == "__main__":
    main()
