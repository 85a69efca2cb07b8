"""`python -m annotation pull ws/dataset`: every record with every annotator's answer, and how they agree.

    python -m annotation pull demo/prefs                    # -> data/annotated/demo/prefs/pulled.jsonl + report
    python -m annotation pull demo/prefs --output p.jsonl --tie_rule first

The file keeps each annotator's answer (username, status, values, time), so `export --input FILE`
can re-unify it offline under other rules. The printed report is what `export` would do with it:
outcomes, rows, Krippendorff's alpha per question and per-annotator counts. The records are read
by `annotation.client.pull_dataset`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from annotation.client import pull_dataset, split_address
from annotation.export import DEFAULT_OUTPUT_ROOT, add_export_flags, build_export, export_config, report, write_pulled
from pipelines.cli import CliParser, check_output_file, cli_entry
from pipelines.runner import parse_flags


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation pull",
        description=(__doc__ or "").splitlines()[0].split(": ", 1)[1],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("dataset", help="workspace/dataset")
    parser.add_argument("--output", help=f"JSONL file (default {DEFAULT_OUTPUT_ROOT}/<dataset>/pulled.jsonl)")
    add_export_flags(parser)
    args = parse_flags(parser, argv)
    config = export_config(args)
    split_address(args.dataset)  # a malformed name is the first thing to hear about
    output = Path(args.output) if args.output else DEFAULT_OUTPUT_ROOT / args.dataset / "pulled.jsonl"
    check_output_file(output, make_folder=True)
    kind, records = pull_dataset(args.dataset)
    write_pulled(output, args.dataset, kind, records)
    summary = report(f"argilla://{args.dataset}", kind, records, build_export(kind, records, config), config)
    print(json.dumps({**summary, "output": str(output)}, indent=2))
    return 0
