"""Run the benchmarks in sequence, each in its own process; one line each, JSON in bench/results/.

python -m bench                          # all of them on SmolLM2-135M (~35 min on 2 cores)
python -m bench --quick                  # tiny-llama smoke test of the whole set (~2-4 min)
python -m bench --only sft_vs_trl        # one (or several: --only packing,mfu)
python -m bench --only sft_vs_trl,reward_vs_trl,generation --precision fp32   # those rows in fp32
python -m bench --only precision_sft,precision_ppo   # auto vs fp32 (also precision_reward, _generation, _rollout)
python -m bench.sft_vs_trl --help        # each benchmark is also a script with its own knobs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import ROOT, loadavg, result_path
from pipelines.runner import PRECISIONS

# name (results/<name>.json, --only) -> module and its arguments
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "sft_vs_trl": ("bench.sft_vs_trl",),
    "packing": ("bench.packing",),
    "multiprocess": ("bench.multiprocess_sft",),
    "mfu": ("bench.mfu",),
    "generation": ("bench.generation",),
    "reward_vs_trl": ("bench.reward_vs_trl",),
    "precision_sft": ("bench.precision", "sft"),
    "precision_reward": ("bench.precision", "reward"),
    "precision_generation": ("bench.precision", "generation"),
    "precision_rollout": ("bench.precision", "rollout"),
    "precision_ppo": ("bench.precision", "ppo"),
    "rollout": ("bench.rollout",),
    "ppo_vs_trl": ("bench.ppo_vs_trl",),
    "ppo_headroom": ("bench.ppo_headroom",),
    "ppo_quality": ("bench.ppo_quality",),
    "curation": ("bench.curation",),
    "annotation_ingest": ("bench.annotation_ingest",),
}
# the ones that take --precision (both sides in it); the precision_* ones compare auto with fp32 themselves
WITH_PRECISION = {"sft_vs_trl", "packing", "multiprocess", "mfu", "generation", "reward_vs_trl"}


def parse_only(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmarks.")
    parser.add_argument("--only", type=parse_only, default=list(BENCHMARKS), help="comma-separated benchmark names")
    parser.add_argument("--quick", action="store_true", help="tiny-llama and few steps: smoke-test the whole set")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process, passed to each one")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=f"passed to {', '.join(sorted(WITH_PRECISION))}; the others run as they do (results: <name>-fp32.json)",
    )
    args = parser.parse_args(argv)

    print(f"load average {loadavg()} (2-core figures are only comparable on a quiet machine)", flush=True)
    lines: list[str] = []
    failed: list[str] = []
    for index, name in enumerate(args.only, start=1):
        cmd = [sys.executable, "-m", *BENCHMARKS[name], *(["--quick"] if args.quick else [])]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        precision = args.precision if name in WITH_PRECISION else "auto"
        cmd += ["--precision", precision] if precision != "auto" else []
        print(f"\n== [{index}/{len(args.only)}] {name}: {' '.join(['python', *cmd[1:]])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT)
        result = result_path(name, args.quick, precision)
        if code != 0 or not result.is_file() or result.stat().st_mtime < time.time() - (time.perf_counter() - start):
            failed.append(name)
            lines.append(f"{name:<12} FAILED (exit {code})")
            continue
        lines.append(json.loads(result.read_text())["line"])

    print("\n== summary" + (" (quick: tiny-llama, not figures)" if args.quick else ""))
    for line in lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
