"""ppo_quality: does PPO against the learned reward model make the policy better by an independent judge?

    python -m bench.ppo_quality                                   # the demo's SFT + reward models, 3 seeds
    python -m bench.ppo_quality --policy runs/x/sft --reward_model runs/x/reward --seeds 0 1 2
    python -m bench.ppo_quality -- --max_steps 16 --kl_target 4   # any pipelines.ppo flag after `--`
    python -m bench.ppo_quality --quick                           # tiny-llama smoke test

Each seed trains `python -m pipelines.ppo --config configs/ppo/default.yaml` from the same SFT policy
and reward model; then `python -m pipelines.eval compare` answers every held-out text-to-SQL question
(data/textsql/test.jsonl, 200) greedily with the SFT policy and each PPO policy, and the verifier
executes the answers. The line is PASS only when every target holds:

- execution accuracy: mean gain over the SFT policy >= 3 points and no seed below the SFT policy;
- answers no longer than the SFT policy's (mean new tokens) and the eos rate kept (no seed below SFT's);
- where a PPO answer and the SFT answer differ, PPO wins >= 60 % of them by execution (a win: PPO right
  and SFT wrong; a tie, both right or both wrong, counts half), summed over the seeds.

The reward-model score of each policy is reported beside it: a learned score that rises while the
verifier's accuracy falls is reward over-optimisation. Runs are kept under runs/bench-ppo-quality/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    ROOT,
    Recorder,
    Verdict,
    add_common_flags,
    apply_threads,
    model_path,
    read_jsonl,
    run_child,
)
from bench.ppo_vs_trl import add_model_flags, ppo_models

NAME = "ppo_quality"
GAIN_TARGET = 0.03
WIN_TARGET = 0.60
HELD_OUT = ROOT / "data" / "textsql" / "test.jsonl"
BASE = "smollm2-135m-instruct"  # what the demo's SFT starts from


def train(policy: str, reward_model: str, seed: int, out: Path, extra: list[str], quick: bool) -> dict[str, Any]:
    cmd = [PYTHON, "-m", "pipelines.ppo", "--config", str(ROOT / "configs" / "ppo" / "default.yaml")]
    cmd += ["--model_name_or_path", policy, "--reward_model_path", reward_model, "--seed", str(seed)]
    cmd += ["--output_dir", str(out), "--report_to", "none"]
    if quick:
        cmd += ["--max_steps", "2", "--eval_prompts", "8", "--eval_every", "1", "--max_new_tokens", "16"]
    cmd += extra
    wall = run_child(cmd, out.parent / f"{out.name}.log", f"PPO seed {seed}")
    rows = read_jsonl(out / "metrics.jsonl")
    updates = [r for r in rows if "objective/kl" in r]
    return {
        "command": shlex.join(cmd),
        "wall_s": round(wall, 1),
        "kl": [r["objective/kl"] for r in updates],
        "kl_coef": [r["kl_coef"] for r in updates],
        "held_out_curve": [r for r in rows if "eval/score_mean" in r],
    }


def compare(
    base: str | None, policy: str, reward_model: str, runs: dict[str, Path], out: Path, samples: int
) -> dict[str, Any]:
    names = [*(["base"] if base else []), "sft", *runs]
    models = [*([base] if base else []), policy, *map(str, runs.values())]
    cmd = [PYTHON, "-m", "pipelines.eval", "compare", "--models", *models]
    cmd += ["--names", *names, "--reward_model", reward_model, "--data", str(HELD_OUT)]
    cmd += ["--samples", str(samples), "--output_dir", str(out)]
    run_child(cmd, out.parent / "compare.log", "held-out comparison")
    comparison = json.loads((out / "comparison.json").read_text())
    comparison["generations"] = read_jsonl(out / "generations.jsonl")
    return comparison


def head_to_head(comparison: dict[str, Any], challenger: str, baseline: str = "sft") -> dict[str, int]:
    """Where the two answers differ: wins, losses and ties of `challenger` by the verifier."""
    correct = comparison["per_prompt"]
    counts = {"differing": 0, "wins": 0, "losses": 0, "ties": 0}
    for i, row in enumerate(comparison["generations"]):
        if row[challenger] == row[baseline]:
            continue
        counts["differing"] += 1
        mine, theirs = correct[challenger]["correct"][i], correct[baseline]["correct"][i]
        counts["wins" if mine > theirs else "losses" if mine < theirs else "ties"] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ppo_quality", description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--base", default=BASE, help="the model SFT started from, reported beside (none: skip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=200, help="held-out questions (all 200 by default)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-ppo-quality")
    add_common_flags(parser)
    parser.add_argument("ppo_flags", nargs="*", help="extra pipelines.ppo flags, after `--`")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    policy, reward_model = ppo_models(args)
    recorder = Recorder(NAME, args.quick)
    if args.quick:
        args.out = args.out.with_name(args.out.name + "-quick")
    shutil.rmtree(args.out, ignore_errors=True)  # the bench's own folder: each run starts from nothing
    args.out.mkdir(parents=True)
    runs = {f"ppo-seed{seed}": args.out / f"ppo-seed{seed}" for seed in args.seeds}
    training = {
        name: train(policy, reward_model, seed, out, args.ppo_flags, args.quick)
        for (name, out), seed in zip(runs.items(), args.seeds, strict=True)
    }
    base = None if args.quick or args.base == "none" else model_path(args.base)
    samples = 8 if args.quick else args.samples
    comparison = compare(base, policy, reward_model, runs, args.out / "comparison", samples)
    metrics = comparison["metrics"]
    sft = metrics["sft"]
    seeds = {
        name: {
            "execution_accuracy": metrics[name]["execution_accuracy"],
            "gain": metrics[name]["execution_accuracy"] - sft["execution_accuracy"],
            "reward_mean": metrics[name]["reward_mean"],
            "mean_new_tokens": metrics[name]["mean_new_tokens"],
            "eos_rate": metrics[name]["eos_rate"],
            **head_to_head(comparison, name),
        }
        for name in runs
    }
    gains = [s["gain"] for s in seeds.values()]
    differing = sum(s["differing"] for s in seeds.values())
    win_rate = (sum(s["wins"] for s in seeds.values()) + sum(s["ties"] for s in seeds.values()) / 2) / max(differing, 1)
    checks = {
        "mean gain >= 3 points": statistics.mean(gains) >= GAIN_TARGET,
        "no seed below SFT": min(gains) >= 0,
        "no longer than SFT": all(s["mean_new_tokens"] <= sft["mean_new_tokens"] for s in seeds.values()),
        "eos rate kept": all(s["eos_rate"] >= sft["eos_rate"] for s in seeds.values()),
        "win rate where different >= 60 %": win_rate >= WIN_TARGET,
    }
    spread = f"{min(gains):+.3f}..{max(gains):+.3f}"
    verdict = Verdict(
        NAME,
        "PPO",
        statistics.mean(s["execution_accuracy"] for s in seeds.values()),
        "SFT",
        sft["execution_accuracy"],
        "execution accuracy",
        1.0 + GAIN_TARGET / max(sft["execution_accuracy"], 1e-9),
        note=f"{len(seeds)} seeds on {comparison['prompts']} held-out questions: gain "
        f"{statistics.mean(gains):+.3f} (spread {spread}); win rate where answers differ {win_rate:.2f} "
        f"({differing} differing); reward {sft['reward_mean']:.2f} -> "
        f"{statistics.mean(s['reward_mean'] for s in seeds.values()):.2f}; new tokens {sft['mean_new_tokens']:.1f} -> "
        f"{statistics.mean(s['mean_new_tokens'] for s in seeds.values()):.1f}; failed: "
        + (", ".join(k for k, ok in checks.items() if not ok) or "none"),
        condition_met=all(checks.values()),
    )
    recorder.finish(
        verdict,
        {
            "policy": policy,
            "reward_model": reward_model,
            "ppo_flags": args.ppo_flags,
            "base": metrics.get("base"),
            "sft": sft,
            "seeds": seeds,
            "checks": checks,
            "win_rate_where_different": win_rate,
            "training": training,
        },
    )


if __name__ == "__main__":
    main()
