"""mfu: model FLOPs utilisation of the SFT stage vs a bare forward/backward/AdamW loop on the same batches.

    python -m bench.mfu                     # SmolLM2-135M, 10 steps each (~4 min on 2 cores)
    python -m bench.mfu --precision fp32    # fp32 peak, fp32 loops (default auto: bf16 where native)
    python -m bench.mfu --quick             # tiny-llama smoke test

1. peak: `torch.mm` of 2048 x 2048 matrices in the run's precision (fp32, or bf16), repeated; the best
   block's GFLOP/s.
2. bare: plain transformers + `torch.optim.AdamW` on the very batches the SFT run trains on (taken
   from TRL's own dataloader for the same data, seed and config: batch 8, same token lengths), under
   `torch.autocast(bfloat16)` with fp32 weights when the precision is bf16 (what the Trainer does).
3. sft: `python -m pipelines.sft` with that config and precision (steady state from the Trainer's logs).
MFU = 6 x parameters x non-padding tokens/s / peak, for both; the line compares SFT/bare
(target >= 0.9: the stage may cost at most 10 % over the bare loop).
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
    TINY,
    Recorder,
    Verdict,
    abba,
    add_common_flags,
    apply_threads,
    common_args,
    loadavg,
    median,
    model_path,
    run_pipelines_sft,
    textsql_data,
    write_yaml,
)
from pipelines.runner import Precision, add_precision_flag, announce_precision, resolve_precision

NAME = "mfu"
TARGET = 0.9
COLUMNS = "prompt=question,completion=answer"


def matmul_peak(dtype: torch.dtype, size: int = 2048, blocks: int = 5, reps: int = 5) -> dict[str, Any]:
    """GFLOP/s of `size`^2 matmuls in `dtype`: `blocks` timed blocks of `reps` products; the best block counts."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(3):  # warm-up: thread pool, caches
        torch.mm(a, b, out=out)
    flops = 2 * size**3 * reps
    rates = []
    for _ in tqdm(range(blocks), desc=f"matmul peak ({size}², {dtype})", leave=False):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        rates.append(flops / (time.perf_counter() - start) / 1e9)
    return {
        "dtype": str(dtype),
        "size": size,
        "blocks": blocks,
        "reps": reps,
        "gflops_blocks": rates,
        "gflops_peak": max(rates),
    }


def sft_batches(model: str, data: tuple[Path, Path], sft_args: dict[str, Any], steps: int, tmp: Path) -> list[dict]:
    """The first `steps` batches TRL's SFTTrainer draws for this data, seed and config (as pipelines.sft builds it)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipelines.data.formats import detect_mapping, to_training_format
    from pipelines.data.sources import DataArguments, load_splits
    from pipelines.runner import load_tokenizer

    data_args = DataArguments(
        dataset=str(data[0]),
        eval_dataset=str(data[1]),
        columns=COLUMNS,
        max_train_samples=steps * sft_args["per_device_train_batch_size"],
    )
    rows, _ = load_splits(data_args, sft_args["seed"])
    dataset = to_training_format(rows, detect_mapping(rows.column_names, data_args.columns))
    tokenizer = load_tokenizer(model)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        args=SFTConfig(**sft_args, output_dir=str(tmp / "batches")),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    keep = ("input_ids", "attention_mask", "labels")
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append({k: v.clone() for k, v in batch.items() if k in keep})
        if len(batches) == steps:
            break
    del trainer
    gc.collect()
    return batches


def bare_loop(
    model_dir: str, batches: list[dict], warmup: int, learning_rate: float, label: str, precision: Precision
) -> dict[str, Any]:
    """Forward (under bf16 autocast if the precision says so), backward, AdamW step on each batch;
    steady-state tokens/s after `warmup` steps."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    load = loadavg()
    seconds = []
    for batch in tqdm(batches, desc=label, unit="step", leave=False):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    padded = [b["input_ids"].numel() for b in batches]
    n_params = sum(p.numel() for p in model.parameters())
    del model, optimizer
    gc.collect()
    steady_s, steady_tokens = sum(seconds[warmup:]), sum(tokens[warmup:])
    tqdm.write(
        f"  {label:<22} steady {steady_tokens / steady_s:8.2f} tok/s | {sum(tokens)} tokens "
        f"({sum(padded)} with padding)"
    )
    return {
        "label": label,
        "loadavg": load,
        "n_params": n_params,
        "step_seconds": seconds,
        "step_tokens": tokens,
        "step_padded_tokens": padded,
        "tokens": sum(tokens),
        "steady_tokens": steady_tokens,
        "steady_padded_tokens": sum(padded[warmup:]),
        "steady_s": steady_s,
        "steady_tokens_per_s": steady_tokens / steady_s,
    }


