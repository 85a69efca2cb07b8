"""`python -m annotation push ws/dataset --data FILE`: put records in front of annotators.

    python -m annotation push demo/instructions --data data/textsql/train.jsonl --kind instruction
    python -m annotation push demo/prefs --data pairs.jsonl --kind comparison --min_submitted 3
    python -m annotation push demo/corpus --data corpus.txt --kind text --columns text=body

`--data` takes everything the SFT stage reads (`pipelines.data.sources.load_source`: JSON/JSONL/CSV/
Parquet/text files, saved HF datasets, `scheme://` sources) and columns are mapped the same way
(`pipelines.data.formats`: `--columns role=column`, or detected by name):
- text: `text` (or `content`); `source`/`domain` and other scalar columns become metadata;
- instruction: `instruction`/`prompt`/`question`/`input` + `response`/`completion`/`answer`/`output`,
  optional `context`;
- comparison: a prompt column plus `chosen` + `rejected` (shown in an order fixed by the record id, so
  position says nothing), a `responses` list, or `response_1..response_N`; optional model scores
  (`scores` list, `score_1..score_N`, or `chosen_score`/`rejected_score`) become metadata.

Judgements the data already carries stay judgements: chosen over rejected, a `ranks` list (1 = best,
aligned with `responses`) or else the scores (highest first) become the ranking; `rating`,
`corrected_response`/`correction` (instruction), `decision` (keep|discard) or a boolean `keep`, `quality`
(text), `corrected_best`/`better_response` (comparison) answer their question. Each is stored as a
suggestion whose agent names its source (`import: <--data>`, or `--agent`), so annotators see it
pre-filled; with `--as-responses USER` also as USER's submitted answer (the user is created as an
annotator of the workspace if missing), which `pull`/`export` unify like any annotator's. A record
whose data lacks the kind's required question (ranking, rating, decision) gets the suggestion only.

Every record carries an id: `--id_column` (default `id` when the data has one), else a hash of its
content. Re-pushing the same ids updates those records instead of adding copies. The whole input is
checked before anything is sent (columns, empty values, duplicate ids, size); then records go in
batches of 500 (the server's maximum) with two requests in flight.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from annotation import schemas
from annotation.client import connect, dataset_exists, dataset_kind, find_dataset, record_total, split_address
from annotation.create import check_min_submitted, create_dataset
from annotation.users import add_users, default_credentials
from pipelines.cli import CliParser, UserError, cli_entry
from pipelines.data.formats import PROMPT_COLUMNS, detect_mapping, parse_columns
from pipelines.data.sources import load_source

if TYPE_CHECKING:
    import argilla as rg
    from datasets import Dataset

BATCH_SIZE = 500  # the server's RECORDS_BULK_UPSERT_MAX_ITEMS
IN_FLIGHT = 2
PLAIN = {"Accept-Encoding": "identity"}
DEFAULT_MAX_CHARS = 100_000
COMPARISON_ROLES = (
    "prompt",
    "chosen",
    "rejected",
    "responses",
    "ranks",
    "scores",
    "chosen_score",
    "rejected_score",
    schemas.BEST_CORRECTION,
)
SCALAR = (str, int, float, bool)
IMPORTER_NAME = "Imported judgements"  # what the UI shows for an --as-responses user


def load_rows(spec: str) -> Dataset:
    """The rows of `spec` (every split of a saved DatasetDict, in order)."""
    from datasets import DatasetDict, concatenate_datasets

    loaded = load_source(spec)
    rows = concatenate_datasets(list(loaded.values())) if isinstance(loaded, DatasetDict) else loaded
    if len(rows) == 0:
        raise UserError(f"no rows in {spec}")
    return rows


def _mismatch(kind: str, columns: Sequence[str], detail: str = "") -> UserError:
    expected = schemas.EXPECTED_COLUMNS[kind].describe()
    detail = f"{detail}; " if detail else ""
    return UserError(
        f"the data's columns do not fit the {kind} kind: {detail}found {', '.join(columns)}; expected {expected} "
        "(or map them with --columns role=column)"
    )


def _comparison_mapping(columns: Sequence[str], spec: str | None) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for item in filter(None, (spec or "").split(",")):
        role, sep, column = (part.strip() for part in item.partition("="))
        if not sep or role not in COMPARISON_ROLES:
            raise UserError(f"bad column mapping item {item!r}: write role=column with a role in {COMPARISON_ROLES}")
        mapping[role] = column
    missing = [column for column in mapping.values() if column not in columns]
    if missing:
        raise _mismatch("comparison", columns, f"mapped column(s) {', '.join(missing)} missing")
    mapping.setdefault("prompt", next((c for c in PROMPT_COLUMNS if c in columns), None))
    numbered = [f"response_{i}" for i in range(1, schemas.MAX_CANDIDATES + 1) if f"response_{i}" in columns]
    if not {"responses", "chosen", "rejected"} & mapping.keys():
        if "responses" in columns:
            mapping["responses"] = "responses"
        elif {"chosen", "rejected"} <= set(columns):
            mapping.update(chosen="chosen", rejected="rejected")
        elif len(numbered) >= 2:
            mapping["numbered"] = numbered
    for role in ("ranks", "scores", "chosen_score", "rejected_score"):
        if role not in mapping and role in columns:
            mapping[role] = role
    if "numbered" in mapping and "scores" not in mapping:
        scores = [f"score_{i}" for i in range(1, len(numbered) + 1)]
        mapping["numbered_scores"] = scores if all(s in columns for s in scores) else None
    has_candidates = "responses" in mapping or "numbered" in mapping or {"chosen", "rejected"} <= mapping.keys()
    if not mapping["prompt"] or not has_candidates:
        raise _mismatch("comparison", columns)
    return mapping


def column_mapping(kind: str, columns: Sequence[str], spec: str | None) -> dict[str, Any]:
    """Which data column feeds which part of a record of `kind` (a `UserError` listing found vs expected);
    `labels` maps each question the data answers to its column."""
    mapping = _record_mapping(kind, columns, spec)
    labels = {question: column for column, question in schemas.LABEL_COLUMNS[kind].items() if column in columns}
    if schemas.BEST_CORRECTION in mapping:
        labels[schemas.BEST_CORRECTION] = mapping.pop(schemas.BEST_CORRECTION)
    return {**mapping, "labels": labels}


def _record_mapping(kind: str, columns: Sequence[str], spec: str | None) -> dict[str, Any]:
    if kind == "comparison":
        return _comparison_mapping(columns, spec)
    if kind == "text" and not spec and "content" in columns and "text" not in columns:
        return {"text": "content"}
    try:
        mapping = detect_mapping(list(columns), spec) if spec or kind == "instruction" else {}
    except UserError as err:
        raise _mismatch(kind, columns, str(err).split(":")[0]) from None
    if kind == "text":
        mapping = mapping or parse_columns("text=text" if "text" in columns else None)
        if set(mapping) - {"system"} != {"text"}:
            raise _mismatch(kind, columns)
        return {"text": mapping["text"]}
    if "messages" in mapping or "text" in mapping:
        raise _mismatch(kind, columns, "chat or plain-text rows have no single instruction and response")
    return {
        "instruction": mapping.get("instruction", mapping.get("prompt")),
        "response": mapping.get("response", mapping.get("completion")),
        "context": mapping.get("context"),
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False)
        if isinstance(value, list | dict)
        else str(value)
    )
    return text if text.strip() else None


def _content_id(values: Mapping[str, Any]) -> str:
    """An id for rows without one: the same content always gets the same id, so re-pushing updates."""
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:20]


def ranks_by_score(scores: Sequence[float]) -> list[int]:
    """Rank 1 for the highest score; equal scores share a rank."""
    levels = sorted(set(scores), reverse=True)
    return [levels.index(score) + 1 for score in scores]


def best_probabilities(scores: Sequence[float]) -> list[float]:
    """A ranking suggestion's scores (Argilla takes 0..1): each candidate's probability of being the best
    under the Bradley-Terry model of reward scores (softmax); the raw scores go to the metadata."""
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    return [weight / sum(weights) for weight in weights]


def _label(question: str, value: Any) -> Any:
    """A label column's value as Argilla's answer to `question` (None: no answer in this row)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if question == schemas.DECISION:
        word = str(value).strip().lower()
        word = {"true": "keep", "false": "discard"}.get(word, word)  # a boolean `keep` column
        if word not in schemas.DECISION_LABELS:
            raise ValueError(f"has {question} {value!r} (keep or discard)")
        return word
    if question in (schemas.RATING, schemas.QUALITY):
        if _whole_number(value) not in schemas.RATING_VALUES:
            raise ValueError(f"has {question} {value!r} (an integer from 1 to 5)")
        return _whole_number(value)
    return _text(value)


