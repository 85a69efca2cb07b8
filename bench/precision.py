"""precision_*: what `precision: auto` buys over fp32 on this machine, per stage, A B B A in one run.

    python -m bench.precision sft           # pipelines.sft training tokens/s, SmolLM2-135M (~8 min on 2 cores)
    python -m bench.precision reward        # pipelines.reward training pairs/s (~6 min)
    python -m bench.precision generation    # generate_texts tokens/s, batch 16 and 64, 64 new tokens (~6 min)
    python -m bench.precision rollout       # PPO rollout sampling tokens/s, as the trainer samples (~5 min)
    python -m bench.precision ppo           # pipelines.ppo episodes/s, 5 updates a run (~20 min; a demo run's models)
    python -m bench --only precision_sft,precision_reward,precision_generation,precision_rollout,precision_ppo

Each side runs the same thing with `--precision auto` and `--precision fp32`: where the CPU multiplies
bf16 natively (AVX512-BF16, AMX) auto is bf16 — autocast for training, bf16 weights for generation —
and the target is >= 1.7x fp32; elsewhere auto is fp32 and must cost nothing (>= 0.98). SFT and reward
use the peer benches' configs (batch 8, steady state after the warm-up steps); generation greedy-decodes
the same held-out prompts with fp32 and bf16 weights (answers may differ in a token or two, so tokens/s,
not time, is compared). Rollout samples batches of training prompts with the PPO trainer's `sample` the way
the trainer does: from the fp32 policy, or for bf16 from its bf16 copy under bf16 autocast. PPO runs
`python -m pipelines.ppo` on configs/ppo/default.yaml (5 updates, the newest demo run's SFT policy and
reward model, or --policy and --reward_model) and compares the steady episodes/s (updates 2-5), with peak RSS alongside.
Where bf16 is native each row also measures the machine's bf16:fp32 matmul peak (2048² products, as `bench.mfu`):
no stage can gain more than that ratio, and the more of a step lies outside its matmuls, the less it gains.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

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
from bench.mfu import matmul_peak
from bench.ppo_vs_trl import add_model_flags, ppo_models, run_ours, shared_settings, steady_episodes_per_s
from bench.reward_vs_trl import REWARD_COMMON, pairs_data
from bench.vs_plain import steady_rate
from pipelines.runner import Precision, resolve_precision

TARGET_NATIVE = 1.7  # bf16 where the CPU has it: the target for training and generation
TARGET_FALLBACK = 0.98  # auto is fp32 there: at most 2 % slower, i.e. nothing
STAGES = ("sft", "reward", "generation", "rollout", "ppo")
COLUMNS = ["--columns", "prompt=question,completion=answer"]
BF16, FP32 = torch.bfloat16, torch.float32


def training_runs(stage: str, model: str, sides: dict[str, Precision], args: argparse.Namespace) -> list[dict]:
    """A B B A runs of pipelines.sft / pipelines.reward, one per side label; each with its steady rate."""
    steps = args.steps or (4 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    config = common_args(max_steps=steps) if stage == "sft" else {**REWARD_COMMON, "max_steps": steps}
    batch = config["per_device_train_batch_size"]
    data = textsql_data if stage == "sft" else pairs_data
    unit = "tok/s" if stage == "sft" else "samples/s"
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"bench-precision-{stage}-") as tmp_name:
        tmp = Path(tmp_name)
        train, eval_file, _ = data(tmp)
        config_file = write_yaml(tmp / "config.yaml", config)
        flags = [*(COLUMNS if stage == "sft" else []), "--max_train_samples", str(steps * batch)]
        for i, side in enumerate(order := abba(args.reps, *sides)):
            label, files = f"run {i + 1}/{len(order)} {side}", (train, eval_file)
            _, record = run_pipelines_sft(
                label, tmp, config_file, model, files, warmup, sides[side], flags, stage=f"pipelines.{stage}"
            )
            runs.append({"side": side, **record, "rate": steady_rate(record, unit, batch)})
    return runs


def generation_runs(model_dir: str, sides: dict[str, Precision], args: argparse.Namespace) -> list[dict]:
    """generate_texts at batch 16 and 64 with each side's weights, A B B A; tokens/s of each."""
    from transformers import AutoModelForCausalLM

    from bench.generation import held_out_prompts
    from pipelines.runner import generate_texts, load_tokenizer

    sizes = (4, 8) if args.quick else (16, 64)
    with tempfile.TemporaryDirectory(prefix="bench-precision-generation-") as tmp_name:
        prompts, _ = held_out_prompts(max(sizes), Path(tmp_name))
    tokenizer = load_tokenizer(model_dir)
    models = {side: AutoModelForCausalLM.from_pretrained(model_dir, dtype=p.dtype).eval() for side, p in sides.items()}
    for side, model in models.items():  # warm-up: allocator, thread pool, oneDNN kernels of each dtype
        generate_texts(model, tokenizer, prompts[:4], max_new_tokens=8, batch_size=4, desc=f"warm-up {side}")
    runs = []
    for i, side in enumerate(order := abba(args.reps, *sides)):
        for size in sizes:
            load = loadavg()
            start = time.perf_counter()
            _, stats = generate_texts(
                models[side], tokenizer, prompts[:size], max_new_tokens=64, batch_size=size, desc=f"{side} b={size}"
            )
            runs.append(
                {
                    "label": f"run {i + 1}/{len(order)} {side} b={size}",
                    "side": side,
                    "batch": size,
                    "tokens": stats.tokens,
                    "seconds": stats.seconds,
                    "wall_s": time.perf_counter() - start,
                    "rate": stats.tokens_per_second,
                    "loadavg": load,
                }
            )
    del models
    gc.collect()
    return runs


