"""What every benchmark shares: machine facts, child runs with a progress bar, throughput from the
Trainer's own logs, the one-line verdict and the JSON result file."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from pipelines.runner import Precision

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
TEXTSQL_TRAIN = ROOT / "data" / "textsql" / "train.jsonl"
TEXTSQL_TEST = ROOT / "data" / "textsql" / "test.jsonl"
ACCELERATE_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"

# Offline, quiet, and the same for this process and every child it starts (as the Makefile sets them).
OFFLINE_ENV = {
    "HF_HOME": str(ROOT / ".cache" / "huggingface"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

# SFTConfig keys that both sides of an SFT comparison read from one YAML file, so the arguments are
# the same by construction. `include_num_input_tokens_seen` makes the Trainer log the `train_runtime`
# so far at every step, which the steady-state figures need ("non_padding" cannot be set: the flag
# parses as a bool; TRL's own `num_tokens` log is the non-padding count). Precision is not in it: the
# bench resolves `--precision` once and tells each side (`--precision` to a stage, `--bf16` to a plain
# TRL script, whose own default is bf16 on).
SFT_COMMON: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_steps": 20,
    "learning_rate": 1.0e-4,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_length": 256,
    "truncation_mode": "keep_start",
    "completion_only_loss": True,
    "packing": False,
    "activation_checkpointing": False,  # transformers 5.23 name of gradient_checkpointing
    "seed": 42,
    "logging_steps": 1,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "include_num_input_tokens_seen": True,
    "dataloader_pin_memory": False,
    "use_cpu": True,
}


def model_path(name: str) -> str:
    return str(ROOT / "models" / name)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_facts() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", []
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return model or platform.processor() or "unknown", [f for f in wanted if f in flags]


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions, date and load: what a reader needs to compare two result files."""
    import torch

    cpu, flags = _cpu_facts()
    versions = {}
    for package in ("torch", "transformers", "trl", "accelerate", "datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_1_5_15": loadavg(),
    }


def command_line() -> str:
    """The command that started this process, as a user would type it."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def abba(reps: int, a: str = "A", b: str = "B") -> list[str]:
    """A B B A A B B A ... truncated to 2*reps runs: drift in machine load hits both sides alike."""
    pattern = [a, b, b, a]
    return [pattern[i % 4] for i in range(2 * reps)]


# ---------------------------------------------------------------------------- verdict and result file


@dataclasses.dataclass
class Verdict:
    """The one comparable line: A vs B, their ratio and the target it must reach (None: report only)."""

    name: str
    a_label: str
    a: float
    b_label: str
    b: float
    unit: str
    target: float | None
    note: str = ""
    condition_met: bool = True  # a side condition of the target (e.g. PPO's reward gain), stated in the note

    @property
    def ratio(self) -> float:
        return self.a / self.b if self.b else float("nan")

    @property
    def status(self) -> str:
        if self.target is None:
            return "INFO"
        return "PASS" if self.ratio >= self.target and self.condition_met else "MISS"

    def line(self) -> str:
        target = f">= {self.target:g}" if self.target is not None else "none"
        text = (
            f"{self.name:<12} {self.a_label} {self.a:.2f} {self.unit} | {self.b_label} {self.b:.2f} {self.unit} | "
            f"ratio {self.ratio:.3f} | target {target} | {self.status}"
        )
        return f"{text} | {self.note}" if self.note else text


def result_path(name: str, quick: bool, precision: str = "auto") -> Path:
    """`bench/results/<name>.json`; `<name>-fp32.json` (`-bf16`) for a run with a forced precision; quick
    (smoke-test) figures under `quick/`, so they never overwrite the real ones."""
    suffix = "" if precision == "auto" else f"-{precision}"
    return RESULTS_DIR / ("quick" if quick else "") / f"{name}{suffix}.json"


class Recorder:
    """Times one benchmark, notes the machine, its load and the precision, and writes its result file."""

    def __init__(self, name: str, quick: bool, precision: Precision | None = None) -> None:
        self.name = name
        self.quick = quick
        self.precision = precision
        self.started = time.perf_counter()
        self.machine = machine_info()
        self.command = command_line()

    @property
    def path(self) -> Path:
        return result_path(self.name, self.quick, self.precision.requested if self.precision else "auto")

    def finish(self, verdict: Verdict, data: dict[str, Any]) -> Path:
        verdict.note = " ".join(filter(None, [verdict.note, f"load {os.getloadavg()[0]:.1f}"]))
        record = {
            "name": self.name,
            "line": verdict.line(),
            "status": verdict.status,
            "a": {"label": verdict.a_label, "value": verdict.a},
            "b": {"label": verdict.b_label, "value": verdict.b},
            "unit": verdict.unit,
            "ratio": verdict.ratio,
            "target": verdict.target,
            "quick": self.quick,
            "command": self.command,
            "wall_s": round(time.perf_counter() - self.started, 1),
            "machine": self.machine,
            "precision": self.precision.as_dict() if self.precision else None,
            "loadavg_end": loadavg(),
            **data,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)
        print(verdict.line(), flush=True)
        print(f"  -> {self.path.relative_to(ROOT)}", flush=True)
        return self.path


# ---------------------------------------------------------------------------- child runs

# The Trainer's progress bar, e.g. " 40%|████      | 4/10 [00:12<00:18,  3.01s/it]"
_TRAINER_BAR = re.compile(r"(\d+)/(\d+) \[[^\]\r\n]*it\]")


def _trainer_progress(log: Path) -> tuple[int, int]:
    """(step, total) of the first Trainer bar in `log` (training comes before the final evaluation)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0, 0
    matches = [(int(m.group(1)), int(m.group(2))) for m in _TRAINER_BAR.finditer(text)]
    if not matches:
        return 0, 0
    total = matches[0][1]
    return max(step for step, bar_total in matches if bar_total == total), total