def _whole_number(value: Any) -> int | None:
    """`value` as an int if it is one (3, 3.0, "3"), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and not isinstance(value, bool) else None


def _ranking(names: Sequence[str], ranks: Sequence[Any]) -> list[dict[str, Any]]:
    whole = [_whole_number(rank) for rank in ranks]
    if len(ranks) != len(names) or any(rank not in range(1, len(names) + 1) for rank in whole):
        raise ValueError(f"has ranks {list(ranks)!r} for {len(names)} responses (integers from 1 to {len(names)})")
    return [{"value": name, "rank": rank} for name, rank in zip(names, whole, strict=True)]


def _comparison_record(row: Mapping[str, Any], mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Fields, metadata and the judgement (question -> value, plus the ranking's scores) of one row."""
    metadata: dict[str, Any] = {}
    ranks = None
    if "responses" in mapping:
        candidates = list(row[mapping["responses"]] or [])
        scores = list(row[mapping["scores"]]) if "scores" in mapping and row[mapping["scores"]] is not None else None
        ranks = row[mapping["ranks"]] if "ranks" in mapping else None
    elif "numbered" in mapping:
        candidates = [row[c] for c in mapping["numbered"] if _text(row[c])]
        score_columns = mapping.get("numbered_scores") or mapping.get("scores")
        scores = [row[c] for c in score_columns][: len(candidates)] if isinstance(score_columns, list) else None
    else:
        pair = [row[mapping["chosen"]], row[mapping["rejected"]]]
        pair_scores = [row.get(mapping.get("chosen_score", "")), row.get(mapping.get("rejected_score", ""))]
        flip = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2 == 1
        order = [1, 0] if flip else [0, 1]
        candidates = [pair[i] for i in order]
        scores = [pair_scores[i] for i in order] if None not in pair_scores else None
        ranks = [1 + i for i in order]  # chosen (index 0) ranks first
    if not 2 <= len(candidates) <= schemas.MAX_CANDIDATES:
        raise ValueError(f"has {len(candidates)} candidate responses (2 to {schemas.MAX_CANDIDATES} allowed)")
    names = schemas.candidate_names(len(candidates))
    fields = {"prompt": _text(row[mapping["prompt"]]), **{n: _text(c) for n, c in zip(names, candidates, strict=True)}}
    judgement: dict[str, Any] = {}
    if scores is not None:
        if len(scores) != len(candidates) or any(s is None for s in scores):
            raise ValueError(f"has {len(scores)} scores for {len(candidates)} responses")
        scores = [float(s) for s in scores]
        metadata.update({f"score_{i}": s for i, s in enumerate(scores, start=1)})
        judgement[schemas.RANKING] = _ranking(names, ranks_by_score(scores))
    if ranks is not None:
        judgement[schemas.RANKING] = _ranking(names, list(ranks))
    return {"fields": fields, "metadata": metadata, "judgement": judgement, "scores": scores}