def rollout_runs(sides: dict[str, Precision], args: argparse.Namespace) -> list[dict]:
    """The PPO trainer's `sample` on the same batches of training prompts, both sides alternating which goes
    first, from the weights the trainer samples with: the fp32 policy, or for bf16 its bf16 copy (under the
    run's bf16 autocast)."""
    import contextlib
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from bench.rollout import rollout_batches
    from pipelines.ppo.rollout import sample
    from pipelines.runner import NgramDrafter, load_tokenizer

    config, chunks = rollout_batches(args.quick)
    batch_size, temperature = config["rollout_batch_size"], config["temperature"]
    max_new_tokens = config["max_new_tokens"]
    policy = ppo_models(args)[0]
    tokenizer = load_tokenizer(policy, padding_side="left")
    fp32 = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    models = {side: fp32 if not p.bf16 else copy.deepcopy(fp32).to(torch.bfloat16) for side, p in sides.items()}

    def under(side: str) -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if sides[side].bf16 else contextlib.nullcontext()

    drafters = {side: NgramDrafter() for side in sides}  # each side's drafter learns from its own samples
    for side in sides:  # warm-up, untimed: oneDNN kernels of each dtype
        with under(side):
            sample(models[side], tokenizer, chunks[0][:2], 8, temperature, 2)
    runs = []
    for index, chunk in enumerate(chunks):
        for side in abba(1, *sides) if index % 2 == 0 else abba(1, *reversed(list(sides))):
            generator = torch.Generator().manual_seed(index)  # both sides of a batch draw from the same seed
            load, start = loadavg(), time.perf_counter()
            with under(side):
                rollout = sample(
                    models[side],
                    tokenizer,
                    chunk,
                    max_new_tokens,
                    temperature,
                    batch_size,
                    None,
                    drafters[side],
                    config["draft_tokens"],
                    generator,
                )
            seconds = time.perf_counter() - start
            tokens = int(rollout.response_mask.sum())
            runs.append(
                {
                    "label": f"batch {index + 1} {side}",
                    "side": side,
                    "prompts": len(chunk),
                    "temperature": temperature,
                    "tokens": tokens,
                    "seconds": seconds,
                    "rate": tokens / seconds,
                    "loadavg": load,
                }
            )
    return runs


