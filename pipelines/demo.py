"""The README's main job: the whole loop on the embedded sample data, one command.

    python -m pipelines.demo                       # Argilla -> SFT -> reward -> PPO -> comparison
    python -m pipelines.demo --stages sft,compare  # only some stages (without `annotation`, SFT reads the file)
    python -m pipelines.demo --run_dir runs/demo   # where everything goes (default: a new timestamped dir)

`annotation` starts the embedded Argilla server (or uses ARGILLA_API_URL), creates the three sample
datasets in the `demo` workspace and pushes the sample data into them (idempotent: a second demo
updates the same records); SFT then trains on `argilla://demo/text-to-sql`, what annotators would
have submitted (unreviewed records as they are, corrections replacing responses, discarded records
left out). Each step runs as its own CLI (`python -m annotation ...`,
`python -m pipelines.<stage> --config configs/<stage>/default.yaml`), exactly as a user would run it,
chained through the run dir. The comparison answers the held-out text-to-SQL questions with the
base, SFT and PPO models and judges them by execution. The server keeps running afterwards, so the
datasets can be opened in the browser (`python -m annotation server stop` ends it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.cli import UserError, cli_entry
from pipelines.models import PROJECT_ROOT, SMOLLM2

STAGES = ("annotation", "sft", "reward", "ppo", "compare")
WORKSPACE = "demo"
# (dataset, kind, the sample data pushed into it)
SAMPLE_DATASETS = (
    ("pretraining-text", "text", "data/pretraining/shop.jsonl"),
    ("text-to-sql", "instruction", "data/textsql/train.jsonl"),
    ("sql-comparisons", "comparison", "data/textsql/pairs_train.jsonl"),
)
SFT_SOURCE = f"argilla://{WORKSPACE}/text-to-sql"


def run_cli(module: str, *args: object, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one project CLI; a failure stops the demo with that CLI's own exit code (its message already shown)."""
    command = [sys.executable, "-m", module, *(str(a) for a in args)]
    if not capture:
        print(f"\n=== {' '.join(command[1:])}", flush=True)
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=os.environ.copy(), check=False, capture_output=capture, text=True
    )
    if result.returncode:
        if capture:
            print(result.stderr, end="", file=sys.stderr)
        raise SystemExit(result.returncode)
    return result


def run_stage(stage: str, *args: object) -> float:
    """Run `python -m pipelines.<stage>`; returns its wall time."""
    start = time.perf_counter()
    run_cli(f"pipelines.{stage}", *args)
    return time.perf_counter() - start


def annotation_stage() -> dict[str, object]:
    """Server up, the three sample datasets created and filled; returns `server status --json`."""
    run_cli("annotation", "server", "start")
    for name, kind, data in SAMPLE_DATASETS:
        run_cli("annotation", "create", f"{WORKSPACE}/{name}", "--kind", kind)
        run_cli("annotation", "push", f"{WORKSPACE}/{name}", "--kind", kind, "--data", data)
    return json.loads(run_cli("annotation", "server", "status", "--json", capture=True).stdout)


def print_annotation_help(status: dict[str, object]) -> None:
    print(
        f"\nArgilla UI: {status['url']} (datasets in the {WORKSPACE!r} workspace: "
        + ", ".join(name for name, _, _ in SAMPLE_DATASETS)
        + ")"
    )
    if status.get("password_file"):
        print(f"  log in as {status['owner']!r} with the password in {status['password_file']}")
    if status.get("api_key_file"):
        print(f"  owner API key (SDK, ARGILLA_API_KEY): {status['api_key_file']}")
    print("  add annotators: python -m annotation users --help; stop the server: python -m annotation server stop")


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
    status = None
    if "annotation" in stages:
        status = annotation_stage()
        timings["annotation"] = time.perf_counter() - start
    if "sft" in stages:
        # the Argilla rows are prompt/completion (detected); the file's question/answer need the config's mapping
        source = ("--dataset", SFT_SOURCE, "--columns", "") if status else ()
        timings["sft"] = run_stage("sft", "--config", "configs/sft/default.yaml", *source, "--output_dir", sft)
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
    print(
        f"results: {run_dir}" + (" (comparison/generations.md: the side-by-side table)" if "compare" in stages else "")
    )
    if status:
        print_annotation_help(status)


if __name__ == "__main__":
    main()