def _record(kind: str, row: Mapping[str, Any], mapping: Mapping[str, Any], key: str) -> dict[str, Any]:
    if kind == "comparison":
        record = _comparison_record(row, mapping, key)
    elif kind == "text":
        record = {"fields": {schemas.CONTENT: _text(row[mapping["text"]])}, "metadata": {}, "judgement": {}}
    else:
        fields = {name: _text(row[mapping[name]]) for name in ("instruction", "context", "response") if mapping[name]}
        record = {"fields": fields, "metadata": {}, "judgement": {}}
    for question, column in mapping["labels"].items():
        value = _label(question, row[column])
        if value is not None:
            record["judgement"][question] = value
    return record


def _suggestions(record: Mapping[str, Any], agent: str) -> list[dict[str, Any]]:
    """The row's judgement as suggestions by `agent` (a ranking carries the candidates' scores)."""
    return [
        {
            "question_name": question,
            "value": value,
            "agent": agent,
            **(
                {"score": best_probabilities(record["scores"])}
                if question == schemas.RANKING and record.get("scores")
                else {}
            ),
        }
        for question, value in record["judgement"].items()
    ]


def _used_columns(mapping: Mapping[str, Any]) -> set[str]:
    used: set[str] = set()
    for value in mapping.values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        used.update(v for v in values if v)
    return used


