"""Versioned output folders and the dataset card (README.md) that says how the data was made.

Each run writes a new `<output_dir>/v<N>`: built in a hidden folder beside it and renamed into place
once complete, so an earlier version is never overwritten and a failed run leaves nothing behind;
`latest` points at the newest version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.data.stats import label_table, token_table


def next_version(root: Path) -> int:
    numbers = [int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()]
    return max(numbers, default=0) + 1


@contextlib.contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A hidden folder under `root` to write into; removed if the block fails."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, root: Path, finish: Any) -> Path:
    """Rename `staging` to the next free `root/v<N>` (after `finish(version_name)` wrote the last files)."""
    while True:
        target = root / f"v{next_version(root)}"
        finish(target.name)
        try:
            staging.rename(target)
            break
        except OSError:
            if not target.exists():
                raise  # not another run taking the same number
    link = root / ".latest-tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    os.replace(link, root / "latest")
    return target


# ---------------------------------------------------------------------------- the card


def _counts(per_split: dict[str, int]) -> str:
    return ", ".join(f"{split} {count}" for split, count in per_split.items())


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in options.items() if v is not None) or "defaults"


def render_card(record: dict[str, Any]) -> str:
    """README.md of a curated version, from its `curation.json` record."""
    source = record["source"]
    lines = [
        "---",
        f"pretty_name: {json.dumps(record['name'])}",
        "tags: [curated]",
        "---",
        "",
        f"# {record['name']} ({record['version']})",
        "",
        f"Made on {record['created']} by `{record['command']}`.",
        "",
    ]
    if record["saved"]:
        lines += [
            f"Load it with `datasets.load_from_disk` or use this folder as `dataset:` in any stage config. "
            f"Rows: {_counts(record['rows'])}; columns: {', '.join(record['columns'])}.",
            "",
        ]
    else:
        lines += ["Statistics only: the rows were not changed, so no dataset was written.", ""]
    lines += ["## Source", "", f"- `{source['dataset']}`" + (f" (sql: `{source['sql']}`)" if source["sql"] else "")]
    lines += [f"- rows: {_counts(source['rows'])}", f"- fields curated: {', '.join(record['fields'])}", ""]
    lines += [
        "## Steps",
        "",
        "| # | step | options | rows before | rows after | removed |",
        "|---|---|---|---|---|---|",
    ]
    for step in record["steps"]:
        removed = "; ".join(f"{reason}: {n}" for reason, n in step["removed"].items()) or "-"
        if step.get("review"):
            removed += f" ([review]({step['review']}))"
        lines.append(
            f"| {step['index']} | {step['step']} | {_options(step['options'])} | {_counts(step['before'])} "
            f"| {_counts(step['after'])} | {removed} |"
        )
    lines.append("")
    for step in record["steps"]:
        lines += _step_section(step)
    return "\n".join(lines).rstrip() + "\n"


def _step_section(step: dict[str, Any]) -> list[str]:
    report = step.get("report") or {}
    title = f"### Step {step['index']}: {step['step']}"
    if step["step"] == "stats":
        lines = [
            title,
            "",
            "Token counts (target tokenizer, no special tokens):",
            "",
            token_table(report["tokens"]),
            "",
        ]
        lines += [f"![token counts]({step['plots'][0]})", ""]
        if report.get("labels"):
            lines += ["Labels and ratings:", "", label_table(report["labels"]), ""]
            lines += [f"![labels]({plot})" for plot in step["plots"][1:]] + [""]
        return lines
    if step["step"] == "select" and report:
        lines = [title, ""]
        for split, top in report.get("top_k", {}).items():
            lines.append(
                f"- {split}: kept {top['kept']} rows"
                + (f", cutoff {top['cutoff']:g}" if top["cutoff"] is not None else "")
            )
        if "tiers" in report:
            tiers = report["tiers"]
            lines.append(
                f"- tiers by {tiers['by']} in column `{tiers['column']}`: easy < {tiers['bounds'][0]:g} <= medium "
                f"< {tiers['bounds'][1]:g} <= hard"
            )
            lines += [f"  - {split}: {_counts(counts)}" for split, counts in tiers["counts"].items()]
        return [*lines, ""]
    return []
