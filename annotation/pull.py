"""`python -m annotation pull ws/dataset`: every record with every annotator's answer, and how they agree.

    python -m annotation pull demo/prefs                    # -> data/annotated/demo/prefs/pulled.jsonl + report
    python -m annotation pull demo/prefs --output p.jsonl --tie_rule first

The file keeps each annotator's answer (username, status, values, time), so `export --input FILE`
can re-unify it offline under other rules. The printed report is what `export` would do with it:
outcomes, rows, Krippendorff's alpha per question and per-annotator counts.

Records are read in pages of 1,000 (the server's maximum), several pages at a time, straight from
the REST API: the SDK's record objects cost more than the transfer at this size.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from annotation import schemas
from annotation.client import connect, find_dataset, split_address
from annotation.unify import Answer, PulledRecord
from pipelines.cli import UserError, cli_entry

if TYPE_CHECKING:
    import argilla as rg

PAGE_SIZE = 1000
PARALLEL_PAGES = 4


def _usernames(client: rg.Argilla) -> dict[str, str]:
    """user id -> username; ids stay ids for a caller who may not list users (not an owner)."""
    response = client.api.http_client.get("/api/v1/users")
    if response.status_code != 200:
        return {}
    return {item["id"]: item["username"] for item in response.json()["items"]}


def _record(item: dict[str, Any], users: dict[str, str]) -> PulledRecord:
    answers = [
        Answer(
            user=users.get(response["user_id"], response["user_id"]),
            status=response["status"],
            values={name: value.get("value") for name, value in (response.get("values") or {}).items()},
            updated_at=response.get("updated_at") or response.get("inserted_at") or "",
        )
        for response in item.get("responses") or []
    ]
    return PulledRecord(
        id=str(item.get("external_id") or item["id"]),
        fields=item.get("fields") or {},
        metadata=item.get("metadata") or {},
        answers=answers,
    )


def fetch_records(client: rg.Argilla, dataset: rg.Dataset) -> list[PulledRecord]:
    """All records of `dataset` with their responses, in insertion order."""
    http = client.api.http_client
    url = f"/api/v1/datasets/{dataset.id}/records"

    def page(offset: int) -> dict[str, Any]:
        response = http.get(url, params={"offset": offset, "limit": PAGE_SIZE, "include": ["responses"]})
        if response.status_code == 403:
            raise UserError(f"this API key may not read the records of {dataset.name!r} (403): use an owner's key")
        response.raise_for_status()
        return response.json()

    first = page(0)
    total = int(first["total"])
    items = list(first["items"])
    with (
        tqdm(total=total, desc=f"Pulling {dataset.name}", unit="record", disable=total <= PAGE_SIZE) as bar,
        ThreadPoolExecutor(PARALLEL_PAGES) as pool,
    ):
        bar.update(len(items))
        for result in pool.map(page, range(PAGE_SIZE, total, PAGE_SIZE)):
            items += result["items"]
            bar.update(len(result["items"]))
    users = _usernames(client)
    return [_record(item, users) for item in items]


def dataset_kind(dataset: rg.Dataset) -> str:
    names = [field.name for field in dataset.settings.fields]
    kind = schemas.kind_of_fields(names)
    if kind is None:
        raise UserError(
            f"dataset {dataset.name!r} was not made by `python -m annotation create` (its fields: {', '.join(names)}); "
            f"expected the fields of one of {', '.join(schemas.KINDS)}"
        )
    return kind


def pull_dataset(address: str) -> tuple[str, list[PulledRecord]]:
    """(kind, records) of the dataset at `workspace/dataset`."""
    split_address(address)  # a malformed address is reported before connecting
    client = connect()
    dataset = find_dataset(client, address)
    kind = dataset_kind(dataset)
    return kind, fetch_records(client, dataset)


def write_pulled(path: Path, address: str, kind: str, records: list[PulledRecord]) -> None:
    """Header line (dataset, kind) then one record per line; written beside and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"dataset": address, "kind": kind, "records": len(records)}) + "\n")
        out.writelines(json.dumps(record.to_json(), ensure_ascii=False) + "\n" for record in records)
    os.replace(partial, path)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    from annotation.export import DEFAULT_OUTPUT_ROOT, add_config_flags, build_export, config_from_args, report

    parser = argparse.ArgumentParser(
        prog="python -m annotation pull",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="workspace/dataset")
    parser.add_argument("--output", help=f"JSONL file (default {DEFAULT_OUTPUT_ROOT}/<dataset>/pulled.jsonl)")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    kind, records = pull_dataset(args.dataset)
    output = Path(args.output) if args.output else DEFAULT_OUTPUT_ROOT / args.dataset / "pulled.jsonl"
    write_pulled(output, args.dataset, kind, records)
    summary = report(f"argilla://{args.dataset}", kind, records, build_export(kind, records, config), config)
    print(json.dumps({**summary, "output": str(output)}, indent=2))
    return 0