def _row_dicts(rows: Dataset, chunk: int = 10_000) -> Iterator[dict[str, Any]]:
    """The rows as dicts, read a chunk of columns at a time: 10x faster than `datasets` decoding row by row."""
    names = rows.column_names
    for columns in rows.iter(batch_size=chunk):
        yield from (dict(zip(names, values, strict=True)) for values in zip(*(columns[n] for n in names), strict=True))


def build_records(
    rows: Dataset,
    kind: str,
    columns: str | None = None,
    id_column: str | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    agent: str = "import: data",
) -> list[dict[str, Any]]:
    """Argilla record payloads (`external_id`, `fields`, `metadata`, `suggestions` by question name, each
    suggestion a judgement the row carries, by `agent`).

    Raises one `UserError` naming the first offending rows if anything would be refused or duplicated.
    """
    names = list(rows.column_names)
    mapping = column_mapping(kind, names, columns)
    if id_column and id_column not in names:
        raise UserError(f"id column {id_column!r} not in the data ({', '.join(names)})")
    id_column = id_column or ("id" if "id" in names else None)
    used = sorted(_used_columns(mapping))
    content = [c for c in used if c not in mapping["labels"].values()]  # a label changed later keeps the id
    extra = [c for c in names if c not in used and c != id_column]
    required = {"text": [schemas.CONTENT], "instruction": [schemas.INSTRUCTION, schemas.RESPONSE]}.get(kind, ["prompt"])
    records, problems, too_long = [], [], []
    for index, row in enumerate(_row_dicts(rows)):
        key = str(row[id_column]) if id_column else _content_id({c: row[c] for c in content})
        try:
            record = _record(kind, row, mapping, key)
        except (ValueError, TypeError) as err:
            problems.append(f"row {index + 1} {err}")
            continue
        fields = record["fields"]
        empty = [name for name, value in fields.items() if value is None and (name in required or kind == "comparison")]
        if empty:
            problems.append(f"row {index + 1} has no {', '.join(empty)}")
            continue
        record = {
            "external_id": key,
            "fields": {name: value for name, value in fields.items() if value is not None},
            "metadata": record["metadata"],
            "suggestions": _suggestions(record, agent),
        }
        size = sum(len(value) for value in record["fields"].values())
        if size > max_chars:
            too_long.append(f"{record['external_id']} ({size:,})")
        record["metadata"].update({c: row[c] for c in extra if isinstance(row[c], SCALAR)})
        records.append(record)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{len(problems)} row(s) cannot become {kind} records: {'; '.join(problems[:3])}{more}")
    if too_long:
        raise UserError(
            f"{len(too_long)} record(s) over the size limit of {max_chars:,} characters: {', '.join(too_long[:3])}; "
            "shorten them or raise --max_chars"
        )
    duplicates = [(key, n) for key, n in Counter(r["external_id"] for r in records).items() if n > 1]
    if duplicates:
        shown = ", ".join(f"{key!r} x{n}" for key, n in duplicates[:3])
        what = f"values of the id column {id_column!r}" if id_column else "records (same content)"
        raise UserError(f"duplicate ids in the input: {len(duplicates)} {what} repeat ({shown}); make them unique")
    return records


def candidate_count(records: Sequence[Mapping[str, Any]]) -> int:
    """Most candidate responses in one record (the number of response fields a comparison dataset needs)."""
    return max(sum(name.startswith("response_") for name in r["fields"]) for r in records)


