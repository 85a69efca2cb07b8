"""The README's main job: the whole pipeline on the embedded sample data, one command.

    python -m pipelines.demo                       # SFT -> reward -> PPO -> comparison
    python -m pipelines.demo --stages sft,compare  # only some stages
    python -m pipelines.demo --run_dir runs/demo   # where everything goes (default: a new timestamped dir)

Each stage runs as its own CLI (`python -m pipelines.<stage> --config configs/<stage>/default.yaml`),
exactly as a user would run it, chained through the run dir. The comparison answers the held-out
text-to-SQL questions with the base, SFT and PPO models and judges them by execution.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.errors import UserError, cli_entry
from pipelines.models import PROJECT_ROOT, SMOLLM2

STAGES = ("sft", "reward", "ppo", "compare")


def run_stage(stage: str, *args: object) -> float:
    """Run one stage CLI; a failure stops the demo with the stage's own exit code."""
    command = [sys.executable, "-m", f"pipelines.{stage}", *(str(a) for a in args)]
    print(f"\n=== {stage}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=os.environ.copy(), check=False)
    if result.returncode:
        raise SystemExit(result.returncode)
    return time.perf_counter() - start


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", type=Path, default=Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    run_dir = args.run_dir
    sft, reward, ppo = run_dir / "sft", run_dir / "reward", run_dir / "ppo"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if "sft" in stages:
        timings["sft"] = run_stage("sft", "--config", "configs/sft/default.yaml", "--output_dir", sft)
    if "reward" in stages:
        timings["reward"] = run_stage(
            "reward", "--config", "configs/reward/default.yaml", "--model_name_or_path", sft, "--output_dir", reward
        )
    if "ppo" in stages:
        timings["ppo"] = run_stage(
            "ppo",
            "--config",
            "configs/ppo/default.yaml",
            "--model_name_or_path",
            sft,
            "--reward_model_path",
            reward,
            "--output_dir",
            ppo,
        )
    if "compare" in stages:
        models = [str(p) for p in (SMOLLM2, sft, ppo) if p == SMOLLM2 or (Path(p) / "config.json").is_file()]
        timings["compare"] = run_stage(
            "eval",
            "compare",
            "--models",
            *models,
            "--names",
            *["base", "sft", "ppo"][: len(models)],
            "--reward_model",
            reward,
            "--output_dir",
            run_dir / "comparison",
        )
    timings["total"] = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "demo_timings.json").write_text(json.dumps(timings, indent=2))
    print("\n=== demo done in " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    print(f"results: {run_dir} (comparison/generations.md: the side-by-side table)")


if __name__ == "__main__":
    main()
