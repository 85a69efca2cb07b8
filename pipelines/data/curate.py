"""Data curation: `python -m pipelines.data <step> ...`, or several steps in order from a config.

    # token counts per split and field (table + PNG), label/rating distributions
    python -m pipelines.data stats --dataset data/textsql/train.jsonl --tokenizer smollm2-135m-instruct
    # drop empty rows, rows over 256 tokens and exact duplicates (case/punctuation/whitespace-insensitive)
    python -m pipelines.data filter --dataset data/textsql/train.jsonl --max_tokens 256
    # near-duplicates by sentence embeddings (offline MiniLM) at cosine >= 0.95; review what was removed
    python -m pipelines.data dedup --dataset data/textsql/train.jsonl --fields question
    # the 500 best-rated rows, and easy/medium/hard tiers by length
    python -m pipelines.data select --dataset rated.jsonl --top_k 500 --by rating --tiers_by tokens
    # every step of a config, in order (one step of it: `python -m pipelines.data dedup --config ...`)
    python -m pipelines.data run --config configs/data/curate.yaml

Every run writes a new version `<output_dir>/v<N>` (never over an earlier one; `latest` points at it):
the curated HF dataset (`dataset: <output_dir>/latest` in any stage config), a dataset card README.md
(source, steps, rows before/after each step, tables, plots), `curation.json` (the same as data),
`plots/*.png` and `removed/<step>.jsonl`: each removed row, why, and for duplicates the row kept
instead (with the similarity), for a human to review.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset, DatasetDict

from pipelines.cli import CliParser, UserError, check_output_dir, claim_output_dir, cli_entry, mask_passwords
from pipelines.data import card, dedup, fields, filters, select, stats
from pipelines.data.sources import load_source
from pipelines.runner import (
    add_config_flags,
    config_fields,
    flag_values,
    merge_config,
    parse_flags,
    read_yaml,
)

Splits = dict[str, Dataset]


@dataclasses.dataclass
class CurationConfig:
    """What every step shares: the source, the fields, the tokenizer and where versions go."""

    dataset: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Data to curate: a file, a saved HF dataset folder, a database (with `sql`), a hub id."},
    )
    sql: str | None = dataclasses.field(
        default=None, metadata={"help": "When `dataset` is a database: the table or view to read, or a SELECT query."}
    )
    fields: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "Text columns to measure, compare and hash (default: the known text columns it has)."},
    )
    tokenizer: str = dataclasses.field(
        default="smollm2-135m-instruct",
        metadata={"help": "Target model's tokenizer for token counts: a folder or a name under models/."},
    )
    output_dir: str = dataclasses.field(
        default="data/curated", metadata={"help": "Versions go under this folder: <output_dir>/v1, v2, ..."}
    )
    name: str | None = dataclasses.field(
        default=None, metadata={"help": "Name on the dataset card (default: from `dataset`)."}
    )
    num_proc: int = dataclasses.field(
        default_factory=lambda: os.cpu_count() or 1,
        metadata={"help": "Processes that count tokens (large data only; default: all cores)."},
    )


@dataclasses.dataclass
class Context:
    """What a step runs with: the shared config, the folder being written, and the tokenizer (loaded once)."""

    config: CurationConfig
    work: Path
    tokenizer_cache: Any = None

    def tokenizer(self) -> Any:
        if self.tokenizer_cache is None:
            self.tokenizer_cache = fields.load_fast_tokenizer(self.config.tokenizer)
        return self.tokenizer_cache


@dataclasses.dataclass
class Outcome:
    splits: Splits
    removed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    plots: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------- steps


@dataclasses.dataclass
class Step:
    """A curation step: its options are its fields (YAML keys and flags of the same name)."""

    name: ClassVar[str]
    changes_rows: ClassVar[bool] = True
    fields: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "This step's text columns, instead of the shared `fields`."}
    )

    def columns(self) -> list[str]:
        """Data columns the options name, checked before any work starts."""
        return list(self.fields or [])

    def needs_tokens(self) -> bool:
        return False

    def prepare(self, context: Context) -> None:
        """Load what the step needs (models), so a wrong path fails before earlier steps run."""

    def run(self, context: Context, splits: Splits, index: int) -> Outcome:
        raise NotImplementedError

    def field_names(self, context: Context, splits: Splits) -> list[str]:
        return fields.text_fields(next(iter(splits.values())), self.fields or context.config.fields)

    def counted(self, context: Context, splits: Splits, names: list[str]) -> Splits:
        procs = context.config.num_proc
        return {s: fields.add_token_counts(rows, context.tokenizer(), names, procs) for s, rows in splits.items()}


@dataclasses.dataclass
class StatsStep(Step):
    """Token counts per split and field (table, PNG), label/rating distributions."""

    name: ClassVar[str] = "stats"
    changes_rows: ClassVar[bool] = False
    label_columns: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "Label/rating columns to count (default: numeric columns and strings with few values)."},
    )
    max_length: int | None = dataclasses.field(
        default=None, metadata={"help": "Also count rows over this many tokens (your training max_length)."}
    )

    def columns(self) -> list[str]:
        return [*super().columns(), *(self.label_columns or [])]

    def needs_tokens(self) -> bool:
        return True

    def run(self, context: Context, splits: Splits, index: int) -> Outcome:
        names = self.field_names(context, splits)
        splits = self.counted(context, splits, names)
        first = next(iter(splits.values()))
        labels = stats.label_columns(first, names, self.label_columns)
        report = {
            "tokenizer": context.config.tokenizer,
            "tokens": stats.token_stats(splits, names, self.max_length),
            "labels": stats.label_stats(splits, labels),
        }
        plots = [stats.plot_tokens(splits, names, context.work / "plots" / f"{index}-tokens.png", self.max_length)]
        label_plot = stats.plot_labels(report["labels"], context.work / "plots" / f"{index}-labels.png")
        plots += [label_plot] if label_plot else []
        (context.work / "stats").mkdir(exist_ok=True)
        (context.work / "stats" / f"{index}-stats.json").write_text(json.dumps(report, indent=2) + "\n")
        markdown = stats.token_table(report["tokens"]) + "\n\n" + stats.label_table(report["labels"]) + "\n"
        (context.work / "stats" / f"{index}-stats.md").write_text(markdown)
        print(markdown)
        return Outcome(splits, report=report, plots=[str(p.relative_to(context.work)) for p in plots])


@dataclasses.dataclass
class FilterStep(Step):
    """Drop empty rows, rows outside token bounds, exact duplicates (normalised hash)."""

    name: ClassVar[str] = "filter"
    drop_empty: bool = dataclasses.field(default=True, metadata={"help": "Drop rows with an empty/blank field."})
    min_tokens: int | None = dataclasses.field(default=None, metadata={"help": "Drop rows under this many tokens."})
    max_tokens: int | None = dataclasses.field(
        default=None, metadata={"help": "Drop rows over this many tokens (all fields together; e.g. max_length)."}
    )
    exact_dedup: bool = dataclasses.field(
        default=True,
        metadata={"help": "Drop rows equal to an earlier one after Unicode, case, punctuation, space normalisation."},
    )

    def __post_init__(self) -> None:
        if self.min_tokens is not None and self.min_tokens < 0:
            raise UserError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise UserError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise UserError(
                f"min_tokens {self.min_tokens} is above max_tokens {self.max_tokens}: every row would be dropped; "
                "lower min_tokens or raise max_tokens"
            )

    def needs_tokens(self) -> bool:
        return self.min_tokens is not None or self.max_tokens is not None

    def run(self, context: Context, splits: Splits, index: int) -> Outcome:
        names = self.field_names(context, splits)
        removed: list[dict[str, Any]] = []
        if self.drop_empty:
            splits, gone = filters.drop_empty(splits, names, self.name)
            removed += gone
        if self.needs_tokens():
            splits = self.counted(context, splits, names)
            splits, gone = filters.token_bounds(splits, names, self.min_tokens, self.max_tokens, self.name)
            removed += gone
        if self.exact_dedup:
            splits, gone = filters.exact_dedup(splits, names, self.name)
            removed += gone
        return Outcome(splits, removed)


@dataclasses.dataclass
class DedupStep(Step):
    """Drop near-duplicates: sentence embeddings + faiss cosine >= threshold, one kept per cluster."""

    name: ClassVar[str] = "dedup"
    threshold: float = dataclasses.field(
        default=0.95, metadata={"help": "Cosine similarity from which two rows are near-duplicates, in [0, 1]."}
    )
    model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "sentence-transformers folder (default: the offline all-MiniLM-L6-v2 package)."},
    )
    batch_size: int = dataclasses.field(
        default=64,
        metadata={"help": "Texts per embedding forward pass (on 2 CPU cores 32-64 ran ~10 % faster than 128)."},
    )
    max_seq_length: int = dataclasses.field(
        default=128,
        metadata={"help": "Tokens embedded per text (longer texts are compared on their start); cost grows with it."},
    )
    precision: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Embedding precision: auto (bf16 where the CPU has native bf16, 2.5x faster; else fp32), "
            "fp32 or bf16."
        },
    )
    encoder: Any = dataclasses.field(default=None, repr=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        if self.precision not in dedup.PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(dedup.PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"threshold must be a cosine similarity in [0, 1], got {self.threshold}")
        if self.batch_size < 1 or self.max_seq_length < 1:
            raise UserError("batch_size and max_seq_length must be positive")

    def prepare(self, context: Context) -> None:
        self.encoder = dedup.load_encoder(self.model, self.max_seq_length)

    def run(self, context: Context, splits: Splits, index: int) -> Outcome:
        names = self.field_names(context, splits)
        kept, removed, report = dedup.near_dedup(
            splits, names, self.encoder, self.threshold, self.batch_size, self.name, self.precision
        )
        return Outcome(kept, removed, report)


@dataclasses.dataclass
class SelectStep(Step):
    """Top-k rows by tokens or a rating/reward column; easy/medium/hard tiers."""

    name: ClassVar[str] = "select"
    top_k: int | None = dataclasses.field(
        default=None, metadata={"help": "Keep the k best training rows by `by` (held-out splits are kept whole)."}
    )
    by: str = dataclasses.field(default="tokens", metadata={"help": "tokens, or a numeric (rating/reward) column."})
    ascending: bool = dataclasses.field(default=False, metadata={"help": "Keep the k lowest instead of highest."})
    tiers_by: str | None = dataclasses.field(
        default=None, metadata={"help": "Add easy/medium/hard tiers by tokens or by a numeric column."}
    )
    tier_bounds: list[float] | None = dataclasses.field(
        default=None,
        metadata={"help": "Two bounds: easy < first <= medium < second <= hard (default: the tertiles)."},
    )
    tier_column: str = dataclasses.field(default="tier", metadata={"help": "Column the tiers are written to."})

    def __post_init__(self) -> None:
        if self.top_k is None and self.tiers_by is None:
            raise UserError("select needs top_k (with `by`) or tiers_by, or both")
        bounds = self.tier_bounds
        if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
            raise UserError(f"tier_bounds must be two increasing numbers [easy_below, hard_from], got {list(bounds)}")

    def columns(self) -> list[str]:
        named = [self.by] if self.top_k is not None else []
        named += [self.tiers_by] if self.tiers_by else []
        return [*super().columns(), *(c for c in named if c != select.BY_TOKENS)]

    def needs_tokens(self) -> bool:
        return select.BY_TOKENS in ((self.by if self.top_k is not None else None), self.tiers_by)

    def run(self, context: Context, splits: Splits, index: int) -> Outcome:
        if self.needs_tokens():
            splits = self.counted(context, splits, self.field_names(context, splits))
        report: dict[str, Any] = {}
        if self.top_k is not None:
            splits, report["top_k"] = select.top_k(splits, self.top_k, self.by, self.ascending)
        if self.tiers_by:
            bounds = select.tier_bounds(splits, self.tiers_by, self.tier_bounds)
            splits, counts = select.add_tiers(splits, self.tiers_by, bounds, self.tier_column)
            report["tiers"] = {
                "by": self.tiers_by,
                "bounds": list(bounds),
                "column": self.tier_column,
                "counts": counts,
            }
        return Outcome(splits, report=report)


STEPS: dict[str, type[Step]] = {cls.name: cls for cls in (StatsStep, FilterStep, DedupStep, SelectStep)}


# ---------------------------------------------------------------------------- steps from a config


def parse_steps(items: Any, where: str) -> list[Step]:
    """`steps:` in a config: a list of names or one-key mappings `{name: {options}}`, run in order."""
    if not isinstance(items, list) or not items:
        raise UserError(f"`steps` must be a non-empty list of steps ({', '.join(STEPS)}) {where}")
    steps = []
    for item in items:
        name, options = (item, {}) if isinstance(item, str) else next(iter(item.items()), (None, None))
        if isinstance(item, dict) and len(item) != 1:
            raise UserError(f"each step is a name or one `name: {{options}}` mapping, got {item!r} {where}")
        if name not in STEPS:
            close = difflib.get_close_matches(str(name), list(STEPS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown step {name!r} {where}{hint}; steps: {', '.join(STEPS)}")
        steps.append(merge_config(STEPS[name], [(options or {}, f"for step {name} {where}")]))
    return steps


# ---------------------------------------------------------------------------- the run


def load_splits(config: CurationConfig) -> Splits:
    """The source's splits (a single dataset is `train`), each row numbered as in the source."""
    if not config.dataset:
        raise UserError("no data: set `dataset` in the config or pass --dataset PATH")
    loaded = load_source(config.dataset, config.sql)
    splits = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    if not any(len(rows) for rows in splits.values()):
        raise UserError(f"no rows in {mask_passwords(config.dataset)}")
    return {split: rows.add_column(fields.ROW, list(range(len(rows)))) for split, rows in splits.items()}


