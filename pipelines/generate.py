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

from datasets import DatasetDict

from pipelines.cli import CliParser, UserError, check_output_file, cli_entry, write_atomically
from pipelines.data.formats import check_text_columns
from pipelines.data.sources import load_source
from pipelines.runner import add_precision_flag, check_ranges

PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "text")


def read_prompts(spec: str) -> list[str]:
    """Prompts from any data source the stages read (a .txt file is one prompt a line), from its first known prompt
    column; a row without text there is a one-line error naming it."""
    rows = load_source(spec)
    rows = rows["train"] if isinstance(rows, DatasetDict) else rows
    if len(rows) == 0:
        raise UserError(f"no prompts in {spec}")
    field = next((f for f in PROMPT_FIELDS if f in rows.column_names), None)
    if field is None:
        found = ", ".join(rows.column_names)
        raise UserError(f"{spec} has none of the prompt columns {', '.join(PROMPT_FIELDS)} (it has {found})")
    check_text_columns(rows, [field], spec)
    return list(rows[field])


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
    parser = CliParser(prog="python -m pipelines.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model folder (or a name under models/)")
    parser.add_argument(
        "--prompt",
        help="one prompt; without --prompt/--input an interactive chat starts",
    )
    parser.add_argument(
        "--input", help="prompts: a .txt file (one a line), or any data file or folder with a prompt column"
    )
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
    # every mistake a user can make is found before the model loads or anything is written
    check_ranges(args, prefix="--")
    if args.input and args.prompt is not None:
        raise UserError("give --prompt or --input, not both")
    if args.output:
        if not args.input:
            raise UserError("--output writes the answers to --input's prompts: give --input too")
        check_output_file(args.output)
    prompts = read_prompts(args.input) if args.input else None

    from trl import ModelConfig

    from pipelines.runner import (
        announce_precision,
        check_weights,
        generate_texts,
        load_model,
        load_tokenizer,
        resolve_precision,
    )

    tokenizer = load_tokenizer(args.model)
    check_weights(args.model)
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
            write_atomically(args.output, text)
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
