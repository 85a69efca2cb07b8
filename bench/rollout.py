"""rollout: PPO rollout generation tokens/s of `pipelines.ppo.rollout.sample` vs plain `model.generate`.

    python -m bench.rollout                 # the newest demo SFT policy (else SmolLM2), batch 16, 48 new tokens
    python -m bench.rollout --policy runs/x/sft --batches 8
    python -m bench.rollout --quick         # tiny-llama smoke test

Both sides sample (temperature 0.7, no top-k/top-p, like the PPO default config) the same
batches of training prompts at the default rollout batch (16), left-padded, with the KV cache;
the two sides alternate which goes first, so drift in machine load hits both. tokens/s counts response tokens up
to and including eos. `sample` uses `pipelines.runner.decode` (finished rows leave the
batch, KV written into a buffer, CDF sampling, the shared chat-template prefix computed once, and
speculative decoding with an n-gram drafter kept across the batches, as the PPO trainer keeps one
across updates: the first batch drafts from its prompts only); the peer is `model.generate` as a
script calls it. Targets: ratio >= 1.3 and >= 120 tokens/s on SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from bench.common import (
    ROOT,
    SMOLLM2,
    TEXTSQL_TRAIN,
    TINY,
    Recorder,
    Verdict,
    add_common_flags,
    apply_threads,
    loadavg,
    model_path,
    read_jsonl,
)

NAME = "rollout"
TARGET = 1.3
ABSOLUTE_TARGET = 120.0


def default_policy() -> str:
    for run in sorted(ROOT.glob("runs/demo-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if (run / "sft" / "config.json").is_file():
            return str(run / "sft")
    return model_path(SMOLLM2)


def response_tokens(new: torch.Tensor, eos: int, pad: int) -> int:
    """Tokens up to and including the first eos of each row (padding after it not counted)."""
    count = 0
    for row in new.tolist():
        count += row.index(eos) + 1 if eos in row else sum(t != pad for t in row)
    return count


def rollout_batches(quick: bool, batches: int | None = None) -> tuple[dict[str, Any], list[list[list[dict]]]]:
    """configs/ppo/default.yaml (16 new tokens in quick mode) and `batches` (default 8; quick 2) batches of
    training questions at its rollout batch size, as chat prompts."""
    config = yaml.safe_load((ROOT / "configs" / "ppo" / "default.yaml").read_text())
    config["max_new_tokens"] = 16 if quick else config["max_new_tokens"]
    size = config["rollout_batch_size"]
    rows = read_jsonl(TEXTSQL_TRAIN)[: (batches or (2 if quick else 8)) * size]
    prompts = [[{"role": "user", "content": row["question"]}] for row in rows]
    return config, [prompts[i : i + size] for i in range(0, len(prompts), size)]


@torch.no_grad()
def plain_generate(model: Any, tokenizer: Any, batch: Any, max_new_tokens: int, temperature: float) -> torch.Tensor:
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return output[:, batch["input_ids"].shape[1] :]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.splitlines()[0])
    add_common_flags(parser)
    parser.add_argument("--policy", help="policy folder (default: the newest runs/demo-*/sft, else SmolLM2)")
    parser.add_argument("--batches", type=int, default=None, help="rollout batches per side (default 8; quick 2)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from pipelines.ppo.rollout import sample
    from pipelines.runner import NgramDrafter, load_tokenizer, render_prompts

    config, chunks = rollout_batches(args.quick, args.batches)
    batch_size, temperature = config["rollout_batch_size"], config["temperature"]
    max_new_tokens = config["max_new_tokens"]
    policy = model_path(TINY) if args.quick else (args.policy or default_policy())
    batches = len(chunks)
    recorder = Recorder(NAME, args.quick)

    tokenizer = load_tokenizer(policy, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32).eval()
    sample(model, tokenizer, chunks[0][:2], 8, temperature, 2)  # warm-up, untimed
    drafter, draft_tokens = NgramDrafter(), config["draft_tokens"]

    totals = {"pipelines": [0, 0.0], "plain": [0, 0.0]}
    runs = [(chunk, side) for i, chunk in enumerate(chunks) for side in (("A", "B") if i % 2 == 0 else ("B", "A"))]
    for index, (chunk, side) in enumerate(tqdm(runs, desc="rollout batches")):
        torch.manual_seed(index // 2)  # both sides of a batch draw from the same seed
        start = time.perf_counter()
        if side == "A":
            rollout = sample(
                model, tokenizer, chunk, max_new_tokens, temperature, batch_size, None, drafter, draft_tokens
            )
            tokens = int(rollout.response_mask.sum())
        else:
            encoded = tokenizer(
                render_prompts(tokenizer, chunk), return_tensors="pt", padding=True, add_special_tokens=False
            )
            new = plain_generate(model, tokenizer, encoded, max_new_tokens, temperature)
            tokens = response_tokens(new, tokenizer.eos_token_id, tokenizer.pad_token_id)
        name = "pipelines" if side == "A" else "plain"
        totals[name][0] += tokens
        totals[name][1] += time.perf_counter() - start
    rates = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    acceptance = drafter.accepted / max(drafter.drafted, 1)
    absolute_ok = rates["pipelines"] >= ABSOLUTE_TARGET
    verdict = Verdict(
        NAME,
        "rollout sample",
        rates["pipelines"],
        "plain generate",
        rates["plain"],
        "tok/s",
        TARGET,
        note=f"batch {batch_size}, {max_new_tokens} new tokens, temperature {temperature}, {batches} batches a side, "
        f"{draft_tokens} draft tokens ({acceptance:.0%} right); >= {ABSOLUTE_TARGET:g} tok/s: "
        f"{'yes' if absolute_ok else 'no'}",
        condition_met=absolute_ok,
    )
    recorder.finish(
        verdict,
        {
            "policy": policy,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "batches_per_side": batches,
            "draft_tokens": draft_tokens,
            "drafted": drafter.drafted,
            "drafts_accepted": drafter.accepted,
            "totals": {name: {"tokens": t, "seconds": s} for name, (t, s) in totals.items()},
            "absolute_target_tokens_per_s": ABSOLUTE_TARGET,
            "absolute_target_met": absolute_ok,
            "loadavg": loadavg(),
        },
    )


if __name__ == "__main__":
    main()
