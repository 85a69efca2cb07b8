"""One answer to "bf16 or fp32?" for every stage: `precision: auto | fp32 | bf16`.

`auto` is bf16 where the hardware multiplies bf16 natively — a CPU with AVX512-BF16 or AMX (bf16
matmuls 4.5x faster than fp32 on AVX512-BF16, 2 cores), a GPU that supports it — and fp32 elsewhere:
on an AVX2-only CPU bf16 is emulated and more than 100x slower. `fp32`/`bf16` force it.

What bf16 changes, and what stays fp32 (and where that is decided):

- Training runs under bf16 autocast (`TrainingArguments.bf16`: the Trainer's accelerate wraps the
  model's forward in `torch.autocast(<device>, bfloat16)`, on CPU too, and casts its outputs back to
  fp32). The trained weights are loaded in fp32 (`load_model`'s default) and stay the master weights;
  AdamW's state has their dtype, so it is fp32 too. The SFT loss is TRL's fused LM head: it projects
  in bf16 under autocast but accumulates log-sum-exp and the loss in fp32.
- Frozen and generation models (a base model answering eval prompts, a reward model scoring them,
  `pipelines.generate`) hold their weights in `Precision.dtype`: bf16 halves the bytes each decode
  step reads and needs no cast per matmul. PPO's rollouts sample from a bf16 copy of the trained policy
  that each update refreshes (`pipelines/ppo/trainer.py`).
- A one-output head (reward/value `score`) always computes in fp32, its input upcast, outside
  autocast (`modeling.fp32_score_head`): a reward rounded to bf16's 8 bits would move by ~0.4 %.
- Sampling and log-probs read logits upcast to fp32/fp64 (`decoding.pick_tokens`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on use: the CLIs' --help and flag parsing stay instant
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "auto: bf16 where the CPU multiplies bf16 natively (AVX512-BF16/AMX) or the GPU supports it, else fp32 "
    "(bf16 is >100x slower on AVX2-only CPUs); fp32 or bf16 force it."
)
# /proc/cpuinfo flags of CPUs whose bf16 dot products are instructions, not emulation.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass
class PrecisionArguments:
    """The `precision` key of every Trainer stage's config."""

    precision: str = dataclasses.field(default="auto", metadata={"help": PRECISION_HELP, "choices": PRECISIONS})


@dataclasses.dataclass(frozen=True)
class Precision:
    """What a stage does with the choice: autocast for training (`bf16`), weights of frozen and generation
    models in `dtype`, and the one-line `reason` printed once and kept in summary.json."""

    requested: str
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "precision": self.name, "reason": self.reason}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux); None where /proc/cpuinfo cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX).

    `flags` default to this machine's; without /proc/cpuinfo, torch's own (private) probes answer, and
    their absence counts as no.
    """
    flags = cpu_flags() if flags is None else set(flags)
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def _cpu_flag_names(flags: Iterable[str] | None) -> str:
    present = [f for f in NATIVE_BF16_FLAGS if f in set(flags or ())]
    return "/".join(present) or "AVX512-BF16/AMX"


def resolve_precision(
    requested: str = "auto", *, cuda: bool | None = None, flags: Iterable[str] | None = None
) -> Precision:
    """The precision a run uses on this machine (`cuda`, `flags`: what to assume instead, for tests)."""
    if requested not in PRECISIONS:
        from pipelines.cli import UserError

        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        native = torch.cuda.is_bf16_supported()
        where = "the GPU supports bf16" if native else "the GPU has no bf16 (pre-Ampere)"
    else:
        flags = cpu_flags() if flags is None else set(flags)
        native = cpu_has_native_bf16(flags)
        where = (
            f"the CPU multiplies bf16 natively ({_cpu_flag_names(flags)})"
            if native
            else "the CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), where bf16 is emulated and >100x slower"
        )
    bf16 = native if requested == "auto" else requested == "bf16"
    why = f"auto, {where}" if requested == "auto" else f"forced by precision: {requested}"
    if bf16 and not native and requested != "auto":
        why += f" although {where}"
    what = (
        "training under bf16 autocast with fp32 master weights, frozen and generation models in bf16"
        if bf16
        else "everything in fp32"
    )
    return Precision(requested, bf16, f"{'bf16' if bf16 else 'fp32'}: {why}; {what}")


def training_precision(requested: str, training_args: Any) -> Precision:
    """Resolve a Trainer stage's precision and set its TrainingArguments to it; prints the choice once.

    `bf16: true` (the key `precision` replaced) still forces bf16, with a one-line note; `bf16: false` is
    the stages' default, so it no longer forces fp32 (`precision: fp32` does).
    """
    from accelerate import PartialState

    from pipelines.cli import UserError

    main = PartialState().is_main_process
    if training_args.bf16:
        if requested == "fp32":
            raise UserError("bf16: true contradicts precision: fp32; drop bf16 (precision replaces it)")
        if main:
            print("note: bf16: true is deprecated; write precision: bf16 (or auto: bf16 where the hardware has it)")
        requested = "bf16"
    precision = resolve_precision(requested)
    # TrainingArguments turns `bf16` into `mixed_precision` when it is built, and the Trainer hands the
    # latter to accelerate: set both.
    training_args.bf16 = precision.bf16
    training_args.mixed_precision = "bf16" if precision.bf16 else "no"
    return announce_precision(precision) if main else precision


def announce_precision(precision: Precision) -> Precision:
    """Print the choice on stderr (once a run: call it from one process; stdout may be a CLI's output)."""
    print(f"precision: {precision.reason}", file=sys.stderr, flush=True)
    return precision


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    """`--precision auto|fp32|bf16` for the argparse CLIs (generate, eval compare, reward score, bench)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
