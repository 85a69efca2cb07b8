"""Model and tokenizer loading for every stage: dtype (see `precision.py`), LoRA (peft), QLoRA, merged export."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, get_peft_config, get_quantization_config

from pipelines.cli import UserError
from pipelines.models import resolve_model


def torch_dtype(model_args: ModelConfig, use_bf16: bool) -> torch.dtype:
    """fp32 unless `use_bf16` (a frozen or generation model under bf16 precision); `dtype: bfloat16|float16`
    (not TRL's default float32, nor auto) is the user's explicit choice and wins."""
    if model_args.dtype not in (None, "auto", "float32"):
        return getattr(torch, model_args.dtype)
    return torch.bfloat16 if use_bf16 else torch.float32


def check_quantization(model_args: ModelConfig) -> None:
    """QLoRA needs bitsandbytes on a CUDA GPU; say so before anything is loaded."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    if not torch.cuda.is_available():
        raise UserError(
            "QLoRA (load_in_4bit/load_in_8bit) needs a CUDA GPU: bitsandbytes quantised layers do not train on "
            "CPU here; use plain LoRA (use_peft: true, load_in_4bit: false) on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("QLoRA needs bitsandbytes: pip install bitsandbytes") from None
    if not model_args.use_peft:
        raise UserError("a 4/8-bit model can only be trained with LoRA adapters: set use_peft: true")


def load_tokenizer(name_or_path: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError(
            f"the tokenizer of {name_or_path!r} has no pad token distinct from eos: generation would not stop and "
            "eos would be masked out of the loss; set tokenizer.pad_token to an unused token and save it"
        )
    tokenizer.padding_side = padding_side
    return tokenizer


def model_kwargs(model_args: ModelConfig, use_bf16: bool) -> dict[str, Any]:
    """`from_pretrained` keyword arguments shared by every model a stage loads."""
    check_quantization(model_args)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(model_args, use_bf16),
        "revision": model_args.model_revision,
    }
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}
    return kwargs


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.gguf")


def check_weights(name_or_path: str) -> str:
    """The model's resolved path; a local folder without weight files is a one-line `UserError` saying so."""
    path = resolve_model(name_or_path)
    folder = Path(path)
    if folder.is_dir() and not any(next(folder.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise UserError(
            f"model folder {name_or_path!r} has a config but no weights (no .safetensors or .bin file): "
            "give a folder a model was saved to (save_pretrained), or copy its weights there"
        )
    return path


def load_model(
    name_or_path: str,
    model_args: ModelConfig,
    use_bf16: bool = False,
    auto_class: type = AutoModelForCausalLM,
    **extra: Any,
) -> PreTrainedModel:
    """Load a (local or hub) model; a LoRA adapter folder loads with its base model.

    Weights are fp32 (a model to train: its weights are the master weights, bf16 comes from autocast)
    unless `use_bf16` (`Precision.bf16` for a frozen or generation model). A one-output head computes in
    fp32 either way (`fp32_score_head`).
    """
    path = check_weights(name_or_path)
    kwargs = model_kwargs(model_args, use_bf16) | extra
    try:
        if (Path(path) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
        else:
            model = auto_class.from_pretrained(path, **kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "the hub is offline" if offline else str(err).splitlines()[0]
        raise UserError(f"cannot load model {name_or_path!r}: {reason}") from None
    return fp32_score_head(model)


class Fp32Linear(torch.nn.Linear):
    """A linear layer that computes in fp32 whatever its weights' dtype and any autocast around it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def fp32_score_head(model: PreTrainedModel) -> PreTrainedModel:
    """Make a classifier's `score` head (reward and value models) output fp32 scores.

    Under bf16 autocast or with bf16 weights the head would round a reward to bf16 (8 bits of mantissa:
    a score of 3.5 moves in steps of 0.016); in fp32 it costs nothing (one hidden-size dot product per
    position). The class is swapped in place, so parameters and state-dict keys stay as they are.
    """
    head = getattr(model, "score", None)
    if type(head) is torch.nn.Linear:
        head.__class__ = Fp32Linear
    return model


def lora_config(model_args: ModelConfig):
    """The LoRA adapter config from the stage's model arguments (None for full fine-tuning)."""
    return get_peft_config(model_args)


def export_merged(adapter_dir: Path, merged_dir: Path) -> Path:
    """Merge a LoRA adapter into its base weights and save a plain model folder (with tokenizer)."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32)
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(merged_dir)
    return merged_dir


def score_labelled_tokens_only() -> None:
    """Make TRL's fused LM head (SFT loss) project only the positions that carry a label, on CPU too.

    TRL 1.16 scores every position (prompt and padding included) unless Triton runs the kernel, to
    keep tile shapes fixed for compiled backends; in eager mode on CPU that only costs: with
    completion-only loss most positions are prompt, and the head is a fifth of SmolLM2's FLOPs.
    The compact path is TRL's own (the one it takes on GPUs); this selects it.
    """
    from trl.trainer import utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        on_gpu = trl_utils._use_triton
        trl_utils._use_triton = lambda device: device.type == "cpu" or on_gpu(device)


TRAINING_SDPA = "sdpa_for_training"
# Under CPU bf16 autocast, SDPA's flash kernel is slower in bf16 than in fp32 up to about this many keys
# (fwd + bwd, SmolLM2's 9 heads of 64, 4096 tokens a batch, 2 threads, AMD EPYC with AVX512-BF16:
# 75 vs 39 ms at 90 keys, 78 vs 70 at 256, 127 vs 135 at 512).
FP32_ATTENTION_MAX_KEYS = 256


def _attend_in_fp32(query: torch.Tensor, keys: int, longest: int) -> bool:
    """Under CPU bf16 autocast, a pass over mostly new tokens (training, log-probs, prefill; after a shared
    prefix too) whose sequences are short. Not a decoding step: it would cast its whole cache again."""
    return (
        query.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and query.shape[2] > 1
        and keys <= 2 * query.shape[2]
        and longest <= FP32_ATTENTION_MAX_KEYS
    )


def sdpa_for_training(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for a model being trained: packed rows one sequence at a time; short rows in fp32 on a bf16 CPU.

    Packing: TRL's padding-free rows (`bfd`) flatten a batch into one row of concatenated examples and
    pass their boundaries (`cu_seq_lens_q`). Stock SDPA ignores them: transformers turns the position
    ids into a dense block-diagonal mask over the whole row, so every layer computes (and keeps for
    backward) all T x T scores — 8 rows of 256 become one of 2048, 8x the attention work, most of it
    masked out. Here each sequence attends over itself alone (causal, no mask), as flash-attn's varlen
    kernel does: the same result.

    Precision: on a CPU, the flash kernel's bf16 backward is slower than its fp32 one for short
    sequences (`FP32_ATTENTION_MAX_KEYS`), so there the scores are computed in fp32 outside autocast;
    the projections around them stay bf16. Decoding steps and GPUs are left to the stock kernel.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    packed = cu_seq_lens_q is not None and query.shape[0] == 1 and key.shape[2] == query.shape[2]
    bounds = cu_seq_lens_q.tolist() if packed else [0, key.shape[2]]
    if _attend_in_fp32(query, key.shape[2], max(end - start for start, end in itertools.pairwise(bounds))):
        query, key, value = query.float(), key.float(), value.float()
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        fp32 = torch.autocast("cpu", enabled=False)
    else:
        fp32 = contextlib.nullcontext()
    with fp32:
        if not packed:
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end],
                key[:, :, start:end],
                value[:, :, start:end],
                dropout_p=dropout if module.training else 0.0,
                is_causal=True,
                scale=scaling,
            )
            for start, end in itertools.pairwise(bounds)
            if end > start
        ]
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def use_training_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Use `sdpa_for_training` in a model to be trained, where it runs SDPA (the default)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return model  # flash attention reads the boundaries itself; eager/flex are the user's explicit choice
    AttentionInterface.register(TRAINING_SDPA, sdpa_for_training)
    AttentionMaskInterface.register(TRAINING_SDPA, sdpa_mask)
    model.set_attn_implementation(TRAINING_SDPA)
    return model