def run_child(cmd: Sequence[str], log: Path, desc: str, env: dict[str, str] | None = None) -> float:
    """Run a training command with its output in `log`; a bar follows the Trainer's step count.

    Returns the wall time; a failure raises with the log's tail (and keeps the log under bench/results/logs).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out, tqdm(desc=desc, unit="step", leave=False) as bar:
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
        while proc.poll() is None:
            time.sleep(1.0)
            step, total = _trainer_progress(log)
            if total and bar.total != total:
                bar.total = total
                bar.refresh()
            if step > bar.n:
                bar.update(step - bar.n)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        kept = RESULTS_DIR / "logs" / log.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, kept)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{desc} failed (exit {proc.returncode}); log kept in {kept}:\n{shlex.join(cmd)}\n{tail}")
    return wall


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def pipelines_sft_cmd(
    config: Path,
    model: str,
    dataset: Path,
    eval_dataset: Path,
    output_dir: Path,
    precision: Precision,
    extra: Sequence[str] = (),
    launcher: Sequence[str] = (PYTHON, "-m"),
    stage: str = "pipelines.sft",
) -> list[str]:
    """`python -m pipelines.sft` (or another Trainer stage, or `accelerate launch ... -m ...`), no generation eval."""
    no_generation = ["--eval_generation_samples", "0"] if stage == "pipelines.sft" else []
    return [
        *launcher,
        stage,
        "--config",
        str(config),
        "--model_name_or_path",
        model,
        "--dataset",
        str(dataset),
        "--eval_dataset",
        str(eval_dataset),
        "--output_dir",
        str(output_dir),
        "--precision",
        precision.name,
        *no_generation,
        *extra,
    ]


def accelerate_launcher(config: Path = ACCELERATE_2PROC) -> list[str]:
    accelerate = Path(PYTHON).with_name("accelerate")
    return [str(accelerate), "launch", "--config_file", str(config), "-m"]


# ---------------------------------------------------------------------------- throughput from Trainer logs


@dataclasses.dataclass
class Throughput:
    """Non-padding tokens over the Trainer's own `train_runtime`: the whole run and its steady state."""

    steps: int
    tokens: int  # TRL's `num_tokens`: non-padding tokens, all processes (what summary.json reports)
    padded_tokens: int  # the Trainer's `num_input_tokens_seen` ("all"): tokens computed on, padding included
    runtime_s: float  # the Trainer's train_runtime: training only, model and data loading excluded
    warmup_steps: int
    steady_tokens: int
    steady_padded_tokens: int
    steady_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.runtime_s if self.runtime_s else 0.0

    @property
    def steady_tokens_per_s(self) -> float:
        return self.steady_tokens / self.steady_s if self.steady_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "tokens_per_s": self.tokens_per_s,
            "steady_tokens_per_s": self.steady_tokens_per_s,
        }


