"""multiprocess: total SFT tokens/s of 2 processes (DDP over gloo) vs 1, same data and global batch.

    python -m bench.multiprocess_sft            # SmolLM2-135M, 8 steps a run (~4 min on 2 cores)
    python -m bench.multiprocess_sft --quick    # tiny-llama smoke test

1 process at batch 8 vs `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` with
2 x batch 4: the same rows in the same order, global batch 8. Tokens/s counts every process's
non-padding tokens over the Trainer's `train_runtime` (steady state). No target: on a 2-core
machine the ranks share the cores the single process already used, so ~1.0 or less is expected;
the figure shows what DDP's all-reduce costs here. (The file is not called multiprocess.py: that
would shadow the `multiprocess` package `datasets` imports, for scripts run from bench/.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (
    SMOLLM2,
    TINY,
    Recorder,
    Verdict,
    abba,
    accelerate_launcher,
    add_common_flags,
    apply_threads,
    common_args,
    median,
    model_path,
    run_pipelines_sft,
    textsql_data,
    write_yaml,
)
from pipelines.runner import add_precision_flag, announce_precision, resolve_precision

NAME = "multiprocess"
GLOBAL_BATCH = 8


def rank_threads(ranks: int = 2) -> int:
    """The OMP_NUM_THREADS `accelerate launch` gives each CPU rank when the variable is unset."""
    import os

    import psutil

    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (psutil.cpu_count(logical=False) or 1) // ranks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multiprocess_sft", description=__doc__.splitlines()[0])
    add_common_flags(parser, steps=8, warmup=2)
    parser.add_argument("--reps", type=int, default=1, help="A/B pairs (2: A B B A)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    model = model_path(TINY if args.quick else SMOLLM2)
    steps = args.steps or (4 if args.quick else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    recorder = Recorder(NAME, args.quick, precision)
    sft_args = common_args(max_steps=steps, per_device_train_batch_size=GLOBAL_BATCH)

    with tempfile.TemporaryDirectory(prefix="bench-multiprocess-") as tmp_name:
        tmp = Path(tmp_name)
        train, eval_file, data_note = textsql_data(tmp)
        config = write_yaml(tmp / "sft.yaml", sft_args)
        samples = str(steps * GLOBAL_BATCH)
        data_flags = ["--columns", "prompt=question,completion=answer", "--max_train_samples", samples]
        runs = []
        for i, procs in enumerate(order := abba(args.reps, "2proc", "1proc")):
            label = f"run {i + 1}/{len(order)} {procs}"
            if procs == "2proc":
                extra = [*data_flags, "--per_device_train_batch_size", str(GLOBAL_BATCH // 2)]
                _, record = run_pipelines_sft(label, tmp, config, model, (train, eval_file), warmup, precision, extra,
                                              launcher=accelerate_launcher())  # fmt: skip
            else:
                _, record = run_pipelines_sft(
                    label, tmp, config, model, (train, eval_file), warmup, precision, data_flags
                )
            runs.append({"processes": procs, **record})

    def procs_median(procs: str) -> float:
        return median([r["steady_tokens_per_s"] for r in runs if r["processes"] == procs])

    verdict = Verdict(
        NAME,
        "2 processes",
        procs_median("2proc"),
        "1 process",
        procs_median("1proc"),
        "tok/s",
        None,
        note=f"global batch {GLOBAL_BATCH}, steps {warmup + 1}-{steps}, {recorder.machine['usable_cores']} cores",
    )
    recorder.finish(
        verdict,
        {
            "model": model,
            "data": str(train),
            "data_note": data_note,
            "sft_config": sft_args,
            "accelerate_config": "configs/accelerate/cpu_2proc.yaml",
            "threads": {
                "1proc": recorder.machine["torch_threads"],
                "2proc_per_rank": rank_threads(),  # accelerate: OMP_NUM_THREADS = physical cores // ranks
            },
            "same_real_tokens": len({r["tokens"] for r in runs}) == 1,
            "order": order,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
