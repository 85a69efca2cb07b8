"""reward_vs_trl: reward-model training samples/s of `python -m pipelines.reward` vs a plain TRL script.

    python -m bench.reward_vs_trl                     # SmolLM2-135M + a fresh score head, 10 steps a run (~6 min)
    python -m bench.reward_vs_trl --precision fp32    # both sides in fp32 (default auto: bf16 where native)
    python -m bench.reward_vs_trl --quick             # tiny-llama smoke test

Both sides train a one-output classifier on the same text-to-SQL preference pairs with one
RewardConfig YAML and precision (bench/plain_trl_reward.py is the peer). samples/s = pairs over the Trainer's own
`train_runtime` of the steady-state steps; warm-up runs first, then A B B A, each side's median
compared (bench/vs_plain.py). Target: ratio >= 0.97.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import ROOT, SMOLLM2, TINY, add_common_flags, apply_threads, model_path, read_jsonl, write_jsonl
from bench.vs_plain import PeerComparison, compare_with_plain
from pipelines.runner import add_precision_flag, announce_precision, resolve_precision

PAIRS_TRAIN = ROOT / "data" / "textsql" / "pairs_train.jsonl"

REWARD_COMMON = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5.0e-5,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_length": 160,
    "gradient_checkpointing": False,
    "seed": 42,
    "logging_steps": 1,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "include_num_input_tokens_seen": True,
    "dataloader_pin_memory": False,
    "use_cpu": True,
}


def pairs_data(tmp: Path) -> tuple[Path, Path, str]:
    """(train pairs, a 2-pair eval file, note): the held-out scoring after training stays a second."""
    columns = ("prompt", "chosen", "rejected")
    eval_rows = [{c: row[c] for c in columns} for row in read_jsonl(PAIRS_TRAIN)[:2]]
    return PAIRS_TRAIN, write_jsonl(tmp / "eval_2pairs.jsonl", eval_rows), ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reward_vs_trl", description=__doc__.splitlines()[0])
    add_common_flags(parser, steps=10, warmup=2)
    parser.add_argument("--reps", type=int, default=None, help="A/B pairs: 2 gives A B B A (quick: 1)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    spec = PeerComparison(
        name="reward_vs_trl",
        stage="pipelines.reward",
        plain_script=ROOT / "bench" / "plain_trl_reward.py",
        pipelines_flags=[],
        config={**REWARD_COMMON, "max_steps": args.steps or (4 if args.quick else 10)},
        unit="samples/s",
        target=0.97,
    )
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    model = model_path(TINY if args.quick else SMOLLM2)
    reps = args.reps or (1 if args.quick else 2)
    compare_with_plain(spec, model, pairs_data, warmup, reps, args.quick, precision)


if __name__ == "__main__":
    main()
