"""sft_vs_trl: training tokens/s of `python -m pipelines.sft` vs a plain TRL `SFTTrainer` script.

    python -m bench.sft_vs_trl                     # SmolLM2-135M, 10 steps a run, A B B A (~8 min on 2 cores)
    python -m bench.sft_vs_trl --precision fp32    # both sides in fp32 (default auto: bf16 where native)
    python -m bench.sft_vs_trl --quick             # tiny-llama smoke test

Both sides get the same model, data rows, seed, SFTConfig (one YAML file) and precision; no generation eval.
tokens/s = non-padding tokens / the Trainer's own `train_runtime`, over the steady-state steps;
warm-up runs first, then A B B A, each side's median compared (bench/vs_plain.py). Target: ratio >= 0.97.
"""

from __future__ import annotations

import argparse

from bench.common import ROOT, SMOLLM2, TINY, add_common_flags, apply_threads, common_args, model_path, textsql_data
from bench.vs_plain import PeerComparison, compare_with_plain
from pipelines.runner import add_precision_flag, announce_precision, resolve_precision


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sft_vs_trl", description=__doc__.splitlines()[0])
    add_common_flags(parser, steps=10, warmup=2)
    parser.add_argument("--reps", type=int, default=None, help="A/B pairs: 2 gives A B B A (quick: 1)")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    precision = announce_precision(resolve_precision(args.precision))
    spec = PeerComparison(
        name="sft_vs_trl",
        stage="pipelines.sft",
        plain_script=ROOT / "bench" / "plain_trl_sft.py",
        pipelines_flags=["--columns", "prompt=question,completion=answer"],
        config=common_args(max_steps=args.steps or (4 if args.quick else 10)),
        unit="tok/s",
        target=0.97,
    )
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    model = model_path(TINY if args.quick else SMOLLM2)
    reps = args.reps or (1 if args.quick else 2)
    compare_with_plain(spec, model, textsql_data, warmup, reps, args.quick, precision)


if __name__ == "__main__":
    main()
