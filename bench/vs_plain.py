"""A Trainer stage of this project vs the plain TRL script a user would write, measured in one run.

Shared by `sft_vs_trl` and `reward_vs_trl`: both sides read one YAML of TRL config keys and the same
rows, and run in the same precision (`--precision`, auto by default: bf16 autocast where the CPU
multiplies bf16 natively, for the plain script as TRL's own `bf16: true`); an untimed warm-up run of
each side goes first (the first process to read the model and import torch/TRL pays for a cold page
cache: measured, the first run was 13 % slower than its twin); then the runs alternate A B B A and
each side's median over the steady-state steps is compared.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    Recorder,
    Verdict,
    abba,
    median,
    run_pipelines_sft,
    run_plain_script,
    write_yaml,
)
from pipelines.runner import Precision


@dataclasses.dataclass
class PeerComparison:
    name: str  # results/<name>.json
    stage: str  # python -m <stage>
    plain_script: Path
    pipelines_flags: list[str]  # e.g. the column mapping the plain script hard-codes
    config: dict[str, Any]  # TRL config keys for both sides (max_steps included)
    unit: str  # "tok/s" (non-padding tokens) or "samples/s"
    target: float


def steady_rate(record: dict[str, Any], unit: str, batch: int) -> float:
    if unit == "tok/s":
        return record["steady_tokens_per_s"]
    steps = record["steps"] - record["warmup_steps"]
    return steps * batch / record["steady_s"] if record["steady_s"] else 0.0


def compare_with_plain(
    spec: PeerComparison,
    model: str,
    data: Callable[[Path], tuple[Path, Path, str]],
    warmup: int,
    reps: int,
    quick: bool,
    precision: Precision,
) -> None:
    """Run the comparison and write its result file; `data(tmp)` gives (train, eval, note)."""
    recorder = Recorder(spec.name, quick, precision)
    batch = spec.config["per_device_train_batch_size"]
    steps = spec.config["max_steps"]
    samples = steps * batch  # exactly one pass over the same rows

    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.name}-") as tmp_name:
        tmp = Path(tmp_name)
        train, eval_file, data_note = data(tmp)

        def run(side: str, label: str, config: Path, count: int, skip: int) -> dict[str, Any]:
            if side == "plain":
                return run_plain_script(spec.plain_script, label, tmp, config, model, train, count, skip, precision)
            flags = [*spec.pipelines_flags, "--max_train_samples", str(count)]
            data_files = (train, eval_file)
            _, record = run_pipelines_sft(
                label, tmp, config, model, data_files, skip, precision, flags, stage=spec.stage
            )
            return record

        warm_config = write_yaml(tmp / "warmup.yaml", {**spec.config, "max_steps": 2})
        for side in ("pipelines", "plain"):
            run(side, f"warm-up {side}", warm_config, 2 * batch, 0)
        config = write_yaml(tmp / "config.yaml", spec.config)
        order = abba(reps, "pipelines", "plain")
        runs = [
            {"side": side, **run(side, f"run {i + 1}/{len(order)} {side}", config, samples, warmup)}
            for i, side in enumerate(order)
        ]
    for record in runs:
        record["steady_rate"] = steady_rate(record, spec.unit, batch)

    def side_median(side: str, key: str) -> float:
        return median([r[key] for r in runs if r["side"] == side])

    verdict = Verdict(
        spec.name,
        f"pipelines.{spec.stage.split('.')[-1]}",
        side_median("pipelines", "steady_rate"),
        "plain TRL",
        side_median("plain", "steady_rate"),
        spec.unit,
        spec.target,
        note=f"{precision.name}, median of {reps} run(s) each, steps {warmup + 1}-{steps}",
    )
    recorder.finish(
        verdict,
        {
            "model": model,
            "data": str(train),
            "data_note": data_note,
            "config": spec.config,
            "max_train_samples": samples,
            "order": order,
            "identical_token_counts": len({r["tokens"] for r in runs}) == 1,
            "whole_run_median_tokens_per_s": {
                "pipelines": side_median("pipelines", "tokens_per_s"),
                "plain": side_median("plain", "tokens_per_s"),
            },
            "runs": runs,
        },
    )
