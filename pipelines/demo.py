"""The README's main job: the whole loop on the embedded sample data, one command.

    python -m pipelines.demo                       # Argilla -> pretrain -> SFT -> reward -> PPO -> compare -> loop
    python -m pipelines.demo --stages sft,compare  # only some stages (without `annotation`, stages read the files)
    python -m pipelines.demo --run_dir runs/demo   # where everything goes (default: a new timestamped dir)
    python -m pipelines.demo --precision fp32      # every stage in fp32 (default auto: bf16 where the CPU has it)

`annotation` starts the embedded Argilla server (or uses ARGILLA_API_URL), creates the three sample
datasets in the `demo` workspace and pushes the sample data into them (idempotent: a second demo
updates the same records); the verifiable preference pairs go in as judgements (suggestions, and the
submitted rankings of the user `imported-pairs`). Every training stage then reads Argilla: before it
runs, `python -m annotation export` writes what annotators submitted as a versioned HF dataset under
<run_dir>/data/<dataset>/v1 (kept records only, corrections replacing responses, pairs from rankings),
recorded in <run_dir>/summary.json (source, version, records, rows), and the stage trains on it:
continued pretraining (`argilla://demo/pretraining-text`, short, from SmolLM2), SFT from its output
(`argilla://demo/text-to-sql`), the reward model (`argilla://demo/sql-comparisons`), PPO, the
comparison of base, SFT and PPO on held-out questions (judged by execution), and one round of the
human-feedback loop (`python -m annotation loop run --config configs/loop/default.yaml`: the PPO policy's
answers ranked by simulated annotators in Argilla, the reward model and the policy retrained). Each step
runs as its own CLI, exactly as a user would run it, chained through the run dir. The server keeps
running afterwards, so the datasets can be opened in the browser (`python -m annotation server stop`
ends it); the demo ends by printing the URL of the loop round's dataset next to the login.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipelines.cli import CliParser, UserError, check_output_dir, cli_entry
from pipelines.models import PROJECT_ROOT, SMOLLM2
from pipelines.runner import add_precision_flag

STAGES = ("annotation", "pretrain", "sft", "reward", "ppo", "compare", "loop")
WORKSPACE = "demo"
# (dataset, kind, the sample data pushed into it, the file a stage reads without the annotation stage)
SAMPLE_DATASETS = (
    ("pretraining-text", "text", "data/pretraining/shop.jsonl"),
    ("text-to-sql", "instruction", "data/textsql/train.jsonl"),
    ("sql-comparisons", "comparison", "data/textsql/pairs_train.jsonl"),
)
IMPORTER = "imported-pairs"  # the user whose submitted rankings are the sample pairs' chosen/rejected
LOOP_DATASET = f"{WORKSPACE}/sql-loop"


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
        judged = ("--as-responses", IMPORTER) if kind == "comparison" else ()
        run_cli("annotation", "push", f"{WORKSPACE}/{name}", "--kind", kind, "--data", data, *judged)
    return json.loads(run_cli("annotation", "server", "status", "--json", capture=True).stdout)


def export(name: str, run_dir: Path) -> dict[str, object]:
    """`python -m annotation export demo/<name>` into <run_dir>/data/<name>: the version a stage trains on."""
    result = run_cli(
        "annotation", "export", f"{WORKSPACE}/{name}", "--output_dir", run_dir / "data" / name, capture=True
    )
    folder = Path(json.loads(result.stdout.splitlines()[-1])["output"])
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return {
        "source": f"argilla://{WORKSPACE}/{name}",
        "path": str(folder),
        "version": report["version"],
        "records": report["records"],
        "rows": report["rows"],
    }


def print_annotation_help(status: dict[str, object], loop_url: str | None) -> None:
    print(
        f"\nArgilla UI: {status['url']} (datasets in the {WORKSPACE!r} workspace: "
        + ", ".join([*(name for name, _, _ in SAMPLE_DATASETS), LOOP_DATASET.split("/")[1]])
        + ")"
    )
    if loop_url:
        print(f"  the loop round's records, ranked by the simulated annotators: {loop_url}")
    if status.get("password_file"):
        print(f"  log in as {status['owner']!r} with the password in {status['password_file']}")
    if status.get("api_key_file"):
        print(f"  owner API key (SDK, ARGILLA_API_KEY): {status['api_key_file']}")
    print("  add annotators: python -m annotation users --help; stop the server: python -m annotation server stop")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m pipelines.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", type=Path, default=Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S"))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    precision = ("--precision", args.precision)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise UserError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}")
    run_dir = check_output_dir(args.run_dir, "--run_dir")
    pretrain, sft, reward, ppo = (run_dir / name for name in ("pretrain", "sft", "reward", "ppo"))
    timings: dict[str, float] = {}
    data: dict[str, dict[str, object]] = {}
    start = time.perf_counter()
    status = None
    if "annotation" in stages:
        status = annotation_stage()
        timings["annotation"] = time.perf_counter() - start

    def source(name: str, *file_flags: object) -> tuple[object, ...]:
        """`--dataset` of a stage: this run's export of the Argilla dataset, or the config's own file."""
        if status is None:
            return file_flags
        data[name] = export(name, run_dir)
        return ("--dataset", data[name]["path"])

    if "pretrain" in stages:
        timings["pretrain"] = run_stage(
            "sft",
            *("--config", "configs/sft/pretrain.yaml", *source("pretraining-text"), "--output_dir", pretrain),
            *precision,
        )
    if "sft" in stages:
        start_from = ("--model_name_or_path", pretrain) if (pretrain / "config.json").is_file() else ()
        # the export's rows are prompt/completion (detected); the file's question/answer need the config's mapping
        rows = (*source("text-to-sql"), "--columns", "") if status else ()
        timings["sft"] = run_stage(
            "sft", "--config", "configs/sft/default.yaml", *start_from, *rows, "--output_dir", sft, *precision
        )
    if "reward" in stages:
        timings["reward"] = run_stage(
            "reward",
            *("--config", "configs/reward/default.yaml", "--model_name_or_path", sft),
            *source("sql-comparisons"),
            *("--output_dir", reward),
            *precision,
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
            *precision,
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
            *precision,
        )
    loop_url = None
    if "loop" in stages:
        loop_dir = run_dir / "loop"
        started = time.perf_counter()
        run_cli(
            "annotation",
            *("loop", "run", "--config", "configs/loop/default.yaml", "--dataset", LOOP_DATASET),
            *("--policy", ppo, "--reward_model", reward, "--output_dir", loop_dir, *precision),
        )
        timings["loop"] = time.perf_counter() - started
        loop_url = json.loads((loop_dir / "round-001" / "pushed.json").read_text(encoding="utf-8"))["url"]
    timings["total"] = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"data": data, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\n=== demo done in " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()))
    print(
        f"results: {run_dir}" + (" (comparison/generations.md: the side-by-side table)" if "compare" in stages else "")
    )
    if (run_dir / "loop" / "rounds.md").is_file():
        print(f"the loop round (loop/rounds.md):\n{(run_dir / 'loop' / 'rounds.md').read_text(encoding='utf-8')}")
    if status:
        print_annotation_help(status, loop_url)


if __name__ == "__main__":
    main()