# ---------------------------------------------------------------------------- sending


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def send_records(
    client: rg.Argilla,
    dataset: rg.Dataset,
    records: list[dict[str, Any]],
    batch_size: int = BATCH_SIZE,
    respond_as: str | None = None,
) -> tuple[int, int]:
    """Upsert `records` by `external_id`; returns (created, updated), counted from the dataset's size.

    With `respond_as` (a user id), a record whose suggestions answer the kind's required question also
    gets them as that user's submitted response (upserted too: a re-push updates it).
    """
    question_ids = {question.name: str(question.id) for question in dataset.settings.questions}
    required = schemas.REQUIRED[dataset_kind(dataset)]
    http = client.api.http_client
    url = f"/api/v1/datasets/{dataset.id}/records/bulk"

    def payload(record: dict[str, Any]) -> dict[str, Any]:
        suggested = record["suggestions"]
        suggestions = [
            {"question_id": question_ids[s["question_name"]], "type": "model"}
            | {key: s[key] for key in ("value", "agent", "score") if key in s}
            for s in suggested
        ]
        answered = {s["question_name"]: {"value": s["value"]} for s in suggested}
        responses = (
            [{"user_id": respond_as, "values": answered, "status": "submitted"}]
            if respond_as and required in answered
            else []
        )
        return {**record, "suggestions": suggestions, **({"responses": responses} if responses else {})}

    def put(batch: Sequence[dict[str, Any]]) -> None:
        # The server answers with every record it stored; uncompressed, it spends no time packing what is unread.
        response = http.put(url, json={"items": [payload(record) for record in batch]}, headers=PLAIN)
        if response.status_code == 422:
            raise UserError(f"the server refused records of {dataset.name!r}: {response.text[:300]}")
        response.raise_for_status()

    before = record_total(client, dataset)
    with (
        tqdm(total=len(records), desc=f"Pushing to {dataset.name}", unit="record") as bar,
        ThreadPoolExecutor(IN_FLIGHT) as pool,
    ):
        batches = list(_batches(records, batch_size))
        for batch, _ in zip(batches, pool.map(put, batches), strict=True):
            bar.update(len(batch))
    created = record_total(client, dataset) - before  # Argilla 2.8 does not say which records it updated
    return created, len(records) - created


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = CliParser(
        prog="python -m annotation push",
        description="Push records from a file or dataset to an Argilla dataset (idempotent on record ids).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="workspace/dataset")
    parser.add_argument("--data", required=True, help="file, saved HF dataset or scheme:// source, as for training")
    parser.add_argument("--kind", choices=schemas.KINDS, help="create the dataset as this kind if it does not exist")
    parser.add_argument("--columns", help="role=column,... (see above); default: detected by column names")
    parser.add_argument("--id_column", help="column holding each record's id (default: `id` if present, else a hash)")
    parser.add_argument("--min_submitted", type=int, default=1, help="with --kind: answers wanted per record")
    parser.add_argument("--max_chars", type=int, default=DEFAULT_MAX_CHARS, help="largest record, in characters")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE, help=f"records per request (max {BATCH_SIZE})")
    parser.add_argument("--agent", help="suggestions' agent for the data's judgements (default: import: <--data>)")
    parser.add_argument(
        "--as-responses",
        dest="as_responses",
        metavar="USER",
        help="also store the data's judgements as USER's submitted answers (USER made an annotator if missing)",
    )
    parser.add_argument("--credentials", type=Path, help="with --as-responses: 0600 file for a new USER's password")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= BATCH_SIZE:
        raise UserError(f"--batch_size must be between 1 and {BATCH_SIZE}")
    check_min_submitted(args.min_submitted)
    split_address(args.dataset)
    # With --kind the data is checked before any server is needed; without, the dataset says its kind.
    agent = schemas.agent_name(args.agent) if args.agent else schemas.import_agent(args.data)
    records = (
        build_records(load_rows(args.data), args.kind, args.columns, args.id_column, args.max_chars, agent)
        if args.kind
        else None
    )
    client = connect()
    dataset = find_dataset(client, args.dataset) if not args.kind or dataset_exists(client, args.dataset) else None
    kind = dataset_kind(dataset) if dataset else args.kind
    if args.kind and args.kind != kind:
        raise UserError(f"{args.dataset} is a dataset of kind {kind}, not {args.kind}")
    if records is None:
        records = build_records(load_rows(args.data), kind, args.columns, args.id_column, args.max_chars, agent)
    if kind == "comparison" and dataset is not None:
        have = sum(field.name.startswith("response_") for field in dataset.settings.fields)
        if candidate_count(records) > have:
            raise UserError(
                f"{args.dataset} shows {have} responses per record; the data has up to {candidate_count(records)}"
            )
    if dataset is None:
        dataset = create_dataset(client, args.dataset, kind, candidate_count(records), args.min_submitted)
    respond_as = None
    if args.as_responses:
        workspace, _ = split_address(args.dataset)
        add_users(workspace, [args.as_responses], "annotator", args.credentials or default_credentials(), IMPORTER_NAME)
        respond_as = str(client.users(args.as_responses).id)
    created, updated = send_records(client, dataset, records, args.batch_size, respond_as)
    required = schemas.REQUIRED[kind]
    judged = sum(any(s["question_name"] == required for s in r["suggestions"]) for r in records)
    summary = {"dataset": args.dataset, "kind": kind, "created": created, "updated": updated}
    summary |= {"judgements": sum(bool(r["suggestions"]) for r in records), "agent": agent}
    if respond_as:
        summary["responses"] = {args.as_responses: judged}
    print(json.dumps(summary))
    return 0
