"""Where training rows come from: HF dataset folders, JSON/JSONL/CSV/Parquet/text files, hub ids,
SQL databases, and URL-like sources (`argilla://workspace/dataset`) registered by scheme.

Every stage and `annotation push` load data through `load_source`, so a source added here works
everywhere. Splits are made here too, the same way for every stage (`load_splits`):

    dataset: data/textsql/train.jsonl       # a file, a saved HF dataset folder, a hub id, or a database:
    dataset: data/shop.sqlite               #   a SQLite file (.sqlite/.sqlite3/.db) or any SQLAlchemy URL,
    dataset: postgresql://ml@db.internal/shop
    sql: train_questions                    #   with a table or view name, or a query (see pipelines/data/sql.py)
    eval_sql: test_questions                # held-out rows from the same database (or set eval_dataset)
    test_size: 0.1                          # without held-out rows: a fraction or a row count is split off,
    test_split: last                        #   seeded-random (default), or the first/last rows (time order)
    metrics_table: training_metrics         # database sources: also log the run's metrics to this table

The same mapping (`columns`) applies to every kind of source. Row order matters for `test_split:
first|last` and for a reproducible seeded split: files keep their order, a table is read in primary-key
order, a view or query needs an ORDER BY. A file that cannot be read is a one-line error naming what to fix:
for JSON Lines, the line (`read_jsonl`, the one JSONL reader of the project). A stage says what it needs
(`purpose`), so a `scheme://` source of the wrong kind (a comparison dataset given to SFT) is refused before
its records are fetched.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from pipelines.cli import UserError, mask_passwords
from pipelines.data.formats import QUICK_FILE_BYTES, bars_only_if_long, check_text_columns, text_columns
from pipelines.data.sql import MetricsTable, database_url, load_sql

FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
EVAL_SPLIT_NAMES = ("test", "validation", "eval")
TEST_SPLITS = ("random", "first", "last")

# What the rows are for, so a source can refuse data of the wrong kind before fetching it (None: any rows).
PURPOSES = ("sft", "reward", "ppo", "eval")
# Sources addressed as `<scheme>://...`, called with the spec and the purpose; the annotation package registers
# "argilla".
SchemeLoader = Callable[[str, str | None], Dataset | DatasetDict]
SCHEME_LOADERS: dict[str, SchemeLoader] = {}
# Modules imported on first use of a scheme, so that they register it without every stage importing them.
SCHEME_PLUGINS = {"argilla": "annotation.sources"}


def register_scheme(scheme: str, loader: SchemeLoader) -> None:
    SCHEME_LOADERS[scheme] = loader


@dataclasses.dataclass
class DataArguments:
    """Which data a stage trains and evaluates on, and how its columns map to the stage's fields."""

    dataset: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Training data: HF dataset folder, a .json/.jsonl/.csv/.parquet/.txt file, a hub id, or a "
            "database: a .sqlite/.sqlite3/.db file or a SQLAlchemy URL (e.g. postgresql://user@host/db) with `sql`."
        },
    )
    sql: str | None = dataclasses.field(
        default=None,
        metadata={"help": "When `dataset` is a database: the table or view to read, or a SELECT query."},
    )
    eval_dataset: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Held-out data (same kinds as `dataset`); default: split from `dataset`."},
    )
    eval_sql: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Table, view or query of held-out rows, in `eval_dataset`'s database or, without "
            "eval_dataset, in `dataset`'s (`--eval_dataset ''` unsets one a config sets)."
        },
    )
    columns: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Column mapping role=column, e.g. 'prompt=question,completion=answer' (a YAML mapping in "
            "configs). Roles: text, prompt, completion, messages, instruction, context, response, system. "
            "Default: detect the common shapes by their column names."
        },
    )
    test_size: float = dataclasses.field(
        default=0.1,
        metadata={"help": "Eval split when no held-out rows are given: a fraction (<1) or a row count."},
    )
    test_split: str = dataclasses.field(
        default="random",
        metadata={
            "help": "Which rows test_size takes: random (seeded) | first | last (time-ordered data: hold out "
            "the newest rows with last).",
            "choices": TEST_SPLITS,
        },
    )
    shuffle: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "max_train_samples takes a seeded random subset of the training rows (true) or the first N "
            "in source order (false). The trainer still shuffles batches every epoch."
        },
    )
    max_train_samples: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Keep only N training rows (see `shuffle`), to size a run."},
    )
    metrics_table: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "When `dataset` is a database: also write the run's metrics to this table there (created if "
            "missing; one row per logged step: run_id, output_dir, step, logged_at, metrics JSON)."
        },
    )
    system_prompt: str | None = dataclasses.field(
        default=None,
        metadata={"help": "System message put before every prompt (chat formats only)."},
    )

    def __post_init__(self) -> None:
        # YAML values skip argparse's `choices` and type checks: check them here (parse_config reports it)
        if self.test_split not in TEST_SPLITS:
            raise ValueError(f"test_split must be one of {', '.join(TEST_SPLITS)}, got {self.test_split!r}")
        if self.test_size <= 0:
            raise ValueError(f"test_size must be > 0 (a fraction below 1 or a row count), got {self.test_size}")