def mfu(n_params: int, tokens_per_s: float, peak_gflops: float) -> float:
    return 6 * n_params * tokens_per_s / (peak_gflops * 1e9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mfu", description=__doc__.splitlines()[0])
    add_common_flags(parser, steps=10, warmup=2)
    parser.add_argument("--reps", type=int, default=1, help="bare/SFT pairs (2: bare SFT SFT bare)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    model = model_path(TINY if args.quick else SMOLLM2)
    steps = args.steps or (4 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    recorder = Recorder(NAME, args.quick, precision)
    sft_args = common_args(max_steps=steps)
    peak = matmul_peak(precision.dtype, blocks=3 if args.quick else 5)
    tqdm.write(f"  matmul peak            {peak['gflops_peak']:8.1f} GFLOP/s ({precision.name}, 2048²)")

    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp_name:
        tmp = Path(tmp_name)
        train, eval_file, data_note = textsql_data(tmp)
        config = write_yaml(tmp / "sft.yaml", sft_args)
        batches = sft_batches(model, (train, eval_file), sft_args, steps, tmp)
        runs: list[dict[str, Any]] = []
        for i, kind in enumerate(order := abba(args.reps, "bare", "sft")):
            label = f"run {i + 1}/{len(order)} {kind}"
            if kind == "bare":
                record = bare_loop(model, batches, warmup, sft_args["learning_rate"], label, precision)
            else:
                samples = str(steps * sft_args["per_device_train_batch_size"])
                extra = ["--columns", COLUMNS, "--max_train_samples", samples]
                _, record = run_pipelines_sft(label, tmp, config, model, (train, eval_file), warmup, precision, extra)
            runs.append({"kind": kind, **record})

    n_params = next(r["n_params"] for r in runs if r["kind"] == "bare")
    rates = {kind: median([r["steady_tokens_per_s"] for r in runs if r["kind"] == kind]) for kind in ("bare", "sft")}
    mfus = {kind: mfu(n_params, rate, peak["gflops_peak"]) for kind, rate in rates.items()}
    verdict = Verdict(
        NAME,
        "SFT MFU",
        100 * mfus["sft"],
        "bare loop MFU",
        100 * mfus["bare"],
        "%",
        TARGET,
        note=(
            f"{precision.name} peak {peak['gflops_peak']:.1f} GFLOP/s, "
            f"tok/s SFT {rates['sft']:.2f} bare {rates['bare']:.2f}, steps {warmup + 1}-{steps}"
        ),
    )
    sft_tokens = {r["steady_tokens"] for r in runs if r["kind"] == "sft"}
    bare_tokens = {r["steady_tokens"] for r in runs if r["kind"] == "bare"}
    recorder.finish(
        verdict,
        {
            "model": model,
            "n_params": n_params,
            "data": str(train),
            "data_note": data_note,
            "sft_config": sft_args,
            "matmul_peak": peak,
            "steady_tokens_per_s": rates,
            "mfu": mfus,
            "mfu_formula": "6 * n_params * non-padding tokens/s / matmul peak",
            "same_batches": sft_tokens == bare_tokens,
            "bare_optimizer": "torch.optim.AdamW(lr, weight_decay=0), no grad clipping, no scheduler",
            "order": order,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
