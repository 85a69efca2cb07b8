"""sft_vs_trl: training tokens/s of `python -m pipelines.sft` vs a plain TRL `SFTTrainer` script.

    python -m bench.sft_vs_trl            # SmolLM2-135M, 10 steps a run, A B B A (~8 min on 2 cores)
    python -m bench.sft_vs_trl --quick    # tiny-llama smoke test

Both sides get the same model, data rows, seed and SFTConfig (one YAML file); no generation eval.
tokens/s = non-padding tokens / the Trainer's own `train_runtime`, over the steady-state steps;
the runs alternate (A B B A) and each side's median is compared. Target: ratio >= 0.97.
A short untimed run of each side goes first: the first process to read the model and import
torch/TRL pays for a cold page cache (measured: the first run was 13 % slower than its twin).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
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
    report,
    run_child,
    run_pipelines_sft,
    slug,
    textsql_data,
    throughput,
    write_yaml,
)

NAME = "sft_vs_trl"
TARGET = 0.97
PLAIN_SCRIPT = ROOT / "bench" / "plain_trl_sft.py"


def run_plain(
    label: str, tmp: Path, config: Path, model: str, train: Path, samples: int, warmup: int
) -> dict[str, Any]:
    """One run of bench/plain_trl_sft.py; its figures (the output dir is deleted after)."""
    out = tmp / slug(label)
    cmd = [PYTHON, str(PLAIN_SCRIPT), "--config", str(config), "--model", model, "--data", str(train)]
    cmd += ["--output_dir", str(out), "--max_train_samples", str(samples)]
    load = loadavg()
    wall = run_child(cmd, tmp / f"{slug(label)}.log", label)
    figures = throughput(json.loads((out / "log_history.json").read_text()), warmup)
    shutil.rmtree(out, ignore_errors=True)
    report(label, figures, wall)
    return {"label": label, "command": shlex.join(cmd), "wall_s": round(wall, 1), "loadavg": load, **figures.as_dict()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sft_vs_trl", description=__doc__.splitlines()[0])
    add_common_flags(parser, steps=10, warmup=2)
    parser.add_argument("--reps", type=int, default=None, help="A/B pairs: 2 gives A B B A (quick: 1)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    model = model_path(TINY if args.quick else SMOLLM2)
    steps = args.steps or (4 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    reps = args.reps or (1 if args.quick else 2)
    recorder = Recorder(NAME, args.quick)

    with tempfile.TemporaryDirectory(prefix="bench-sft-vs-trl-") as tmp_name:
        tmp = Path(tmp_name)
        train, eval_file, data_note = textsql_data(tmp)
        sft_args = common_args(max_steps=steps)
        config = write_yaml(tmp / "sft.yaml", sft_args)
        samples = steps * sft_args["per_device_train_batch_size"]  # exactly one pass over the same rows
        order = abba(reps, "pipelines", "plain")
        warm_config = write_yaml(tmp / "warmup.yaml", common_args(max_steps=2))
        warm_samples = str(2 * sft_args["per_device_train_batch_size"])
        run_pipelines_sft(
            "warm-up pipelines",
            tmp,
            warm_config,
            model,
            (train, eval_file),
            0,
            ["--max_train_samples", warm_samples, "--columns", "prompt=question,completion=answer"],
        )
        run_plain("warm-up plain", tmp, warm_config, model, train, int(warm_samples), 0)
        runs = []
        for i, side in enumerate(order):
            label = f"run {i + 1}/{len(order)} {side}"
            if side == "pipelines":
                extra = ["--columns", "prompt=question,completion=answer", "--max_train_samples", str(samples)]
                _, record = run_pipelines_sft(label, tmp, config, model, (train, eval_file), warmup, extra)
            else:
                record = run_plain(label, tmp, config, model, train, samples, warmup)
            runs.append({"side": side, **record})

    def side_median(side: str, key: str) -> float:
        return median([r[key] for r in runs if r["side"] == side])

    verdict = Verdict(
        NAME,
        "pipelines.sft",
        side_median("pipelines", "steady_tokens_per_s"),
        "plain TRL",
        side_median("plain", "steady_tokens_per_s"),
        "tok/s",
        TARGET,
        note=f"median of {reps} run(s) each, steps {warmup + 1}-{steps}",
    )
    recorder.finish(
        verdict,
        {
            "model": model,
            "data": str(train),
            "data_note": data_note,
            "sft_config": sft_args,
            "max_train_samples": samples,
            "order": order,
            "identical_token_counts": len({r["tokens"] for r in runs}) == 1,
            "whole_run_median_tokens_per_s": {
                "pipelines": side_median("pipelines", "tokens_per_s"),
                "plain": side_median("plain", "tokens_per_s"),
            },
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