def throughput(logs: Sequence[dict[str, Any]], warmup_steps: int) -> Throughput:
    """From a Trainer's log history (`logging_steps: 1`, `include_num_input_tokens_seen: true`).

    `include_num_input_tokens_seen` makes every step's log carry the `train_runtime` so far (and the
    tokens seen, padding included); TRL adds `num_tokens`, the non-padding tokens so far. The steady
    state runs from the end of step `warmup_steps` to the last step (the first steps pay one-off
    costs: allocator warm-up, lazy initialisation).
    """
    keys = ("loss", "num_tokens", "num_input_tokens_seen", "train_runtime")
    per_step = sorted((r for r in logs if all(k in r for k in keys)), key=lambda r: r["step"])
    final = next((r for r in reversed(logs) if "train_loss" in r), None)
    if not per_step or final is None:
        raise RuntimeError("no per-step token logs: the run needs logging_steps: 1 and include_num_input_tokens_seen")
    last = per_step[-1]
    warmup = min(warmup_steps, len(per_step) - 1)
    base = next((r for r in per_step if r["step"] >= warmup), per_step[0]) if warmup else None

    def since_base(key: str) -> float:
        return last[key] - (base[key] if base else 0)

    return Throughput(
        steps=int(last["step"]),
        tokens=int(last["num_tokens"]),
        padded_tokens=int(last["num_input_tokens_seen"]),
        runtime_s=float(final["train_runtime"]),
        warmup_steps=warmup,
        steady_tokens=int(since_base("num_tokens")),
        steady_padded_tokens=int(since_base("num_input_tokens_seen")),
        steady_s=float(since_base("train_runtime")),
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pipelines_run_figures(output_dir: Path, warmup_steps: int) -> tuple[Throughput, dict[str, Any]]:
    """Throughput from `metrics.jsonl` and the train figures of `summary.json` of a pipelines.sft run."""
    figures = throughput(read_jsonl(output_dir / "metrics.jsonl"), warmup_steps)
    summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    return figures, summary.get("train", {})


def common_args(**overrides: Any) -> dict[str, Any]:
    return {**SFT_COMMON, **overrides}


def add_common_flags(parser: Any, steps: int | None = None, warmup: int | None = None) -> None:
    """`--quick` and `--threads` for every benchmark; `--steps`, `--warmup` for the training ones."""
    parser.add_argument("--quick", action="store_true", help="tiny-llama and few steps: a smoke test, not a figure")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (sets OMP_NUM_THREADS for every run; default: torch's, all cores). "
        "On a busy 2-core machine 1 thread can be several times faster than 2.",
    )
    if steps is not None:
        parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {steps})")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=None, help=f"steps left out of the steady state ({warmup})")


def apply_threads(threads: int | None) -> None:
    """Pin torch's thread count here and, through OMP_NUM_THREADS, in every child run."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- one SFT run


def slug(label: str) -> str:
    """A file name for a run label ("run 1/4 plain" -> "run-1-4-plain")."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", label).strip("-")


def run_pipelines_sft(
    label: str,
    tmp: Path,
    config: Path,
    model: str,
    data: tuple[Path, Path],
    warmup: int,
    precision: Precision,
    extra: Sequence[str] = (),
    launcher: Sequence[str] = (PYTHON, "-m"),
    stage: str = "pipelines.sft",
) -> tuple[Throughput, dict[str, Any]]:
    """One `pipelines.sft` (or `stage`) run, output in a temp dir deleted after: its throughput and a JSON record."""
    out = tmp / slug(label)
    cmd = pipelines_sft_cmd(config, model, data[0], data[1], out, precision, extra, launcher, stage)
    load = loadavg()
    wall = run_child(cmd, tmp / f"{slug(label)}.log", label)
    figures, train_summary = pipelines_run_figures(out, warmup)
    shutil.rmtree(out, ignore_errors=True)
    report(label, figures, wall)
    record = {"label": label, "command": shlex.join(cmd), "wall_s": round(wall, 1), "loadavg": load}
    return figures, {**record, **figures.as_dict(), "summary_train": train_summary}