def ppo_runs(sides: dict[str, Precision], args: argparse.Namespace) -> list[dict]:
    """pipelines.ppo with configs/ppo/default.yaml in each precision, A B B A; steady episodes/s of each."""
    policy, reward_model = ppo_models(args)
    settings = shared_settings(2 if args.quick else 5, None, args.quick)  # the config's learning rate
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-ppo-") as tmp_name:
        for i, side in enumerate(order := abba(args.reps, *sides)):
            tmp = Path(tmp_name) / f"run-{i}"
            tmp.mkdir()
            record = run_ours(tmp, policy, reward_model, settings, sides[side])
            rate = steady_episodes_per_s(record, settings)
            print(
                f"  run {i + 1}/{len(order)} {side}: {rate:.3f} episodes/s, peak RSS {record['peak_rss_mib']:.0f} MiB"
            )
            runs.append({"side": side, **record, "rate": rate})
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    add_common_flags(parser, steps=10, warmup=2)
    parser.add_argument("--reps", type=int, default=2, help="A/B pairs (2: A B B A)")
    add_model_flags(parser)  # rollout and ppo: the policy (and reward model) to run
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    auto = resolve_precision("auto")
    print(f"precision: {auto.reason}", flush=True)
    sides = {f"auto ({auto.name})": auto, "fp32": resolve_precision("fp32")}
    # The hardware's own bf16:fp32 matmul ratio bounds every row (a step is never faster than its products
    # allow): measured here, not assumed. Only where bf16 is native: emulated, a 2048² product takes minutes.
    peaks = {}
    if auto.bf16:
        peaks = {str(dtype): matmul_peak(dtype, blocks=3, reps=3)["gflops_peak"] for dtype in (BF16, FP32)}
        print(f"matmul peak (2048²): bf16 {peaks[str(BF16)]:.0f} vs fp32 {peaks[str(FP32)]:.0f} GFLOP/s", flush=True)
    model = model_path(TINY if args.quick else SMOLLM2)
    name = f"precision_{args.stage}"
    recorder = Recorder(name, args.quick)
    if args.stage == "generation":
        runs = generation_runs(model, sides, args)
        widest = max(r["batch"] for r in runs)
        headline = [r for r in runs if r["batch"] == widest]
        unit = f"tok/s (b={widest})"
    elif args.stage == "rollout":
        runs = headline = rollout_runs(sides, args)
        unit = "tok/s"
    elif args.stage == "ppo":
        runs = headline = ppo_runs(sides, args)
        unit = "episodes/s"
    else:
        runs = training_runs(args.stage, model, sides, args)
        headline = runs
        unit = "tok/s" if args.stage == "sft" else "pairs/s"
    a_label, b_label = sides
    rates = {side: median([r["rate"] for r in headline if r["side"] == side]) for side in sides}
    note = f"median of {args.reps} run(s) each"
    if args.stage == "rollout":  # batches differ in length: all tokens over all seconds
        rates = {
            side: sum(r["tokens"] for r in runs if r["side"] == side)
            / sum(r["seconds"] for r in runs if r["side"] == side)
            for side in sides
        }
        note = f"{len(runs) // 2} batches of {runs[0]['prompts']} prompts a side, temperature {runs[0]['temperature']}"
    if args.stage == "ppo":
        rss = {side: max(r["peak_rss_mib"] for r in runs if r["side"] == side) for side in sides}
        note += f", peak RSS {rss[a_label]:.0f} vs {rss[b_label]:.0f} MiB"
    if peaks:
        note += f", matmul peak ratio {peaks[str(BF16)] / peaks[str(FP32)]:.2f}x"
    per_batch = ""
    if args.stage == "generation":
        ratios = [
            median([r["rate"] for r in runs if r["batch"] == b and r["side"] == a_label])
            / median([r["rate"] for r in runs if r["batch"] == b and r["side"] == b_label])
            for b in sorted({r["batch"] for r in runs})
        ]
        per_batch = "ratio by batch " + " ".join(f"{x:.2f}" for x in ratios) + ", "
    verdict = Verdict(
        name,
        a_label,
        rates[a_label],
        b_label,
        rates[b_label],
        unit,
        TARGET_NATIVE if auto.bf16 else TARGET_FALLBACK,
        note=f"{per_batch}{note}",
    )
    recorder.finish(
        verdict,
        {
            "model": ppo_models(args)[0] if args.stage in ("rollout", "ppo") else model,
            "auto": auto.as_dict(),
            "matmul_peak_gflops": peaks,
            "targets": {"native_bf16": TARGET_NATIVE, "no_native_bf16": TARGET_FALLBACK},
            "order": abba(args.reps, *sides),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
