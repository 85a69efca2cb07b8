"""Try a model: one prompt, a file of prompts, or an interactive chat.

    python -m pipelines.generate --model runs/sft-smollm2 --prompt "How many customers live in Lyon?"
    python -m pipelines.generate --model runs/sft-smollm2 --input prompts.jsonl --output answers.jsonl
    python -m pipelines.generate --model smollm2-135m-instruct          # chat; empty line or Ctrl-D quits

Works on any model folder the stages write (base, SFT, merged LoRA, LoRA adapter, PPO), using
the model's chat template and stopping at its eos token. Single prompts stream token by token.
Weights are loaded in `--precision` (auto: bf16 where the CPU multiplies bf16 natively, else fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.cli import UserError, cli_entry
from pipelines.runner import add_precision_flag

PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "text")


def read_prompts(path: Path) -> list[str]:
    """Prompts from a .txt file (one per line) or a .jsonl file (the first known prompt field)."""
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not lines:
        raise UserError(f"input file is empty: {path}")
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number} is not JSON: {err.msg}") from None
        field = next((f for f in PROMPT_FIELDS if f in row), None)
        if field is None:
            raise UserError(f"{path}:{number} has none of the fields {', '.join(PROMPT_FIELDS)}")
        prompts.append(str(row[field]))
    return prompts


def _messages(prompt: str, system: str | None, history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + (history or []) + [{"role": "user", "content": prompt}]


def _stream_reply(model, tokenizer, messages: list[dict[str, str]], args: argparse.Namespace) -> str:
    import torch
    from transformers import TextStreamer

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else None,
            top_p=None,
            top_k=None,
            streamer=streamer,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder (or a name under models/)")
    parser.add_argument(
        "--prompt",
        help="one prompt; without --prompt/--input an interactive chat starts",
    )
    parser.add_argument("--input", type=Path, help=".txt (one prompt a line) or .jsonl file of prompts")
    parser.add_argument("--output", type=Path, help="with --input: write JSONL here instead of stdout")
    parser.add_argument("--system", help="system message")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="with --input: prompts per generate() call",
    )
    add_precision_flag(parser)
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens must be > 0, got {args.max_new_tokens}")
    prompts = read_prompts(args.input) if args.input else None

    from trl import ModelConfig

    from pipelines.runner import announce_precision, generate_texts, load_model, load_tokenizer, resolve_precision

    tokenizer = load_tokenizer(args.model)
    precision = announce_precision(resolve_precision(args.precision))
    model = load_model(args.model, ModelConfig(), precision.bf16)
    if prompts is not None:
        generations, stats = generate_texts(
            model,
            tokenizer,
            [_messages(p, args.system) for p in prompts],
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            do_sample=args.temperature > 0,
            temperature=args.temperature or 1.0,
        )
        rows = [
            json.dumps({"prompt": p, "response": g.text, "hit_eos": g.hit_eos})
            for p, g in zip(prompts, generations, strict=True)
        ]
        text = "\n".join(rows) + "\n"
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
        print(
            f"{len(rows)} prompts, {stats.tokens_per_second:.1f} tokens/s",
            file=sys.stderr,
        )
        return
    if args.prompt is not None:
        _stream_reply(model, tokenizer, _messages(args.prompt, args.system), args)
        return
    history: list[dict[str, str]] = []
    print("chat with the model; an empty line or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            prompt = input("you> ").strip()
        except EOFError:
            break
        if not prompt:
            break
        reply = _stream_reply(model, tokenizer, _messages(prompt, args.system, history), args)
        history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]


if __name__ == "__main__":
    main()
