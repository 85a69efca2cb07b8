"""Where training rows come from: HF dataset folders, JSON/JSONL/CSV/Parquet/text files, hub ids,
and URL-like sources (`argilla://workspace/dataset`) registered by scheme.

Every stage and `annotation push` load data through `load_source`, so a source added here works
everywhere. Splits are made here too, the same way for every stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from pipelines.errors import UserError

FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
EVAL_SPLIT_NAMES = ("test", "validation", "eval")

# Sources addressed as `<scheme>://...`; the annotation package registers "argilla".
SCHEME_LOADERS: dict[str, Callable[[str], Dataset | DatasetDict]] = {}
# Modules imported on first use of a scheme, so that they register it without every stage importing them.
SCHEME_PLUGINS = {"argilla": "annotation.sources"}


def register_scheme(scheme: str, loader: Callable[[str], Dataset | DatasetDict]) -> None:
    SCHEME_LOADERS[scheme] = loader


@dataclasses.dataclass
class DataArguments:
    """Which data a stage trains and evaluates on, and how its columns map to the stage's fields."""

    dataset: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Training data: HF dataset folder, a .json/.jsonl/.csv/.parquet/.txt file, or a hub id."},
    )
    eval_dataset: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Held-out data (same kinds as `dataset`); default: split from `dataset`."},
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
        metadata={"help": "Eval split when no eval_dataset is given: a fraction (<1) or a row count."},
    )
    max_train_samples: int | None = dataclasses.field(
        default=None,
        metadata={"help": "Keep only the first N training rows (after shuffling), to size a run."},
    )
    system_prompt: str | None = dataclasses.field(
        default=None,
        metadata={"help": "System message put before every prompt (chat formats only)."},
    )


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


def _load_file(path: Path) -> Dataset:
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise UserError(f"unsupported data file type {path.suffix!r} ({path}); use one of {', '.join(FILE_BUILDERS)}")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}")
    if builder != "parquet":
        _check_utf8(path)
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - datasets wraps parser errors in many exception types
        raise UserError(f"cannot read {path} as {builder}: {str(err).splitlines()[0]}") from None


def _load_dir(path: Path) -> Dataset | DatasetDict:
    if any((path / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return load_from_disk(str(path))
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_BUILDERS)
    if not files:
        raise UserError(f"{path} is neither a saved HF dataset nor a folder of {'/'.join(FILE_BUILDERS)} files")
    if len(files) == 1:
        return _load_file(files[0])
    from datasets import concatenate_datasets

    return concatenate_datasets([_load_file(f) for f in files])


def load_source(spec: str) -> Dataset | DatasetDict:
    """Load rows from `spec`; every failure a user can cause becomes a one-line `UserError`."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        if scheme not in SCHEME_LOADERS and scheme in SCHEME_PLUGINS:
            importlib.import_module(SCHEME_PLUGINS[scheme])
        if scheme not in SCHEME_LOADERS:
            known = ", ".join(f"{s}://" for s in SCHEME_LOADERS) or "none registered"
            raise UserError(f"unknown data source scheme {scheme}:// in {spec!r} (known: {known})")
        return SCHEME_LOADERS[scheme](spec)
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


def _non_empty(dataset: Dataset, spec: str) -> Dataset:
    if len(dataset) == 0:
        raise UserError(f"no rows in {spec}")
    return dataset


def load_splits(args: DataArguments, seed: int) -> tuple[Dataset, Dataset]:
    """Train and eval rows: `eval_dataset`, else the source's own test split, else a seeded split."""
    if not args.dataset:
        raise UserError("no training data: set `dataset` in the config or pass --dataset PATH")
    loaded = load_source(args.dataset)
    eval_rows: Dataset | None = None
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{args.dataset} has no 'train' split (found: {', '.join(loaded)})")
        eval_rows = next((loaded[name] for name in EVAL_SPLIT_NAMES if name in loaded), None)
        loaded = loaded["train"]
    train_rows = _non_empty(loaded, args.dataset)
    if args.eval_dataset:
        other = load_source(args.eval_dataset)
        eval_rows = _non_empty(
            other["train"] if isinstance(other, DatasetDict) else other,
            args.eval_dataset,
        )
    if eval_rows is None:
        test_size = int(args.test_size) if args.test_size >= 1 else args.test_size
        if len(train_rows) < 2:
            raise UserError(f"{args.dataset} has {len(train_rows)} row: too few to split off an eval set")
        split = train_rows.train_test_split(test_size=test_size, seed=seed)
        train_rows, eval_rows = split["train"], split["test"]
    if args.max_train_samples:
        train_rows = train_rows.shuffle(seed=seed).select(range(min(args.max_train_samples, len(train_rows))))
    return train_rows, eval_rows
