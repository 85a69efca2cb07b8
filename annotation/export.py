"""`python -m annotation export ws/dataset`: unified annotations as the data the stages train on.

    python -m annotation export demo/instructions                       # -> data/annotated/demo/instructions/v1
    python -m annotation export demo/prefs --pair_rule best_vs_rest --tie_rule first
    python -m annotation export demo/prefs --input pulled.jsonl         # from a saved `pull`, no server
    python -m annotation export demo/prefs --config configs/annotation/export.yaml

Which records are exported (key `export_rule`, default `corrected_or_original`):
- pretraining text: the text of every record not discarded (by the discard button or the keep/discard
  label), as `text`;
- instruction pairs: the record's own instruction/context/response, the response replaced by the
  accepted correction when annotators gave one, left out when they discarded it
  (`corrected_only`: only corrected records; `original`: corrections ignored), as SFT
  `prompt`/`completion` strings or chat `messages` (`format`); with `correction_pairs: true` instead
  one `prompt, chosen, rejected` pair per record an annotator rewrote: (corrected ≻ original), for the
  reward model;
- comparisons: only records with submitted rankings, as `prompt, chosen, rejected` pairs from
  `pipelines.data.preferences.ranking_to_pairs` (`pair_rule`: all_pairs | best_vs_rest; ties never
  pair); an annotator's better response is ranked above every candidate.
Records with fewer than `min_submitted` submitted answers (default 0: unreviewed records count) or a
unified rating below `min_rating` are left out; disagreements follow `tie_rule` (see annotation.unify).

Each export is a new version `<output_dir>/v<N>`: a saved HF dataset (`--dataset <dir>/v<N>` reads it),
`<name>.jsonl`, `<name>.csv`, `report.json` (rule, counts, agreement, per-annotator counts),
`disagreements.jsonl` and a dataset card `README.md` (source, the rules in words, counts, agreement);
`latest` points at it. It is written beside and renamed into place, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from annotation import schemas
from annotation.client import pull_dataset
from annotation.unify import (
    RANKING_RULES,
    RATING_RULES,
    TIE_RULES,
    PulledRecord,
    Unified,
    UnifyConfig,
    agreement,
    annotator_counts,
    outcome_counts,
    unify,
)
from pipelines.cli import CliParser, UserError, check_output_dir, cli_entry
from pipelines.data.formats import _user_prompt
from pipelines.data.preferences import PAIR_RULES, ranking_to_pairs
from pipelines.data.sources import read_jsonl
from pipelines.runner import add_config_flags, config_layers, merge_config, parse_flags

EXPORT_RULES = ("corrected_or_original", "corrected_only", "original")
SFT_FORMATS = ("prompt-completion", "messages")
DEFAULT_OUTPUT_ROOT = Path("data") / "annotated"
PROMPT_ROLES = {schemas.INSTRUCTION: schemas.INSTRUCTION, schemas.CONTEXT: schemas.CONTEXT}


@dataclasses.dataclass
class ExportConfig:
    """Every rule of an export; keys of the same name in a `--config` YAML file, flags win."""

    export_rule: str = dataclasses.field(
        default="corrected_or_original",
        metadata={"help": "instruction records: " + " | ".join(EXPORT_RULES), "choices": EXPORT_RULES},
    )
    format: str = dataclasses.field(
        default="prompt-completion",
        metadata={"help": "SFT shape of instruction records: prompt-completion | messages", "choices": SFT_FORMATS},
    )
    pair_rule: str = dataclasses.field(
        default="all_pairs",
        metadata={"help": "comparisons: all_pairs | best_vs_rest (ties never pair)", "choices": PAIR_RULES},
    )
    rating: str = dataclasses.field(
        default="mean", metadata={"help": "how ratings are unified: mean | median", "choices": RATING_RULES}
    )
    ranking: str = dataclasses.field(
        default="majority",
        metadata={"help": "how rankings are unified: majority | mean_rank", "choices": RANKING_RULES},
    )
    tie_rule: str = dataclasses.field(
        default="aside",
        metadata={"help": "annotators tied: aside (left out, listed) | first (earliest answer)", "choices": TIE_RULES},
    )
    min_submitted: int = dataclasses.field(
        default=0, metadata={"help": "leave out records with fewer submitted answers (0: unreviewed records count)"}
    )
    min_rating: float | None = dataclasses.field(
        default=None, metadata={"help": "leave out records whose unified rating is below this (or unrated)"}
    )
    correction_pairs: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "instruction records: one (corrected ≻ original) preference pair per record an annotator "
            "rewrote (prompt, chosen = the correction, rejected = the original response) instead of SFT rows"
        },
    )

    def __post_init__(self) -> None:
        if self.min_submitted < 0:
            raise UserError(f"min_submitted must be >= 0 (0: unreviewed records count), got {self.min_submitted}")

    def unify_config(self) -> UnifyConfig:
        return UnifyConfig(rating=self.rating, ranking=self.ranking, tie_rule=self.tie_rule)


@dataclasses.dataclass
class Export:
    """Rows for the stages plus what the report says about them."""

    rows: list[dict[str, Any]]
    left_out: Counter[str]
    unified: list[Unified]


def _candidate_texts(record: PulledRecord) -> list[str]:
    return [str(record.fields[name]) for name in record.candidates()]


def _left_out_reason(kind: str, item: Unified, config: ExportConfig) -> str | None:
    if item.outcome in ("discarded", "disagreement"):
        return item.outcome
    if kind == "comparison" and item.outcome == "unanswered":
        return "no submitted ranking"
    if item.submitted < config.min_submitted:
        return f"fewer than {config.min_submitted} submitted answers"
    if config.min_rating is not None and (item.rating is None or item.rating < config.min_rating):
        return f"rating below {config.min_rating:g} or unrated"
    corrections_only = config.export_rule == "corrected_only" or config.correction_pairs
    if kind == "instruction" and corrections_only and not _rewritten(item):
        return "no correction"
    return None


def _rewritten(item: Unified) -> bool:
    return bool(item.correction) and item.correction != item.record.fields.get(schemas.RESPONSE)


def build_export(kind: str, records: Sequence[PulledRecord], config: ExportConfig) -> Export:
    """Unify `records` and turn the usable ones into rows of the shape the stage for `kind` reads."""
    unified = unify(kind, records, config.unify_config())
    use_corrections = config.export_rule != "original"
    rows: list[dict[str, Any]] = []
    left_out: Counter[str] = Counter()
    for item in unified:
        reason = _left_out_reason(kind, item, config)
        if reason:
            left_out[reason] += 1
            continue
        record, fields = item.record, item.record.fields
        if kind == "text":
            rows.append({"id": record.id, "text": fields[schemas.CONTENT]})
        elif kind == "instruction" and config.correction_pairs:
            prompt = _user_prompt(fields, PROMPT_ROLES)
            rows.append(
                {"id": record.id, "prompt": prompt, "chosen": item.correction, "rejected": fields[schemas.RESPONSE]}
            )
        elif kind == "instruction":
            response = item.correction if use_corrections and item.correction else fields[schemas.RESPONSE]
            rows.append(_sft_row(record.id, fields, response, config.format))
        else:
            candidates, ranks = _candidate_texts(record), list(item.ranks or [])
            if use_corrections and item.correction:
                candidates, ranks = [item.correction, *candidates], [min(ranks) - 1, *ranks]
            pairs = ranking_to_pairs(candidates, ranks, config.pair_rule)  # type: ignore[arg-type]
            if not pairs:
                left_out["ranking all ties"] += 1
            rows += [
                {"id": record.id, "prompt": fields[schemas.PROMPT], "chosen": chosen, "rejected": rejected}
                for chosen, rejected, _ in pairs
            ]
    return Export(rows, left_out, unified)


def _sft_row(record_id: str, fields: dict[str, Any], response: str, shape: str) -> dict[str, Any]:
    """One instruction record in the SFT stage's own prompt layout (instruction, then "Context:")."""
    prompt = _user_prompt(fields, PROMPT_ROLES)
    if shape == "messages":
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return {"id": record_id, "messages": messages}
    return {"id": record_id, "prompt": prompt, "completion": response}


