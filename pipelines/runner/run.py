"""The run lifecycle every stage shares: seed, output dir, resume, metrics, summary, saving.

A stopped run (Ctrl-C, SIGTERM) keeps its last complete checkpoint and what the output dir held before it,
with its step logs cut back to that checkpoint's step, and nothing else; `--resume` continues from there
without logging a step twice, and TensorBoard draws one run (`ResumableTensorBoard`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import TensorBoardCallback

from pipelines.cli import UserError, check_output_dir, claim_output_dir, on_interrupt, release_output_dir
from pipelines.runner.config import RunArguments, save_resolved_config
from pipelines.runner.distributed import enable_cpu_fsdp
from pipelines.runner.modeling import export_merged

METRICS_FILE = "metrics.jsonl"
# A further destination of every metrics record (e.g. a database table: `metrics_table`), called with
# the metrics.jsonl path and the record; `start_run` sets this run's.
MetricsSink = Callable[[Path, dict[str, Any]], None]
METRICS_SINKS: list[MetricsSink] = []
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "run_config.yaml"
# JSONL logs with a `step` in every row, cut back to the checkpoint a run resumes from (PPO writes samples.jsonl)
STEP_LOGS = (METRICS_FILE, "samples.jsonl")
TENSORBOARD_DIR = "runs"  # every run of an output dir logs its TensorBoard events here


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state["global_step"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest *complete* `checkpoint-N` (its `trainer_state.json` is written last).

    A checkpoint torn by a kill during saving is removed, so the run resumes from the one before.
    """
    if not output_dir.is_dir():
        return None
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for checkpoint in sorted(numbered, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if (checkpoint / "trainer_state.json").is_file():
            return checkpoint
        if PartialState().is_main_process:
            print(f"removing {checkpoint.name}: incomplete (the run was stopped while saving it)")
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def complete_checkpoint(output_dir: Path, step: int, save_total_limit: int | None) -> None:
    """Mark `checkpoint-<step>` complete and prune the oldest beyond `save_total_limit` (main process).

    For loops of the project's own (PPO); Trainer-based stages get the same from the Trainer: the
    marker `trainer_state.json` is written last, so `latest_checkpoint` never resumes from a torn one.
    """
    if not PartialState().is_main_process:
        return
    (checkpoint_dir(output_dir, step) / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    numbered = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    numbered.sort(key=lambda p: int(p.name.split("-")[-1]))
    for old in numbered[:-save_total_limit] if save_total_limit else []:
        shutil.rmtree(old, ignore_errors=True)


def _logged_by(line: str, step: int) -> bool:
    try:
        return json.loads(line).get("step", 0) <= step
    except json.JSONDecodeError:  # the line a kill cut short
        return False


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop the lines of a step log written after the checkpoint we resume from: those steps run again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and _logged_by(line, after_step)]
    path.write_text("".join(line + "\n" for line in kept))


def _settle_stopped_run(output_dir: Path, before: frozenset[str] | None) -> str:
    """After Ctrl-C or SIGTERM (main process): keep the last complete checkpoint, what the dir held before the
    run, and the step logs and TensorBoard events up to that checkpoint's step; remove what else the run wrote."""
    if not output_dir.is_dir():
        return f"nothing was written to {output_dir}"
    last = latest_checkpoint(output_dir)  # a checkpoint torn by the stop is removed here
    if last is None and before is None:
        shutil.rmtree(output_dir, ignore_errors=True)
        return f"no checkpoint was complete, removed {output_dir}; run again to start over"
    keep = set(before or ())
    if last is not None:
        step = _checkpoint_step(last)
        for log in STEP_LOGS:
            _truncate_metrics(output_dir / log, step)
        keep |= {*STEP_LOGS, TENSORBOARD_DIR} | {p.name for p in output_dir.glob("checkpoint-*")}
    for path in output_dir.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if last is None:
        return f"no checkpoint was complete, removed what this run wrote in {output_dir}; run again to start over"
    return f"kept {last.name} in {output_dir} (step {step}); continue with --resume"


def stage_defaults() -> dict[str, Any]:
    """Defaults every stage starts from before its YAML: TensorBoard, CPU ranks, and `bf16` off — TRL's
    configs turn it on by default, and `precision` (`runner/precision.py`) is what decides it now."""
    import torch

    return {
        "bf16": False,
        "report_to": ["tensorboard"],
        "dataloader_pin_memory": torch.cuda.is_available(),
        # without it TrainingArguments ignores the process group that `accelerate launch` set up on CPU
        "use_cpu": not torch.cuda.is_available(),
    }


def start_run(
    run_args: RunArguments, training_args: TrainingArguments, metrics_sinks: Sequence[MetricsSink] = ()
) -> str | None:
    """Seed, check the output dir, set where metrics go besides metrics.jsonl (`metrics_sinks`), and find
    the checkpoint to resume from (None: fresh run)."""
    enable_cpu_fsdp()  # an FSDP launch config shards on CPU processes too (before any Accelerator exists)
    set_seed(training_args.seed)
    METRICS_SINKS[:] = metrics_sinks
    if training_args.push_to_hub and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError("push_to_hub needs the hub, but HF_HUB_OFFLINE=1: unset it and log in (hf auth login)")
    output_dir = check_output_dir(training_args.output_dir)
    last = latest_checkpoint(output_dir) if run_args.resume else None
    existing = sorted(p.name for p in output_dir.glob("checkpoint-*")) if output_dir.is_dir() else []
    if existing and not run_args.resume:
        raise UserError(
            f"{output_dir} already holds checkpoints ({', '.join(existing)}); pass --resume to continue that run "
            "or choose another --output_dir"
        )
    if run_args.resume and last is None:
        raise UserError(
            f"--resume: {output_dir} holds no complete checkpoint to continue from; run without --resume to start "
            "from scratch"
        )
    if not run_args.resume and (output_dir / METRICS_FILE).is_file():
        raise UserError(
            f"{output_dir} already holds a run ({METRICS_FILE}, no checkpoint to resume): choose another "
            "--output_dir, or delete it to start over"
        )
    if PartialState().is_main_process:
        if last:
            for log in STEP_LOGS:
                _truncate_metrics(output_dir / log, _checkpoint_step(last))
        before = frozenset(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else None
        on_interrupt(functools.partial(_settle_stopped_run, output_dir, before))
    claim_output_dir(output_dir)
    return str(last) if last else None


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON object per logged step; appended and flushed so a killed run keeps what it logged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    for sink in METRICS_SINKS:
        sink(path, record)


class MetricsLogger(TrainerCallback):
    """Append every log event to `<output_dir>/metrics.jsonl` (one JSON object per logged step)."""

    def __init__(self, output_dir: str | Path, language_model: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.language_model = language_model  # eval_loss is a token NLL: perplexity means something
        self.start = time.time()

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kw: Any,
    ) -> None:
        release_output_dir()  # from here on the output dir holds a run worth keeping

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {
            "step": state.global_step,
            "epoch": state.epoch,
            **logs,
        }
        if "eval_loss" in logs and self.language_model:
            record["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        record["elapsed_s"] = round(time.time() - self.start, 3)
        append_metrics(self.path, record)


class ResumableTensorBoard(TensorBoardCallback):
    """TensorBoard events of every run of an output dir in <output_dir>/runs (the Trainer makes a new runs/<time>
    folder per run: a resumed run showed as a second one). A resumed run starts at `purge_step`, the step after
    its checkpoint: TensorBoard drops the stopped run's events from there on, so each step is drawn once."""

    def __init__(self, purge_step: int | None) -> None:
        super().__init__()
        self.purge_step = purge_step

    def _init_summary_writer(self, args: TrainingArguments) -> None:
        log_dir = Path(args.output_dir) / TENSORBOARD_DIR
        self.tb_writer = self._SummaryWriter(log_dir=str(log_dir), purge_step=self.purge_step)
        # the Trainer opens a new writer after training (final evaluation): it must not purge this run's steps
        self.purge_step = None


def train(trainer: Trainer, resume_from: str | None) -> dict[str, Any]:
    """Run the trainer and return the train figures the summary reports."""
    if trainer.pop_callback(TensorBoardCallback) is not None:
        trainer.add_callback(ResumableTensorBoard(_checkpoint_step(Path(resume_from)) + 1 if resume_from else None))
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = dict(result.metrics)
    # TRL's trainers log `num_tokens`: non-padding tokens of this run, summed over all processes.
    tokens = next((log["num_tokens"] for log in reversed(trainer.state.log_history) if "num_tokens" in log), 0)
    runtime = metrics.get("train_runtime") or 0.0
    if tokens and runtime:
        world = trainer.args.world_size
        metrics["train_tokens"] = int(tokens)
        metrics["train_tokens_per_second"] = tokens / runtime
        metrics["train_tokens_per_second_per_process"] = tokens / runtime / world
    return metrics


def save_outputs(
    trainer: Trainer,
    run_args: RunArguments,
    configs: tuple[Any, ...],
    summary: dict[str, Any],
    tokenizer: Any,
) -> Path:
    """Save the final model once (main process), the resolved config and, for LoRA, a merged copy."""
    output_dir = Path(trainer.args.output_dir)
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the final model is gathered into whole tensors
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))  # unwraps DDP/FSDP and writes from the main process only
    if PartialState().is_main_process:
        tokenizer.save_pretrained(output_dir)
    write_run_files(output_dir, run_args, configs, summary)
    PartialState().wait_for_everyone()
    return output_dir


def write_run_files(
    output_dir: Path, run_args: RunArguments, configs: tuple[Any, ...], summary: dict[str, Any]
) -> None:
    """Beside a saved model (main process only): the resolved config and, for a LoRA run, a merged copy."""
    if not PartialState().is_main_process:
        return
    save_resolved_config(output_dir / CONFIG_FILE, *configs)
    if run_args.merge_lora and (output_dir / "adapter_config.json").is_file():
        summary["merged_model"] = str(export_merged(output_dir, output_dir / "merged"))


def train_evaluate_save(
    trainer: Trainer,
    run_args: RunArguments,
    configs: tuple[Any, ...],
    tokenizer: Any,
    resume_from: str | None,
    evaluate: bool = True,
) -> tuple[dict[str, Any], Path]:
    """The part every Trainer-based stage shares: train, final evaluation (unless the stage does its own), save."""
    summary: dict[str, Any] = {"world_size": trainer.args.world_size, "train": train(trainer, resume_from)}
    if evaluate and trainer.eval_dataset is not None:
        summary["eval"] = trainer.evaluate()
    output_dir = save_outputs(trainer, run_args, configs, summary, tokenizer)
    return summary, output_dir


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> Path:
    """`summary.json`: the run's final figures (main process only)."""
    path = Path(output_dir) / SUMMARY_FILE
    if PartialState().is_main_process:
        summary = {**summary, "peak_rss_mib": round(peak_rss_mib(), 1)}
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
