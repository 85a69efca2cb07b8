"""ppo_headroom: before spending hours on PPO, can the reward model tell the policy's right answers from its wrong
ones, and does sampling ever find the right answer where greedy decoding misses it?

    python -m bench.ppo_headroom                                  # the demo's SFT + reward models, 4 samples
    python -m bench.ppo_headroom --policy runs/x/sft --reward_model runs/x/reward --samples 8
    python -m bench.ppo_headroom --quick                          # tiny-llama smoke test

The SFT policy answers every held-out text-to-SQL question (data/textsql/test.jsonl, 200) greedily and
`--samples` times at `--temperature`; the verifier executes every answer and the reward model scores it. PPO
can only move probability toward answers the policy samples, and only as far as the reward ranks them right:

- greedy accuracy: where PPO starts;
- oracle accuracy: a question counts if the greedy answer or any sample is right (what exploration can reach);
- reward-picked accuracy: the answer the reward model scores highest among those (what its preference asks for);
- reward pairwise accuracy on the policy's own answers: over every (right, wrong) pair of answers to the same
  question, how often the right one scores higher (the reward model's held-out pairs are rewrites of the gold
  SQL; the policy's mistakes are other mistakes).

The line compares reward-picked with greedy accuracy (INFO, no target): below 1.0 the reward model, optimised,
leads away from what the verifier accepts; the oracle bounds what sampling can add at all.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from bench.common import ROOT, Recorder, Verdict, add_common_flags, apply_threads, read_jsonl
from bench.ppo_vs_trl import add_model_flags, ppo_models

NAME = "ppo_headroom"
HELD_OUT = ROOT / "data" / "textsql" / "test.jsonl"


def measure(policy: str, reward_model: str, samples: int, temperature: float, limit: int | None) -> dict[str, Any]:
    from transformers import set_seed
    from trl import ModelConfig

    from pipelines.runner import (
        generate_texts,
        load_model,
        load_scalar_model,
        load_tokenizer,
        resolve_precision,
        score_conversations,
    )
    from pipelines.tasks.textsql.reward import execution_reward

    bf16 = resolve_precision("auto").bf16  # bf16 weights where the CPU multiplies bf16 natively, as eval does
    questions = [row["question"] for row in read_jsonl(HELD_OUT)][:limit]
    tokenizer = load_tokenizer(policy)
    model = load_model(policy, ModelConfig(model_name_or_path=policy), use_bf16=bf16)
    prompts = [[{"role": "user", "content": q}] for q in questions]
    greedy, _ = generate_texts(model, tokenizer, prompts, max_new_tokens=48, desc="Greedy")
    set_seed(0)
    sampled, _ = generate_texts(
        model, tokenizer, prompts * samples, 48, do_sample=True, temperature=temperature, desc="Sampling"
    )
    del model
    scorer = load_scalar_model(reward_model, use_bf16=bf16, trained_head=True)
    n = len(questions)
    answers = [[greedy[i].text] + [sampled[i + k * n].text for k in range(samples)] for i in range(n)]
    flat_questions = [q for q, row in zip(questions, answers, strict=True) for _ in row]
    flat_answers = [a for row in answers for a in row]
    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for q, a in zip(flat_questions, flat_answers, strict=True)
    ]
    scores = score_conversations(scorer, tokenizer, conversations, desc="Scoring")
    right = [value == 1.0 for value in execution_reward(flat_questions, flat_answers)]
    width = samples + 1
    scored = list(zip(scores, right, strict=True))
    per_question = [scored[i * width : (i + 1) * width] for i in range(n)]
    agree = pairs = 0
    for answers_of_one in per_question:
        for a, b in itertools.combinations(answers_of_one, 2):
            if a[1] != b[1]:
                pairs += 1
                good, bad = (a, b) if a[1] else (b, a)
                agree += good[0] > bad[0]
    return {
        "questions": n,
        "samples": samples,
        "temperature": temperature,
        "greedy_accuracy": sum(q[0][1] for q in per_question) / n,
        "sample_accuracy": sum(r for q in per_question for _, r in q[1:]) / (n * samples),
        "oracle_accuracy": sum(any(r for _, r in q) for q in per_question) / n,
        "reward_picked_accuracy": sum(max(q, key=lambda t: t[0])[1] for q in per_question) / n,
        "reward_pairwise_on_own_answers": agree / pairs if pairs else None,
        "right_wrong_pairs": pairs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ppo_headroom", description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per question besides greedy")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0: the policy)")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    policy, reward_model = ppo_models(args)
    recorder = Recorder(NAME, args.quick)
    figures = measure(policy, reward_model, args.samples, args.temperature, 8 if args.quick else None)
    pairwise = figures["reward_pairwise_on_own_answers"]
    verdict = Verdict(
        NAME,
        "reward-picked",
        figures["reward_picked_accuracy"],
        "greedy",
        figures["greedy_accuracy"],
        "execution accuracy",
        None,
        note=f"{figures['questions']} held-out questions, greedy + {args.samples} samples at T={args.temperature:g}: "
        f"oracle {figures['oracle_accuracy']:.3f}, sample accuracy {figures['sample_accuracy']:.3f}, reward "
        f"pairwise accuracy on the policy's own answers "
        f"{'n/a' if pairwise is None else f'{pairwise:.3f}'} ({figures['right_wrong_pairs']} right/wrong pairs)",
    )
    recorder.finish(verdict, {"policy": policy, "reward_model": reward_model, **figures})


if __name__ == "__main__":
    main()