def report(
    source: str, kind: str, records: Sequence[PulledRecord], result: Export, config: ExportConfig
) -> dict[str, Any]:
    return {
        "source": source,
        "kind": kind,
        "config": dataclasses.asdict(config),
        "records": len(records),
        "outcomes": outcome_counts(result.unified),
        "rows": len(result.rows),
        "left_out": dict(result.left_out),
        "agreement": agreement(kind, records),
        "annotators": annotator_counts(records),
    }


# ---------------------------------------------------------------------------- writing


def dataset_card(name: str, summary: dict[str, Any]) -> str:
    """The version's README.md: where its rows come from and by which rules, in words, with the counts."""
    helps = {field.name: field.metadata["help"] for field in dataclasses.fields(ExportConfig)}
    rules = [f"- `{key}: {json.dumps(value)}`: {helps.get(key, '')}" for key, value in summary["config"].items()]
    left_out = [f"- {reason}: {count}" for reason, count in summary["left_out"].items()] or ["- none"]
    agreement = [
        f"| {question} | {fmt(figure['alpha'])} | {fmt(figure['pairwise_agreement'])} | {figure['units']} |"
        for question, figure in summary["agreement"].items()
    ]
    annotators = [
        f"| {user} | {counts['submitted']} | {counts['discarded']} | {counts['draft']} |"
        for user, counts in summary["annotators"].items()
    ]
    return "\n".join(
        [
            f"# {name} ({summary.get('version', '')})",
            "",
            f"Exported by `python -m annotation export` from {summary['source']} (a {summary['kind']} dataset): "
            f"{summary['rows']} rows from {summary['records']} records. Several annotators' answers are unified "
            "into one per record first (annotation/unify.py); outcomes: "
            + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items())
            + ".",
            "",
            "## Rules",
            "",
            *rules,
            "",
            "## Left out",
            "",
            *left_out,
            "",
            "## Agreement (Krippendorff's alpha per question)",
            "",
            "| question | alpha | pairwise agreement | records answered twice or more |",
            "|---|---|---|---|",
            *agreement,
            "",
            "## Annotators",
            "",
            "| user | submitted | discarded | draft |",
            "|---|---|---|---|",
            *annotators,
            "",
        ]
    )


def fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _csv_cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value


def _write_files(folder: Path, name: str, rows: list[dict[str, Any]], aside: Iterable[dict[str, Any]]) -> None:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(folder))
    with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with (folder / f"{name}.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: _csv_cell(value) for key, value in row.items()} for row in rows)
    with (folder / "disagreements.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in aside)


def _next_version(root: Path) -> int:
    numbers = [int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()]
    return max(numbers, default=0) + 1


def write_versioned(
    root: Path, name: str, rows: list[dict[str, Any]], summary: dict[str, Any], aside: Iterable[dict[str, Any]]
) -> Path:
    """Write a new version `root/v<N>` beside, rename it into place and point `root/latest` at it."""
    if not rows:
        why = ", ".join(f"{reason}: {count}" for reason, count in summary["left_out"].items()) or "no records"
        raise UserError(f"nothing to export, every record was left out ({why}); see the rules in --help")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    try:
        _write_files(staging, name, rows, aside)
        while True:
            target = root / f"v{_next_version(root)}"
            summary = {**summary, "version": target.name}
            (staging / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            (staging / "README.md").write_text(dataset_card(name, summary), encoding="utf-8")
            try:
                staging.rename(target)
                break
            except OSError:
                if not target.exists():
                    raise  # not a race with another export taking this number
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link = root / ".latest-tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    os.replace(link, root / "latest")
    return target


# ---------------------------------------------------------------------------- CLI


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of the keys below (or under `export:`); flags win")
    add_config_flags(parser, ExportConfig)


def export_config(args: argparse.Namespace) -> ExportConfig:
    """The rules of `--config` (its `export:` section, or the whole file) under the flags."""
    return merge_config(ExportConfig, config_layers(args, ExportConfig, section="export"))


def write_pulled(path: Path, address: str, kind: str, records: Sequence[PulledRecord]) -> None:
    """A `pull` output file: a header line (dataset, kind), then one record per line; renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"dataset": address, "kind": kind, "records": len(records)}) + "\n")
        out.writelines(json.dumps(record.to_json(), ensure_ascii=False) + "\n" for record in records)
    os.replace(partial, path)


def read_pulled(path: Path) -> tuple[str, list[PulledRecord]]:
    """A `pull` output file: the first line names the kind, then one record per line."""
    if not path.is_file():
        raise UserError(f"pulled file not found: {path}")
    header, *rows = read_jsonl(path)
    try:
        records = [PulledRecord.from_json(row) for row in rows]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a file written by `python -m annotation pull` ({err})") from None
    if header.get("kind") not in schemas.KINDS:
        raise UserError(f"{path} is not a file written by `python -m annotation pull` (no kind in its first line)")
    return header["kind"], records


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation export",
        description="Pull, unify and export annotations as the stages' training data.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("dataset", help="workspace/dataset on the Argilla server (or a name, with --input)")
    parser.add_argument("--input", help="a file written by `python -m annotation pull` instead of the server")
    parser.add_argument("--output_dir", help=f"versions go under this folder (default {DEFAULT_OUTPUT_ROOT}/<dataset>)")
    add_export_flags(parser)
    args = parse_flags(parser, argv)
    config = export_config(args)
    root = check_output_dir(Path(args.output_dir) if args.output_dir else DEFAULT_OUTPUT_ROOT / args.dataset)
    kind, records = read_pulled(Path(args.input)) if args.input else pull_dataset(args.dataset)
    result = build_export(kind, records, config)
    summary = report(args.input or f"argilla://{args.dataset}", kind, records, result, config)
    aside = (item.disagreement_row() for item in result.unified if item.outcome == "disagreement")
    target = write_versioned(root, Path(args.dataset).name, result.rows, summary, aside)
    print(json.dumps({"rows": len(result.rows), "left_out": dict(result.left_out), "output": str(target)}))
    return 0
