"""`python -m annotation create ws/dataset --kind K`: an Argilla dataset of one of the three kinds.

    python -m annotation create demo/corpus --kind text
    python -m annotation create demo/instructions --kind instruction --min_submitted 3
    python -m annotation create demo/prefs --kind comparison --candidates 4

The workspace is created when missing. Running it again on an existing dataset of the same kind sets
its overlap (`--min_submitted`: how many annotators must submit a record before it leaves everyone's
queue, Argilla's `TaskDistribution`) and guidelines, and changes nothing else. Fields, questions and
guidelines of each kind are in annotation/schemas.py.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from annotation import schemas
from annotation.client import connect, dataset_exists, dataset_kind, find_dataset, split_address
from pipelines.cli import CliParser, UserError, cli_entry

if TYPE_CHECKING:
    import argilla as rg


def _workspace(client: rg.Argilla, name: str) -> rg.Workspace:
    import argilla as rg
    from argilla._exceptions import ForbiddenError

    found = client.workspaces(name)
    if found is not None:
        return found
    try:
        return rg.Workspace(name=name, client=client).create()
    except ForbiddenError:
        raise UserError(f"workspace {name!r} does not exist and this API key may not create it (owner only)") from None


def check_min_submitted(min_submitted: int) -> None:
    """A one-line `UserError` for an overlap no dataset can have (before any server)."""
    if min_submitted < 1:
        raise UserError(f"--min_submitted must be at least 1, not {min_submitted}")


def check_shape(kind: str, candidates: int = 2, min_submitted: int = 1) -> None:
    """A one-line `UserError` for an overlap or a comparison size no dataset can have (before any server)."""
    check_min_submitted(min_submitted)
    if kind == "comparison" and not 2 <= candidates <= schemas.MAX_CANDIDATES:
        raise UserError(
            f"a comparison shows 2 to {schemas.MAX_CANDIDATES} responses, not {candidates}: set --candidates"
        )


def create_dataset(
    client: rg.Argilla, address: str, kind: str, candidates: int = 2, min_submitted: int = 1
) -> rg.Dataset:
    """A new dataset of `kind` at `workspace/dataset` (workspace created if missing)."""
    import argilla as rg

    check_shape(kind, candidates, min_submitted)
    workspace_name, name = split_address(address)
    workspace = _workspace(client, workspace_name)
    settings = schemas.settings_for(kind, candidates, min_submitted)
    return rg.Dataset(name=name, workspace=workspace, settings=settings, client=client).create()


def update_dataset(dataset: rg.Dataset, kind: str, min_submitted: int) -> rg.Dataset:
    """Set the overlap and guidelines of an existing dataset (what can change once records exist)."""
    import argilla as rg

    dataset.settings.distribution = rg.TaskDistribution(min_submitted=min_submitted)
    dataset.settings.guidelines = schemas.GUIDELINES[kind]
    return dataset.update()


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation create",
        description="Create (or re-configure) an annotation dataset of one of the three kinds.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="workspace/dataset")
    parser.add_argument("--kind", required=True, choices=schemas.KINDS, help="text | instruction | comparison")
    parser.add_argument("--candidates", type=int, default=2, help="comparison: responses shown per record")
    parser.add_argument("--min_submitted", type=int, default=1, help="annotators who must submit each record")
    args = parser.parse_args(argv)
    split_address(args.dataset)
    check_shape(args.kind, args.candidates, args.min_submitted)
    client = connect()
    if dataset_exists(client, args.dataset):
        dataset = find_dataset(client, args.dataset)
        kind = dataset_kind(dataset)
        if kind != args.kind:
            raise UserError(f"{args.dataset} already exists, of kind {kind}, not {args.kind}")
        update_dataset(dataset, kind, args.min_submitted)
        action = "updated"
    else:
        dataset = create_dataset(client, args.dataset, args.kind, args.candidates, args.min_submitted)
        action = "created"
    print(json.dumps({"dataset": args.dataset, "kind": args.kind, action: True, "min_submitted": args.min_submitted}))
    return 0
