"""Where one SFT training step's time goes, bf16 autocast vs fp32: step times and the top ops (torch.profiler).

    python -m bench.profile_sft_step                       # SmolLM2-135M, 8 text-to-SQL pairs as the demo trains them
    python -m bench.profile_sft_step --attention sdpa      # stock SDPA (bf16 flash) instead of the stages' own
    python -m bench.profile_sft_step --attention math      # SDPA's math kernel (or: eager)
    python -m bench.profile_sft_step --loss logits         # the model's own loss over all logits, not TRL's head
    python -m bench.profile_sft_step --threads 1 --rows 20

A profile, not a bench: it prints and writes nothing. The step is the SFT stage's forward/backward/AdamW on the
model it trains, batch padded to its longest row, so that the two precisions differ in nothing else: the
stage's attention (`use_training_attention`) and its loss, TRL's fused LM head (`add_fused_lm_head`, as
SFTTrainer adds it) over the answer tokens only (completion-only loss; `score_labelled_tokens_only`).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch

from bench.common import SMOLLM2, TEXTSQL_TRAIN, apply_threads, model_path, read_jsonl
from pipelines.runner import score_labelled_tokens_only, use_training_attention


def train_step(
    model: Any, optimizer: Any, batch: Any, labels: Any, bf16: bool, kernel: list | None, fused: bool
) -> None:
    from torch.nn.attention import sdpa_kernel

    head = {"fused_lm_head": True} if fused else {}
    with sdpa_kernel(kernel) if kernel else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch, labels=labels, **head).loss
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_sft_step", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attention",
        choices=("training", "sdpa", "math", "eager"),
        default="training",
        help="training: the stages' own (`use_training_attention`: fp32 scores for short rows under bf16)",
    )
    parser.add_argument(
        "--loss",
        choices=("fused", "logits"),
        default="fused",
        help="fused: TRL's chunked LM head, as SFTTrainer runs it; logits: the model's cross-entropy over all logits",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after 2 warm-up steps")
    parser.add_argument("--rows", type=int, default=12, help="ops listed per precision")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    from torch.nn.attention import SDPBackend
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    model_dir = model_path(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_jsonl(TEXTSQL_TRAIN)[: args.batch]
    chats = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}] for r in rows]
    batch = tokenizer(tokenizer.apply_chat_template(chats, tokenize=False), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    prompts = tokenizer.apply_chat_template([chat[:1] for chat in chats], add_generation_prompt=True)["input_ids"]
    for row, prompt in zip(labels, prompts, strict=True):
        row[: len(prompt)] = -100  # completion-only: the answer tokens carry the loss
    fused = args.loss == "fused"
    score_labelled_tokens_only()
    print(
        f"batch {tuple(batch['input_ids'].shape)}, {int((labels != -100).sum())} answer tokens, "
        f"{torch.get_num_threads()} threads, attention {args.attention}, loss {args.loss}"
    )
    implementation = "eager" if args.attention == "eager" else "sdpa"
    for bf16 in (True, False):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=implementation)
        if args.attention == "training":
            use_training_attention(model)
        if fused:
            add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        kernel = [SDPBackend.MATH] if args.attention == "math" else None
        run = [model, optimizer, batch, labels, bf16, kernel, fused]
        for _ in range(2):
            train_step(*run)
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(*run)
        seconds = (time.perf_counter() - start) / args.steps
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            train_step(*run)
        print(f"\n=== {'bf16 autocast' if bf16 else 'fp32'}: {seconds:.3f} s a step (mean of {args.steps})")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