def _check_utf8(path: Path) -> None:
    """Fail early with the byte offset instead of a deep Arrow/pandas decoding traceback."""
    decoder_offset = 0
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path} is not UTF-8 text (invalid byte at offset {decoder_offset + err.start}); "
                    "re-save it as UTF-8"
                ) from None
            decoder_offset += len(chunk)


JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}


def _json_kind(value: Any) -> str:
    return JSON_KINDS.get(type(value), type(value).__name__)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (blank lines skipped). The first line that is not a JSON object, or whose
    field holds another type than on an earlier line, is a one-line `UserError` naming that line."""
    _check_utf8(path)
    rows: list[dict[str, Any]] = []
    first_seen: dict[str, tuple[str, int]] = {}  # field -> (type, line) of its first non-null value
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\n"))
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{path}:{number} is not JSON ({err.msg}, column {err.colno}): fix or delete that line"
                ) from None
            if not isinstance(row, dict):
                raise UserError(
                    f'{path}:{number} is {_json_kind(row)}, not a JSON object: write one {{"field": value, ...}} '
                    "object per line"
                )
            for field, value in row.items():
                if value is None:
                    continue
                kind, line_seen = first_seen.setdefault(field, (_json_kind(value), number))
                if kind != _json_kind(value):
                    raise UserError(
                        f"{path}:{number}: {field!r} is {_json_kind(value)} here but {kind} on line {line_seen}; "
                        "give a field one type in every row"
                    )
            rows.append(row)
    if not rows:
        raise UserError(f"{path} has no rows: every line is blank")
    return rows


def _first_cause(err: BaseException) -> str:
    """The innermost error's first line: `datasets` wraps the parser's own message (e.g. pandas' line number)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return (str(err).splitlines() or [type(err).__name__])[0]


def _load_file(path: Path) -> Dataset:
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"unsupported data file type {path.suffix!r} ({path}); use one of {', '.join(FILE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}")
    if path.suffix.lower() == ".jsonl":  # the project's reader: a bad line is named, every field keeps its type
        rows = read_jsonl(path)
        return Dataset.from_dict(
            {key: [row.get(key) for row in rows] for key in dict.fromkeys(k for r in rows for k in r)}
        )
    if builder != "parquet":
        _check_utf8(path)
    with bars_only_if_long(path.stat().st_size, QUICK_FILE_BYTES):
        return _read_with_datasets(path, builder)


def _read_with_datasets(path: Path, builder: str) -> Dataset:
    try:
        loaded = load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - datasets wraps parser errors in many exception types
        if builder == "json":
            try:
                json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as bad:
                where = f"line {bad.lineno}, column {bad.colno}"
                raise UserError(
                    f"{path} is not valid JSON ({where}: {bad.msg}); JSON Lines files end in .jsonl"
                ) from None
        if builder == "csv" and "corresponds to no data" in str(err):  # a header and no rows
            raise UserError(f"{path} has no rows: only a header line") from None
        raise UserError(f"cannot read {path} as {builder}: {_first_cause(err)}") from None
    if builder == "text":  # blank lines are not rows
        loaded = loaded.filter(lambda row: bool(row["text"].strip()), desc="Dropping blank lines")
    return loaded


def _load_dir(path: Path) -> Dataset | DatasetDict:
    if any((path / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return load_from_disk(str(path))
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_BUILDERS)
    if not files:
        raise UserError(f"{path} is neither a saved HF dataset nor a folder of {'/'.join(FILE_BUILDERS)} files")
    if len(files) == 1:
        return _load_file(files[0])
    from datasets import concatenate_datasets

    parts = [_load_file(f) for f in files]
    shapes = {tuple(sorted(part.column_names)): f.name for f, part in zip(files, parts, strict=True)}
    if len(shapes) > 1:
        which = "; ".join(f"{name}: {', '.join(columns)}" for columns, name in list(shapes.items())[:3])
        raise UserError(
            f"{path} holds files with different columns ({which}): they are not one dataset; give one file, "
            "or a folder of files alike"
        )
    return concatenate_datasets(parts)


def load_source(spec: str, sql: str | None = None, purpose: str | None = None) -> Dataset | DatasetDict:
    """Load rows from `spec` (for a database, the table, view or query `sql`) for `purpose` (one of `PURPOSES`,
    None: any); every failure a user can cause becomes a one-line `UserError`."""
    scheme = spec.split("://", 1)[0] if "://" in spec else None
    if scheme is not None and scheme not in SCHEME_LOADERS and scheme in SCHEME_PLUGINS:
        importlib.import_module(SCHEME_PLUGINS[scheme])
    if scheme not in SCHEME_LOADERS and database_url(spec) is not None:
        return load_sql(spec, sql)
    if sql is not None:
        raise UserError(
            f"`sql` is set, but {mask_passwords(spec)!r} is not a database (a .sqlite/.db file or a SQLAlchemy URL)"
        )
    if scheme is not None:
        if scheme not in SCHEME_LOADERS:
            known = ", ".join(f"{s}://" for s in SCHEME_LOADERS) or "none registered"
            raise UserError(
                f"unknown data source scheme {scheme}:// in {mask_passwords(spec)!r} "
                f"(known: {known}, and SQLAlchemy database URLs)"
            )
        return SCHEME_LOADERS[scheme](spec, purpose)
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        return _load_dir(path)
    if path.suffix.lower() in FILE_BUILDERS or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"data file not found: {spec}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{spec!r} is not a local file or folder, and the hub is offline (HF_HUB_OFFLINE=1)")
    try:
        return load_dataset(spec)
    except Exception as err:  # noqa: BLE001 - hub, network and builder errors all mean "cannot load"
        raise UserError(f"cannot load dataset {spec!r}: {str(err).splitlines()[0]}") from None


