"""Evaluate and compare models on held-out prompts, and write the HTML report of a run folder.

    # base vs SFT vs PPO on the held-out text-to-SQL questions: execution accuracy by tier,
    # exact match, BLEU, token accuracy and perplexity of the gold answers, reward-model score,
    # response length, win rates by the verifier and the reward model, error categories, side by side;
    # ends by writing <output_dir>/report.html
    python -m pipelines.eval compare --models smollm2-135m-instruct runs/demo/sft runs/demo/ppo \\
        --names base sft ppo --reward_model runs/demo/reward --output_dir runs/demo/comparison
    # one offline HTML page for a whole run folder: training curves, summaries, comparisons
    python -m pipelines.eval report --run_dir runs/demo

    # the verifiable math questions: answer accuracy by tier, failures by mistake kind
    python -m pipelines.eval compare --models smollm2-135m-instruct runs/math-sft --names base sft \\
        --data data/mathqa/test.jsonl --output_dir runs/math-comparison

Any list of model folders works; `--data` takes any data source with question/answer columns.
`--verifier auto` picks the judge from the data: math rows (pipelines.tasks.mathqa) by their final number,
text-to-SQL rows by executing the answer on `--db`. `--lm_eval_tasks arc_easy,hellaswag` also
runs lm-evaluation-harness tasks when it is installed and online (pipelines/eval/harness.py).
Models and the reward model are loaded in `--precision` (auto: bf16 where the CPU multiplies bf16
natively, else fp32; the reward model's score head computes in fp32 either way).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.cli import CliParser, UserError, check_output_dir, check_output_file, claim_output_dir, cli_entry
from pipelines.data.formats import detect_mapping, generation_pairs, to_training_format
from pipelines.data.sources import load_source
from pipelines.eval import harness
from pipelines.eval.report import COMPARISON_FILE, write_report
from pipelines.eval.verifiers import CHOICES as VERIFIERS
from pipelines.eval.verifiers import pick_verifier
from pipelines.models import PROJECT_ROOT, resolve_model
from pipelines.runner import add_precision_flag, check_ranges

DEFAULT_DATA = PROJECT_ROOT / "data" / "textsql" / "test.jsonl"
DEFAULT_DB = PROJECT_ROOT / "data" / "textsql" / "shop.sqlite"


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from trl import ModelConfig

    from pipelines.eval.compare import compare_models, win_rates
    from pipelines.runner import (
        Generation,
        announce_precision,
        check_scoring_model,
        load_model,
        load_scalar_model,
        load_tokenizer,
        resolve_precision,
        score_conversations,
    )

    # every mistake a user can make is found before a model loads or anything is written
    names = args.names or [Path(m).name for m in args.models]
    if len(names) != len(args.models):
        raise UserError(f"{len(args.models)} models but {len(names)} names")
    if len(set(names)) != len(names):
        raise UserError(f"the model names repeat ({', '.join(names)}): give distinct --names")
    if args.db is not None and not args.db.is_file():  # a --db the user gave; never silently no SQL verifier
        raise UserError(f"--db {args.db} is not a file: give the SQLite database the answers run on")
    db = args.db or DEFAULT_DB
    claim_output_dir(check_output_dir(args.output_dir))
    lm_eval_tasks = harness.parse_tasks(args.lm_eval_tasks or "")
    if lm_eval_tasks:
        harness.check_available(lm_eval_tasks)  # before minutes of generation, not after
    for model in args.models:
        resolve_model(model)
    if args.reward_model:
        check_scoring_model(args.reward_model)
    rows = load_source(args.data, purpose="eval")
    rows = rows["train"] if hasattr(rows, "keys") else rows
    rows = rows.select(range(min(args.samples, len(rows))))
    verified_rows = [dict(r) for r in rows]
    verifier = pick_verifier(args.verifier, rows.column_names, db, verified_rows)
    mapping = detect_mapping(rows.column_names, args.columns)
    formatted = to_training_format(rows, mapping, args.system_prompt, name=args.data)
    prompts, references = generation_pairs(formatted)
    if not prompts:
        raise UserError(f"{args.data} has no prompt/answer pairs to compare on (it has {', '.join(mapping)} rows)")
    tokenizer = load_tokenizer(args.models[0])
    precision = announce_precision(resolve_precision(args.precision))
    reward_model = None
    if args.reward_model:
        reward_model = load_scalar_model(args.reward_model, use_bf16=precision.bf16, trained_head=True)
        reward_tokenizer = load_tokenizer(args.reward_model)
    reports: list[dict[str, Any]] = []  # one verifier report per model, in order
    reward_scores: list[list[float]] = []  # one list of per-prompt scores per model, in order

    def task_metrics(generations: list[Generation]) -> dict[str, float]:
        texts = [g.text for g in generations]
        metrics: dict[str, Any] = {}
        if verifier is not None:
            report = verifier.evaluate(verified_rows, texts, [not g.hit_eos for g in generations])
            metrics[verifier.metric] = report[verifier.metric]
            metrics.update({f"{verifier.metric}_{tier}": acc for tier, acc in report["by_difficulty"].items()})
            reports.append(report)
        if reward_model is not None:
            chats = [[*p, {"role": "assistant", "content": t}] for p, t in zip(prompts, texts, strict=True)]
            scores = score_conversations(reward_model, reward_tokenizer, chats, desc="Scoring with the reward model")
            reward_scores.append(scores)
            metrics["reward_mean"] = sum(scores) / len(scores)
        return metrics

    loaders = {
        name: (lambda m=model: load_model(m, ModelConfig(), precision.bf16))
        for name, model in zip(names, args.models, strict=True)
    }
    results = compare_models(
        loaders,
        tokenizer,
        prompts,
        references,
        args.output_dir,
        args.max_new_tokens,
        args.batch_size,
        task_metrics,
        score_references=True,
    )
    output: dict[str, Any] = {
        "data": str(args.data),
        "prompts": len(prompts),
        "models": dict(zip(names, args.models, strict=True)),
        "reward_model": args.reward_model,
        "precision": precision.as_dict(),
        "verifier": {"name": verifier.name, "metric": verifier.metric, "judges_by": verifier.judges_by}
        if verifier
        else None,
        "metrics": results,
    }
    per_prompt: dict[str, dict[str, list[Any]]] = {name: {} for name in names}
    judges: dict[str, dict[str, list[float]]] = {}
    for name, report in zip(names, reports, strict=True) if reports else ():
        per_prompt[name]["correct"] = [p["correct"] for p in report["per_prediction"]]
        per_prompt[name]["category"] = [p["category"] for p in report["per_prediction"]]
        judges.setdefault("verifier", {})[name] = [float(p["correct"]) for p in report["per_prediction"]]
    for name, scores in zip(names, reward_scores, strict=True) if reward_scores else ():  # a judge is optional
        per_prompt[name]["reward"] = scores
        judges.setdefault("reward_model", {})[name] = scores
    output["win_rates"] = {judge: win_rates(scores) for judge, scores in judges.items()}
    if reports:
        output["errors"] = {n: r["errors"] for n, r in zip(names, reports, strict=True)}
    output["per_prompt"] = per_prompt
    if lm_eval_tasks:
        output["lm_eval"] = harness.run_tasks(output["models"], lm_eval_tasks, args.lm_eval_limit, args.batch_size)
    (args.output_dir / COMPARISON_FILE).write_text(json.dumps(output, indent=2, default=str))
    _print_table(results)
    for judge, rates in output["win_rates"].items():
        print(
            f"win rate by the {judge.replace('_', ' ')}: "
            + ", ".join(f"{k} {v['win_rate']:.3f}" for k, v in rates.items())
        )
    print(f"report: {write_report(args.output_dir)}")
    return output


def _print_table(results: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(results.values())))
    print("model".ljust(12) + "".join(k[:22].rjust(24) for k in keys))
    for name, metrics in results.items():
        print(name.ljust(12) + "".join(f"{metrics[k]:24.3f}" for k in keys))


@cli_entry
def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m pipelines.eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="the same held-out prompts answered by several models, side by side")
    cmp.add_argument("--models", nargs="+", required=True, help="model folders (or names under models/)")
    cmp.add_argument("--names", nargs="+", help="display names, one per model")
    cmp.add_argument(
        "--data", default=str(DEFAULT_DATA), help="held-out rows (question/answer, ...): any data source, argilla://"
    )
    cmp.add_argument("--columns", help="column mapping role=column, as in the stages' configs")
    cmp.add_argument("--system_prompt", default=None)
    cmp.add_argument(
        "--db", type=Path, help="SQLite database for execution accuracy (default: data/textsql/shop.sqlite)"
    )
    cmp.add_argument(
        "--verifier",
        choices=VERIFIERS,
        default="auto",
        help="judge answers by SQL execution or by the final number (auto: from the data's columns)",
    )
    cmp.add_argument("--reward_model", help="also report the mean score of this reward model")
    cmp.add_argument("--samples", type=int, default=64, help="how many held-out prompts")
    cmp.add_argument("--max_new_tokens", type=int, default=64)
    cmp.add_argument("--batch_size", type=int, default=32)
    add_precision_flag(cmp)
    cmp.add_argument("--output_dir", type=Path, required=True)
    cmp.add_argument(
        "--lm_eval_tasks", help="comma-separated lm-evaluation-harness tasks (arc_easy,hellaswag,...); needs lm-eval"
    )
    cmp.add_argument("--lm_eval_limit", type=int, help="at most this many examples per lm-eval task")
    rep = sub.add_parser("report", help="one offline HTML page: training curves, summaries, comparisons of a run")
    rep.add_argument("--run_dir", type=Path, required=True, help="a run folder (e.g. runs/demo-...) or any stage's")
    rep.add_argument("--output", type=Path, help="where to write the page (default: <run_dir>/report.html)")
    args = parser.parse_args(argv)
    if args.command == "report":
        if args.output:
            check_output_file(args.output)
        print(f"report: {write_report(args.run_dir, args.output)}")
        return
    check_ranges(args, prefix="--")
    compare(args)


if __name__ == "__main__":
    main()
