"""`precision: auto | fp32 | bf16`: what the resolver picks on which machine, what a stage does with it
(TrainingArguments, weights, fp32 score heads), and that a bf16 SFT run really trains under autocast and
still saves fp32 weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification
from trl import ModelConfig, SFTConfig

from pipelines.cli import UserError
from pipelines.runner import PRECISIONS, load_model, resolve_precision, training_precision
from pipelines.runner.modeling import Fp32Linear
from pipelines.runner.precision import cpu_flags, cpu_has_native_bf16

AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma", "avx512f"}
AVX512_BF16 = AVX2_ONLY | {"avx512_bf16"}
AMX = AVX2_ONLY | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.mark.parametrize(("flags", "native"), [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True), (set(), False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags: set[str], native: bool) -> None:
    assert cpu_has_native_bf16(flags) is native
    assert resolve_precision("auto", cuda=False, flags=flags).bf16 is native


def test_cpu_flags_are_parsed_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") is None


def test_auto_reason_names_the_flag_or_its_absence() -> None:
    chosen = resolve_precision("auto", cuda=False, flags=AMX)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert "amx_bf16" in chosen.reason and "fp32 master weights" in chosen.reason
    fallback = resolve_precision("auto", cuda=False, flags=AVX2_ONLY)
    assert fallback.name == "fp32" and fallback.dtype == torch.float32
    assert "no native bf16" in fallback.reason
    assert fallback.as_dict() == {"requested": "auto", "precision": "fp32", "reason": fallback.reason}


@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_BF16])
def test_fp32_and_bf16_force_the_choice_on_any_cpu(flags: set[str]) -> None:
    assert resolve_precision("fp32", cuda=False, flags=flags).bf16 is False
    forced = resolve_precision("bf16", cuda=False, flags=flags)
    assert forced.bf16 is True
    assert ("emulated" in forced.reason) is (flags == AVX2_ONLY)  # forcing bf16 where it is slow says so


def test_a_gpu_decides_by_its_own_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda=True, flags=AVX2_ONLY).bf16 is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda=True, flags=AMX).bf16 is False


def test_an_unknown_precision_is_a_user_error() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16")


def sft_args(tmp_path: Path, **overrides: Any) -> SFTConfig:
    return SFTConfig(**{"output_dir": str(tmp_path), "use_cpu": True, "report_to": [], "bf16": False, **overrides})


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_training_precision_sets_the_trainer_s_autocast(tmp_path: Path, requested: str) -> None:
    args = sft_args(tmp_path)
    precision = training_precision(requested, args)
    assert precision.name == requested
    assert args.bf16 is (requested == "bf16")
    assert args.mixed_precision == ("bf16" if requested == "bf16" else "no")  # what the Trainer gives accelerate


def test_deprecated_bf16_true_still_forces_bf16_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = sft_args(tmp_path, bf16=True)
    assert training_precision("auto", args).bf16 and args.mixed_precision == "bf16"
    assert "bf16: true is deprecated" in capsys.readouterr().out
    with pytest.raises(UserError, match="contradicts precision: fp32"):
        training_precision("fp32", sft_args(tmp_path, bf16=True))


@pytest.fixture(scope="module")
def classifier(tiny_model: Path) -> Any:
    return load_model(str(tiny_model), ModelConfig(), False, AutoModelForSequenceClassification, num_labels=1)


def test_score_head_outputs_fp32_under_autocast_and_with_bf16_weights(tiny_model: Path, classifier: Any) -> None:
    assert type(classifier.score) is Fp32Linear
    assert list(classifier.state_dict()) == list(
        AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).state_dict()
    )  # the swapped class keeps every parameter name
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = classifier.model(input_ids=ids).last_hidden_state
            autocast_scores = classifier(input_ids=ids).logits
        # the head's product in fp32, from the same (autocast) hidden state: no bf16 rounding of the score
        expected = hidden[:, -1].float() @ classifier.score.weight.float().T
    assert autocast_scores.dtype == torch.float32
    torch.testing.assert_close(autocast_scores, expected, rtol=1e-6, atol=1e-6)

    bf16_model = load_model(str(tiny_model), ModelConfig(), True, AutoModelForSequenceClassification, num_labels=1)
    assert bf16_model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        assert bf16_model(input_ids=ids).logits.dtype == torch.float32


def test_trained_models_load_fp32_and_frozen_ones_in_the_precision_s_dtype(tiny_model: Path) -> None:
    assert load_model(str(tiny_model), ModelConfig()).dtype == torch.float32
    assert load_model(str(tiny_model), ModelConfig(), resolve_precision("bf16").bf16).dtype == torch.bfloat16
    explicit = ModelConfig(dtype="bfloat16")  # an explicit dtype other than TRL's default float32 wins
    assert load_model(str(tiny_model), explicit).dtype == torch.bfloat16


# --- a bf16 SFT run: trains, differs from fp32 by rounding only, saves fp32 ---------------------------------

OVERFIT_ROWS = [
    {"question": f"Which colour is item {i}?", "answer": f"Item {i} is {colour}."}
    for i, colour in enumerate(["red", "blue", "green", "black", "white", "pink", "grey", "brown"])
]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory: pytest.TempPathFactory, tiny_sft_args, write_qa_jsonl, run_cli_many) -> dict[str, Path]:
    """The same 12 steps on 8 examples (every batch is the whole set), in fp32 and in bf16, run concurrently."""
    root = tmp_path_factory.mktemp("precision")
    data = write_qa_jsonl(root / "eight.jsonl", rows=OVERFIT_ROWS)
    runs = {name: root / name for name in ("fp32", "bf16")}
    flags = ("--dataset", data, "--eval_dataset", data, "--max_steps", 12, "--logging_steps", 1)
    flags += ("--save_strategy", "no", "--report_to", "none")
    results = run_cli_many(
        *[("pipelines.sft", *tiny_sft_args(out, *flags, "--precision", name)) for name, out in runs.items()]
    )
    for result in results:
        assert result.returncode == 0, result.stderr[-4000:]
    return runs


def step_losses(output_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_bf16_sft_trains_and_saves_fp32_weights(sft_runs: dict[str, Path]) -> None:
    out = sft_runs["bf16"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"]["precision"] == "bf16"
    losses = step_losses(out)
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0], losses  # measured: 10.83 -> 6.89
    with safe_open(out / "model.safetensors", "pt") as weights:
        names = weights.keys()  # safe_open is not iterable
        dtypes = {weights.get_slice(name).get_dtype() for name in names}
    assert dtypes == {"F32"}  # master weights, not their bf16 casts


def test_bf16_sft_losses_differ_from_fp32_by_rounding_only(sft_runs: dict[str, Path]) -> None:
    """Step 1 (same weights, same batch): bf16 autocast changes the loss, but only by rounding.

    Measured on the tiny model: 10.83212 vs 10.83231 (1.8e-5 relative), and 6.8926 vs 6.8978 after 12
    steps; identical losses would mean that autocast never ran.
    """
    bf16, fp32 = step_losses(sft_runs["bf16"]), step_losses(sft_runs["fp32"])
    assert bf16[0] != fp32[0]
    assert abs(bf16[0] - fp32[0]) / fp32[0] < 1e-3
    assert abs(bf16[-1] - fp32[-1]) / fp32[-1] < 1e-2
    assert json.loads((sft_runs["fp32"] / "summary.json").read_text())["precision"]["precision"] == "fp32"


# --- attention under CPU bf16 autocast: fp32 scores for short training rows ---------------------------------


def test_training_attention_scores_short_rows_in_fp32_under_bf16_autocast(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`use_training_attention`: on a CPU under bf16 autocast, SDPA gets fp32 inputs for whole short rows (its
    bf16 backward is the slower one there) and bf16 ones for long rows and decoding steps; the logits stay
    those of stock SDPA up to bf16 rounding, and without autocast nothing changes."""
    from pipelines.runner import use_training_attention
    from pipelines.runner.modeling import FP32_ATTENTION_MAX_KEYS

    seen: list[tuple[int, int, torch.dtype]] = []  # (query length, key length, dtype it runs in) of each SDPA call
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recorded(query, key, value, *args, **kwargs):
        # under autocast SDPA casts its inputs to bf16 itself (it is on CPU autocast's lower-precision list)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else query.dtype
        seen.append((query.shape[2], key.shape[2], dtype))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    stock = load_model(str(tiny_model), ModelConfig())
    model = use_training_attention(load_model(str(tiny_model), ModelConfig()))
    assert model.config._attn_implementation == "sdpa_for_training"
    layers = model.config.num_hidden_layers

    def logits(net: Any, ids: torch.Tensor, bf16: bool = True) -> torch.Tensor:
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()

    short = torch.randint(3, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    ours = logits(model, short)
    assert seen == [(40, 40, torch.float32)] * layers
    torch.testing.assert_close(ours, logits(stock, short), atol=0.05, rtol=0.05)  # bf16 rounding apart
    assert seen == [(40, 40, torch.bfloat16)] * layers

    long = torch.randint(3, 200, (1, FP32_ATTENTION_MAX_KEYS + 1), generator=torch.Generator().manual_seed(1))
    logits(model, long)
    assert {dtype for *_, dtype in seen} == {torch.bfloat16}

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # a decoding step keeps bf16
        cache = model(input_ids=short, use_cache=True).past_key_values
        seen.clear()
        model(input_ids=short[:, :1], past_key_values=cache, use_cache=True)
    assert seen == [(1, 41, torch.bfloat16)] * layers

    torch.testing.assert_close(logits(model, short, bf16=False), logits(stock, short, bf16=False))
    assert {dtype for *_, dtype in seen} == {torch.float32}