def _checked(dataset: Dataset, spec: str, purpose: str | None, columns: str | None) -> Dataset:
    """Rows that are there and, for a stage's `purpose`, hold text in every column it reads (row numbers of the
    source: checked before any split)."""
    if len(dataset) == 0:
        raise UserError(f"no rows in {mask_passwords(spec)}")
    if purpose is not None:
        check_text_columns(dataset, name=mask_passwords(spec), **text_columns(purpose, dataset.column_names, columns))
    return dataset


def split_off_test(rows: Dataset, test_size: float, test_split: str, seed: int, name: str) -> tuple[Dataset, Dataset]:
    """Train and test rows: `test_size` rows (a fraction rounded up, or a count) taken at random or from an end."""
    n_test = math.ceil(test_size * len(rows)) if test_size < 1 else int(test_size)
    if not 0 < n_test < len(rows):
        raise UserError(
            f"{name} has {len(rows)} row(s): too few to split off an eval set of test_size {test_size:g}; "
            "lower test_size or give held-out rows (eval_dataset / eval_sql)"
        )
    if test_split == "random":
        split = rows.train_test_split(test_size=n_test, seed=seed)
        return split["train"], split["test"]
    n_train = len(rows) - n_test
    if test_split == "first":
        return rows.select(range(n_test, len(rows))), rows.select(range(n_test))
    return rows.select(range(n_train)), rows.select(range(n_train, len(rows)))


def metrics_sinks(args: DataArguments) -> list[MetricsTable]:
    """Where a run's metrics go besides metrics.jsonl: with `metrics_table`, that table of the data's
    database. A stage hands these to `start_run`, which calls them wherever it logs."""
    if not args.metrics_table:
        return []
    from accelerate import PartialState

    if database_url(args.dataset or "") is None:
        raise UserError(
            f"metrics_table needs a database `dataset` (a .sqlite/.db file or a SQLAlchemy URL), got {args.dataset!r}"
        )
    return [MetricsTable(args.dataset, args.metrics_table, PartialState().is_main_process)]


def load_splits(args: DataArguments, seed: int, purpose: str | None = None) -> tuple[Dataset, Dataset]:
    """Train and eval rows for `purpose` (see `load_source`): `eval_dataset`/`eval_sql`, else the source's own test
    split, else `test_size` rows taken as `test_split` says."""
    if not args.dataset:
        raise UserError("no training data: set `dataset` in the config or pass --dataset PATH")
    loaded = load_source(args.dataset, args.sql, purpose)
    eval_rows: Dataset | None = None
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{args.dataset} has no 'train' split (found: {', '.join(loaded)})")
        split = next((name for name in EVAL_SPLIT_NAMES if name in loaded), None)
        if split is not None:
            eval_rows = _checked(loaded[split], f"{args.dataset} ({split} split)", purpose, args.columns)
        loaded = loaded["train"]
    train_rows = _checked(loaded, args.dataset, purpose, args.columns)
    if args.eval_dataset or args.eval_sql:
        eval_spec = args.eval_dataset or args.dataset
        other = load_source(eval_spec, args.eval_sql, purpose)
        eval_rows = _checked(
            other["train"] if isinstance(other, DatasetDict) else other, eval_spec, purpose, args.columns
        )
    if eval_rows is None:
        train_rows, eval_rows = split_off_test(
            train_rows, args.test_size, args.test_split, seed, mask_passwords(args.dataset)
        )
    if args.max_train_samples:
        if args.shuffle:
            train_rows = train_rows.shuffle(seed=seed)
        train_rows = train_rows.select(range(min(args.max_train_samples, len(train_rows))))
    return train_rows, eval_rows