def run_plain_script(
    script: Path,
    label: str,
    tmp: Path,
    config: Path,
    model: str,
    data: Path,
    samples: int,
    warmup: int,
    precision: Precision,
) -> dict[str, Any]:
    """One run of a plain TRL peer script (bench/plain_trl_*.py); its figures (the output dir is deleted after).

    The peer gets the precision as TRL's own `bf16` (autocast, fp32 weights: what our stages do).
    """
    out = tmp / slug(label)
    cmd = [PYTHON, str(script), "--config", str(config), "--model", model, "--data", str(data)]
    cmd += ["--output_dir", str(out), "--max_train_samples", str(samples), "--bf16", str(precision.bf16).lower()]
    load = loadavg()
    wall = run_child(cmd, tmp / f"{slug(label)}.log", label)
    figures = throughput(json.loads((out / "log_history.json").read_text()), warmup)
    shutil.rmtree(out, ignore_errors=True)
    report(label, figures, wall)
    return {"label": label, "command": shlex.join(cmd), "wall_s": round(wall, 1), "loadavg": load, **figures.as_dict()}


def report(label: str, figures: Throughput, wall: float) -> None:
    tqdm.write(
        f"  {label:<22} steady {figures.steady_tokens_per_s:8.2f} tok/s | whole run {figures.tokens_per_s:8.2f} tok/s "
        f"| {figures.tokens} tokens ({figures.padded_tokens} with padding) | train_runtime {figures.runtime_s:.1f} s "
        f"| wall {wall:.0f} s"
    )


# ---------------------------------------------------------------------------- data


def standin_pairs(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Short question/SQL pairs shaped like data/textsql, for when that file has not been generated."""
    import random

    rng = random.Random(seed)
    cities = ["Lyon", "Oslo", "Porto", "Turin", "Ghent", "Basel", "Leeds", "Graz"]
    categories = ["book", "toy", "tool", "game", "lamp", "shirt"]
    rows = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            city = rng.choice(cities)
            rows.append(
                {
                    "question": f"How many customers live in {city}?",
                    "answer": f"SELECT COUNT(*) FROM customers WHERE city = '{city}';",
                }
            )
        elif kind == 1:
            category, price = rng.choice(categories), rng.randrange(5, 200)
            rows.append(
                {
                    "question": f"Which {category} products cost less than {price}?",
                    "answer": f"SELECT name FROM products WHERE category = '{category}' AND price < {price};",
                }
            )
        else:
            order = rng.randrange(1, 500)
            rows.append(
                {
                    "question": f"What is the total value of order {order}?",
                    "answer": "SELECT SUM(oi.quantity * p.price) FROM order_items oi JOIN products p "
                    f"ON p.id = oi.product_id WHERE oi.order_id = {order};",
                }
            )
    return rows


def textsql_data(tmp: Path) -> tuple[Path, Path, str]:
    """(train file, a 2-row eval file, note): data/textsql/train.jsonl, or a generated stand-in.

    pipelines.sft always ends with an evaluation; two rows keep it to a second (it is outside
    `train_runtime` either way).
    """
    if TEXTSQL_TRAIN.is_file():
        train, note = TEXTSQL_TRAIN, ""
    else:
        train = write_jsonl(tmp / "standin_train.jsonl", standin_pairs(400))
        note = "stand-in question/SQL data (data/textsql/train.jsonl missing)"
        print(f"note: {note}, written to {train}")
    rows = [{"question": r["question"], "answer": r["answer"]} for r in read_jsonl(train)[:2]]
    return train, write_jsonl(tmp / "eval_2rows.jsonl", rows), note