def _counts(splits: Splits) -> dict[str, int]:
    return {split: len(rows) for split, rows in splits.items()}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def curate(config: CurationConfig, steps: list[Step], command: str) -> Path:
    """Run `steps` in order on the source and publish a new version; returns its folder."""
    context = Context(config, Path())
    root = check_output_dir(config.output_dir)
    if any(step.needs_tokens() for step in steps):  # paths a user can get wrong fail before any work
        context.tokenizer()
    for step in steps:
        step.prepare(context)
    splits = load_splits(config)
    first = next(iter(splits.values()))
    for step in steps:
        fields.check_columns(first, step.columns(), f"step {step.name}")
        fields.text_fields(first, step.fields or config.fields)
    claim_output_dir(root)
    with card.staging_dir(root) as work:
        context.work = work
        source_rows = _counts(splits)
        records = []
        for index, step in enumerate(steps, start=1):
            start = time.perf_counter()
            before = _counts(splits)
            outcome = step.run(context, splits, index)
            splits = outcome.splits
            record = {
                "index": index,
                "step": step.name,
                "options": {k: getattr(step, k) for k in config_fields(type(step))},
                "before": before,
                "after": _counts(splits),
                "removed": dict(Counter(r["reason"] for r in outcome.removed)),
                "report": outcome.report,
                "plots": outcome.plots,
                "seconds": round(time.perf_counter() - start, 2),
            }
            if outcome.removed:
                record["review"] = f"removed/{index}-{step.name}.jsonl"
                _write_jsonl(work / record["review"], outcome.removed)
            records.append(record)
            removed = sum(record["removed"].values())
            print(
                f"step {index}/{len(steps)} {step.name}: {_counts(splits)} ({removed} removed, {record['seconds']} s)"
            )
        saved = any(step.changes_rows for step in steps)
        output = {
            s: rows.remove_columns([c for c in rows.column_names if c.startswith(fields.INTERNAL)])
            for s, rows in splits.items()
        }
        if saved:
            data = output["train"] if list(output) == ["train"] else DatasetDict(output)
            data.save_to_disk(str(work))
        record = {
            "name": config.name or _default_name(config.dataset or ""),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command,
            "source": {"dataset": mask_passwords(config.dataset or ""), "sql": config.sql, "rows": source_rows},
            "fields": fields.text_fields(first, config.fields),
            "tokenizer": config.tokenizer,
            "steps": records,
            "saved": saved,
            "rows": _counts(output),
            "columns": fields.user_columns(next(iter(output.values()))),
        }

        def finish(version: str) -> None:
            record["version"] = version
            (work / "curation.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
            (work / "README.md").write_text(card.render_card(record), encoding="utf-8")

        return card.publish(work, root, finish)


def _default_name(spec: str) -> str:
    tail = mask_passwords(spec).rstrip("/").rsplit("/", 1)[-1]
    return Path(tail).stem or "dataset"


# ---------------------------------------------------------------------------- CLI


def usage() -> str:
    lines = ["usage: python -m pipelines.data <step> [--config FILE] [--key value ...]", "", "steps:"]
    for name, cls in STEPS.items():
        summary = (cls.__doc__ or "").strip().rstrip(".")
        lines.append(f"  {name:<8} {summary[:1].lower()}{summary[1:]}")
    lines += ["  run      every step of --config's `steps:` list, in order", "", "`<step> --help` lists the keys."]
    return "\n".join(lines)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command != "run" and command not in STEPS:
        raise UserError(f"unknown step {command!r}; choose one of {', '.join(STEPS)}, run")
    parser = CliParser(
        prog=f"python -m pipelines.data {command}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML file: shared keys, and a `steps:` list (or this step's keys)")
    add_config_flags(parser, CurationConfig)
    if command != "run":
        add_config_flags(parser, STEPS[command], skip=list(config_fields(CurationConfig)))
    args = parse_flags(parser, rest)
    values = read_yaml(args.config) if args.config else {}
    if command == "run" and "steps" not in values:
        raise UserError("run needs --config FILE with a `steps:` list")
    where = f"in {args.config}" if args.config else "on the command line"
    flags = "on the command line"
    step_items = values.pop("steps", None)
    shared = {k: v for k, v in values.items() if k in config_fields(CurationConfig)}
    config = merge_config(CurationConfig, [(shared, where), (flag_values(args, CurationConfig), flags)])
    if command == "run":
        steps = parse_steps(step_items, where)
    else:
        own = {k: v for k, v in values.items() if k not in shared}
        if step_items is not None:  # one step of a pipeline config: its options from there
            own = next((opts or {} for item in step_items for name, opts in _named(item) if name == command), {})
        layers = [(own, f"for step {command} {where}"), (flag_values(args, STEPS[command]), flags)]
        steps = [merge_config(STEPS[command], layers)]
    target = curate(config, steps, shlex.join(["python", "-m", "pipelines.data", *argv]))
    print(f"wrote {target}")
    return 0


def _named(item: Any) -> list[tuple[Any, Any]]:
    return [(item, {})] if isinstance(item, str) else list(item.items()) if isinstance(item, dict) else []
