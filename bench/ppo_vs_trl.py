"""ppo_vs_trl: PPO episodes/s of `python -m pipelines.ppo` vs trl==1.12.0's PPOTrainer, same run.

    python -m bench.ppo_vs_trl                     # the demo's SFT + reward models, A B B A A B, 5 updates x 16
    python -m bench.ppo_vs_trl --policy runs/x/sft --reward_model runs/x/reward --updates 6
    python -m bench.ppo_vs_trl --quick             # tiny-llama smoke test (random reward head)

trl 1.13 removed its PPO trainer, so the peer runs in its own venv (.cache/bench/trl-1.12: torch 2.13.0, trl
1.12.0 and this project's pins of transformers/accelerate/datasets, so only TRL differs), built on first use.

Same run on both sides: policy, reference (= policy), reward model, prompts (data/textsql/train.jsonl
questions, chat template), rollout batch (16 = 8 x 2 accumulation, one minibatch), PPO epochs, response
length, temperature, KL coefficient and estimator and seed (from configs/ppo/default.yaml), the optimizer
(AdamW, eps 1e-5, no gradient clipping: trl 1.12's loop has none, so ours runs with max_grad_norm 0 here) and
the learning rate: 5e-5 (`--learning_rate`), not the default's 2e-6, which in 5 updates changes almost no
greedy held-out answer (equal accuracy on both sides would say nothing). Each side's response tokens per
episode (up to and including eos) are recorded: the same work per episode. The value function is each side's
own: the peer's a second model initialised from the reward model, ours what configs/ppo/default.yaml sets
(`shared_backbone: true`, a value head on the policy's trunk). Precision: `--precision` (default auto: bf16
where the CPU multiplies it natively) for both sides: ours as its `precision` key, the peer as trl's `bf16`
(autocast over its fp32 models, as TRL's example script loads them).

Speed: episodes/s = episodes / wall time of the updates after the first (model loading, evaluation and the
first update's one-off costs excluded), per update as each side logs it; the runs alternate A B B A A B (this
VM's CPU is shared: steal time comes in bursts) and each side's median of 3 runs is compared.
Quality: every run's final policy answers all 200 held-out questions (data/textsql/test.jsonl) greedily and
the verifier executes the answers (`python -m pipelines.eval compare`); each side's median execution
accuracy is compared. The reward-model score is reported beside it but is not the target: trl 1.12 reads
the reward at `<|im_end|>` while our reward model was trained on the chat template's trailing newline, so the
two sides' scores are not the same objective.
Memory: each side's peak resident set (getrusage, the whole run including loading), medians.
Target (PASS only when all hold): ratio >= 1.5, our execution accuracy >= the peer's, and our peak RSS <= 0.6x
the peer's."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    PYTHON,
    ROOT,
    TINY,
    Recorder,
    Verdict,
    abba,
    add_common_flags,
    apply_threads,
    loadavg,
    median,
    model_path,
    read_jsonl,
    run_child,
    write_yaml,
)
from pipelines.runner import Precision, add_precision_flag, announce_precision, resolve_precision

NAME = "ppo_vs_trl"
TARGET = 1.5
RSS_TARGET = 0.6  # our peak RSS / the peer's, at most
PEER_VENV = ROOT / ".cache" / "bench" / "trl-1.12"
PEER_SCRIPT = ROOT / "bench" / "plain_trl112_ppo.py"
PEER_PACKAGES = ("trl==1.12.0",)
SHARED_PINS = ("transformers", "accelerate", "datasets", "huggingface_hub", "tokenizers", "safetensors", "numpy")
PROMPTS = ROOT / "data" / "textsql" / "train.jsonl"
HELD_OUT = 200  # held-out questions (all of data/textsql/test.jsonl) answered greedily by every policy


def peer_python() -> Path:
    """The trl 1.12 venv's python, built once (torch from the CPU wheel first, like scripts/setup.sh)."""
    python = PEER_VENV / "bin" / "python"
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    wanted = [*PEER_PACKAGES, *(p for p in pins if p.split("==")[0] in SHARED_PINS)]
    stamp = PEER_VENV / f".installed-{hashlib.sha256(' '.join(wanted).encode()).hexdigest()[:16]}"
    if stamp.is_file():
        return python
    print(f"building the peer venv {PEER_VENV.relative_to(ROOT)} ({' '.join(wanted)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *wanted], check=True)
    stamp.touch()
    return python


def default_models() -> tuple[str, str]:
    """The newest demo run's SFT and reward models (`make demo` makes them)."""
    for run in sorted(ROOT.glob("runs/demo-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if (run / "sft" / "config.json").is_file() and (run / "reward" / "config.json").is_file():
            return str(run / "sft"), str(run / "reward")
    raise SystemExit("error: no runs/demo-*/sft and reward models: run `make demo` or pass --policy/--reward_model")


def tiny_reward_model() -> str:
    """tiny-llama with a seeded one-output score head (quick mode has no trained reward model)."""
    folder = ROOT / ".cache" / "bench" / "tiny-llama-reward"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(model_path(TINY))
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path(TINY), num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def add_model_flags(parser: Any) -> None:
    """--policy and --reward_model, shared by the PPO benches."""
    parser.add_argument("--policy", help="SFT model folder (default: the newest runs/demo-*/sft)")
    parser.add_argument("--reward_model", help="reward model folder (default: the newest runs/demo-*/reward)")


def ppo_models(args: Any) -> tuple[str, str]:
    """(policy, reward model) for a PPO bench: tiny-llama with a seeded head in quick mode, the flags, or the
    newest demo run's."""
    if args.quick:
        return model_path(TINY), tiny_reward_model()
    if args.policy and args.reward_model:
        return args.policy, args.reward_model
    return default_models()


def shared_settings(updates: int, learning_rate: float | None, quick: bool) -> dict[str, Any]:
    """Both sides' PPO settings: configs/ppo/default.yaml's (its learning rate unless `learning_rate`)."""
    ours = yaml.safe_load((ROOT / "configs" / "ppo" / "default.yaml").read_text())
    keys = ("temperature", "kl_coef", "kl_estimator", "cliprange", "cliprange_value", "vf_coef")
    keys += ("gamma", "lam", "whiten_rewards", "missing_eos_penalty", "seed", "max_new_tokens")
    settings = {key: ours[key] for key in keys} | {"learning_rate": learning_rate or ours["learning_rate"]}
    settings |= {"rollout_batch_size": ours["rollout_batch_size"], "ppo_epochs": ours["ppo_epochs"], "updates": updates}
    settings |= {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
    if quick:
        settings["max_new_tokens"] = 16
    return settings


def peer_config(s: dict[str, Any], output_dir: Path, precision: Precision) -> dict[str, Any]:
    """trl 1.12 PPOConfig keys for the same run: local batch = 8 × 2 × 1 minibatch = the rollout batch."""
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": s["per_device_train_batch_size"],
        "gradient_accumulation_steps": s["gradient_accumulation_steps"],
        "num_mini_batches": 1,
        "local_rollout_forward_batch_size": s["rollout_batch_size"],
        "total_episodes": s["updates"] * s["rollout_batch_size"],
        "num_ppo_epochs": s["ppo_epochs"],
        "response_length": s["max_new_tokens"],
        "stop_token": "eos",
        "temperature": s["temperature"],
        "missing_eos_penalty": s["missing_eos_penalty"],
        "kl_coef": s["kl_coef"],
        "kl_estimator": s["kl_estimator"],
        "learning_rate": s["learning_rate"],
        "adam_epsilon": 1e-5,  # pipelines.ppo's default
        "cliprange": s["cliprange"],
        "cliprange_value": s["cliprange_value"],
        "vf_coef": s["vf_coef"],
        "gamma": s["gamma"],
        "lam": s["lam"],
        "whiten_rewards": s["whiten_rewards"],
        "seed": s["seed"],
        "num_sample_generations": 0,
        "per_device_eval_batch_size": 4,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "bf16": precision.bf16,
        "use_cpu": True,
        "dataloader_pin_memory": False,
    }


def our_flags(s: dict[str, Any], output_dir: Path, precision: Precision) -> list[str]:
    flags = {
        "output_dir": output_dir,
        "precision": precision.name,
        "max_steps": s["updates"],
        "rollout_batch_size": s["rollout_batch_size"],
        "generation_batch_size": s["rollout_batch_size"],
        "per_device_train_batch_size": s["per_device_train_batch_size"],
        "gradient_accumulation_steps": s["gradient_accumulation_steps"],
        "eval_prompts": 0,
        "save_strategy": "no",
        "sample_every": 0,
        "report_to": "none",
        **{k: s[k] for k in ("ppo_epochs", "max_new_tokens", "temperature", "missing_eos_penalty", "kl_coef")},
        **{k: s[k] for k in ("kl_estimator", "learning_rate", "cliprange", "cliprange_value", "vf_coef", "seed")},
        **{k: s[k] for k in ("gamma", "lam", "whiten_rewards")},
        "max_grad_norm": 0.0,  # trl 1.12's PPO loop never clips gradients; ours does by default (1.0)
    }
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def steady_episodes_per_s(record: dict[str, Any], settings: dict[str, Any]) -> float:
    """Episodes/s of updates 2 on (the first pays for warm-up: allocator, kernels, the drafter's first batch)."""
    steady = record["update_seconds"][1:]
    return len(steady) * settings["rollout_batch_size"] / sum(steady)


def compare_held_out(
    tmp: Path, start: str, reward_model: str, policies: dict[str, Path], samples: int
) -> dict[str, Any]:
    """Held-out metrics of the start policy and every run's final policy (same questions, greedy; the verifier
    executes each answer)."""
    out = tmp / "comparison"
    cmd = [PYTHON, "-m", "pipelines.eval", "compare", "--models", start, *map(str, policies.values())]
    cmd += ["--names", "start", *policies, "--reward_model", reward_model, "--samples", str(samples)]
    cmd += ["--output_dir", str(out)]
    run_child(cmd, tmp / "comparison.log", f"held-out comparison of {len(policies) + 1} policies")
    return json.loads((out / "comparison.json").read_text())["metrics"]


def reward_gain(scores: list[float]) -> float:
    third = max(1, len(scores) // 3)
    return sum(scores[-third:]) / third - sum(scores[:third]) / third


def run_ours(tmp: Path, policy: str, reward_model: str, s: dict[str, Any], precision: Precision) -> dict[str, Any]:
    out = tmp / "ours"
    cmd = [PYTHON, "-m", "pipelines.ppo", "--config", str(ROOT / "configs" / "ppo" / "default.yaml")]
    cmd += ["--model_name_or_path", policy, "--reward_model_path", reward_model, "--dataset", str(PROMPTS)]
    cmd += ["--eval_dataset", str(PROMPTS), *our_flags(s, out, precision)]
    load = loadavg()
    wall = run_child(cmd, tmp / "ours.log", "pipelines.ppo")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [row for row in read_jsonl(out / "metrics.jsonl") if "episodes_per_second" in row]
    seconds = [s["rollout_batch_size"] / row["episodes_per_second"] for row in metrics]
    return {
        "command": shlex.join(cmd),
        "wall_s": round(wall, 1),
        "loadavg": load,
        "train_seconds": summary["train"]["train_runtime"] if "train" in summary else summary["train_runtime"],
        "update_seconds": seconds,
        "scores": [row["objective/scores"] for row in metrics],
        "response_tokens_per_episode": sum(row["response/length_mean"] for row in metrics) / len(metrics),
        "peak_rss_mib": summary["peak_rss_mib"],
        "policy": str(out),
    }


def run_peer(tmp: Path, policy: str, reward_model: str, s: dict[str, Any], precision: Precision) -> dict[str, Any]:
    out = tmp / "peer"
    config = write_yaml(tmp / "peer.yaml", peer_config(s, out, precision))
    cmd = [str(peer_python()), str(PEER_SCRIPT), "--config", str(config), "--policy", policy]
    cmd += ["--reward_model", reward_model, "--data", str(PROMPTS)]
    load = loadavg()
    wall = run_child(cmd, tmp / "peer.log", "trl 1.12 PPO")
    result = json.loads((out / "result.json").read_text())
    return {
        "command": shlex.join(cmd),
        "wall_s": round(wall, 1),
        "loadavg": load,
        "train_seconds": result["train_seconds"],
        "update_seconds": result["update_seconds"],
        "scores": [row["objective/scores"] for row in result["log_history"] if "objective/scores" in row],
        "response_tokens_per_episode": result["response_tokens_per_episode"],
        "peak_rss_mib": result["peak_rss_mib"],
        "policy": str(out),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ppo_vs_trl", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    add_model_flags(parser)
    parser.add_argument("--updates", type=int, default=None, help="PPO updates per run (default 5; quick 2)")
    parser.add_argument("--reps", type=int, default=None, help="runs per side: 3 gives A B B A A B (quick: 1)")
    parser.add_argument(
        "--learning_rate", type=float, default=5e-5, help="both sides' learning rate (default 5e-5: see the docstring)"
    )
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    policy, reward_model = ppo_models(args)
    settings = shared_settings(args.updates or (2 if args.quick else 5), args.learning_rate, args.quick)
    peer_python()  # built before any timing
    recorder = Recorder(NAME, args.quick, precision)
    order = abba(args.reps or (1 if args.quick else 3), "ours", "peer")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ppo-vs-trl-") as tmp_name:
        for i, side in enumerate(order):
            tmp = Path(tmp_name) / f"run-{i}"
            tmp.mkdir()
            record = (run_ours if side == "ours" else run_peer)(tmp, policy, reward_model, settings, precision)
            record |= {"side": side, "rollout_score_gain": reward_gain(record["scores"])}
            record["steady_episodes_per_s"] = steady_episodes_per_s(record, settings)
            print(
                f"  run {i + 1}/{len(order)} {side:<4} {record['steady_episodes_per_s']:.3f} episodes/s "
                f"(updates 2-{len(record['update_seconds'])}), {record['response_tokens_per_episode']:.1f} response "
                f"tokens/episode, peak RSS {record['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            runs.append(record)
        names = [f"{record['side']}{i + 1}" for i, record in enumerate(runs)]
        policies = {name: Path(record["policy"]) for name, record in zip(names, runs, strict=True)}
        samples = 8 if args.quick else HELD_OUT
        held_out = compare_held_out(Path(tmp_name), policy, reward_model, policies, samples)
    for name, record in zip(names, runs, strict=True):
        record["held_out"] = held_out[name]
        record["held_out_reward_gain"] = held_out[name]["reward_mean"] - held_out["start"]["reward_mean"]

    def side(name: str, key: str) -> float:
        return median([r[key] for r in runs if r["side"] == name])

    def accuracies(name: str) -> list[float]:
        return [r["held_out"]["execution_accuracy"] for r in runs if r["side"] == name]

    accuracy = {name: median(accuracies(name)) for name in ("ours", "peer")}
    accuracy_ok = accuracy["ours"] >= accuracy["peer"]
    gains = {name: side(name, "held_out_reward_gain") for name in ("ours", "peer")}
    tokens = {name: side(name, "response_tokens_per_episode") for name in ("ours", "peer")}
    rss = {name: side(name, "peak_rss_mib") for name in ("ours", "peer")}
    rss_ok = rss["ours"] <= RSS_TARGET * rss["peer"]
    episodes = settings["updates"] * settings["rollout_batch_size"]
    verdict = Verdict(
        NAME,
        "pipelines.ppo",
        side("ours", "steady_episodes_per_s"),
        "trl 1.12 PPOTrainer",
        side("peer", "steady_episodes_per_s"),
        "episodes/s",
        TARGET,
        note=f"medians of {len(order) // 2} run(s) each; execution accuracy on {samples} held-out questions after "
        f"{episodes} episodes at lr {settings['learning_rate']:g}: start "
        f"{held_out['start']['execution_accuracy']:.3f}, ours {accuracy['ours']:.3f} "
        f"({', '.join(f'{a:.3f}' for a in accuracies('ours'))}) vs peer {accuracy['peer']:.3f} "
        f"({', '.join(f'{a:.3f}' for a in accuracies('peer'))}), target ours >= peer; reward-model gain "
        f"{gains['ours']:+.2f} vs {gains['peer']:+.2f} (not the same objective: see the docstring); response "
        f"tokens/episode {tokens['ours']:.1f} vs {tokens['peer']:.1f}; peak RSS {rss['ours']:.0f} vs "
        f"{rss['peer']:.0f} MiB ({rss['ours'] / rss['peer']:.2f}x, target <= {RSS_TARGET:g})",
        condition_met=accuracy_ok and rss_ok,
    )
    recorder.finish(
        verdict,
        {
            "policy": policy,
            "reward_model": reward_model,
            "settings": settings,
            "order": order,
            "held_out": held_out,
            "held_out_reward_gain": gains,
            "execution_accuracy": accuracy,
            "execution_accuracy_at_least_equal": accuracy_ok,
            "response_tokens_per_episode": tokens,
            "peak_rss_mib": rss,
            "peak_rss_within_target": rss_ok,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
