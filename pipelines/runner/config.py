"""The one config loader every CLI shares: a YAML file plus flags of the same names, flags winning.

    python -m pipelines.<stage> --config configs/<stage>/<name>.yaml [--key value ...]
    python -m pipelines.data run --config configs/data/curate.yaml --num_proc 1
    python -m annotation export demo/prefs --config configs/annotation/export.yaml --tie_rule first
    python -m annotation loop run --config configs/loop/default.yaml --prompts_per_round 8

The rules are the same everywhere: YAML keys and flags are the fields of the command's dataclasses;
a config that is not a readable YAML mapping is a one-line error (with the line of a syntax error);
an unknown key is an error that suggests the closest valid key; a key whose default is unset (None)
is unset again by `null` in YAML or `null`/`none` on the command line; flags override the YAML.

Two front ends apply them: `parse_config` puts the training stages' dataclasses (TRL's and
transformers' argument classes among them) on TRL's `TrlParser`; `merge_config` with
`add_config_flags`/`config_layers` does the same for plain dataclasses (curation steps, the
annotation export, the loop) without importing torch or TRL, so those CLIs start quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipelines.cli import UserError, mask_passwords, show_library_reports

# Names of credentials (not e.g. `eos_token` or `max_new_tokens`, which are settings).
SECRET_KEY = re.compile(r"(hub_token|access_?token|auth_?token|api_?key|password|secret)", re.IGNORECASE)
NULL_WORDS = ("null", "none")
Layer = tuple[Mapping[str, Any], str]  # (values, where they come from: "in FILE", "on the command line")


@dataclasses.dataclass
class RunArguments:
    """Options of the runner itself, shared by every stage."""

    resume: bool = dataclasses.field(
        default=False,
        metadata={"help": "Continue from the latest checkpoint in output_dir (optimizer, scheduler, RNG, data order)."},
    )
    merge_lora: bool = dataclasses.field(
        default=True,
        metadata={"help": "After a LoRA run, also write <output_dir>/merged: a plain model folder (merge_and_unload)."},
    )
    verbose: bool = dataclasses.field(
        default=False,
        metadata={"help": "Also show the libraries' load reports (e.g. the LOAD REPORT of a fresh reward score head)."},
    )
    validate: bool = dataclasses.field(
        default=False,
        metadata={"help": "Only check the config (keys, types, bounds) and exit: nothing is loaded or written."},
    )


# Bounds of keys, wherever they appear (TRL's and transformers' fields, the project's, the light CLIs' flags): a
# zero or negative batch size, step count or length otherwise fails deep inside a library or silently trains nothing.
POSITIVE = frozenset(
    {
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "save_total_limit",
        "max_length",
        "max_new_tokens",
        "generation_batch_size",
        "rollout_batch_size",
        "ppo_epochs",
        "kl_horizon",
        "cliprange",
        "cliprange_value",
        "max_train_samples",
        "batch_size",
        "samples",
        "num_proc",
        "dataset_num_proc",
        "top_k",
        "lm_eval_limit",
        "lora_r",
        "max_seq_length",
    }
)
NON_NEGATIVE = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "warmup_steps",
        "seed",
        "eval_generation_samples",
        "eval_prompts",
        "eval_every",
        "sample_every",
        "draft_tokens",
        "dataloader_num_workers",
        "temperature",
        "kl_coef",
        "vf_coef",
        "max_grad_norm",
    }
)
UNIT_INTERVAL = frozenset({"gamma", "lam", "lora_dropout"})


def check_ranges(values: Any, prefix: str = "") -> None:
    """A one-line `UserError` for the first key of `values` (a dataclass or argparse namespace) out of its bounds;
    `prefix` is how the key is written (`--` for flags). `max_steps` is > 0, or -1 for "train by epochs"."""
    for key, value in vars(values).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name = f"{prefix}{key}"
        if key == "max_steps" and value != -1 and value <= 0:
            raise UserError(f"{name} must be > 0 (or -1: train num_train_epochs epochs), got {value}")
        if key in POSITIVE and value <= 0:
            raise UserError(f"{name} must be > 0, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
        if key in UNIT_INTERVAL and not 0 <= value <= 1:
            raise UserError(f"{name} must be between 0 and 1, got {value}")


# transformers 5 renamed TrainingArguments' gradient checkpointing keys, and TRL's configs still default the old
# one to True: every stage printed the rename's FutureWarning, whatever its config said. The old names are read
# as the new ones (a value is never ignored), and the old key's default becomes the new key's.
RENAMED_KEYS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


# ---------------------------------------------------------------------------- the shared rules


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; a missing file, bad YAML or another shape is a one-line `UserError`."""
    config_path = Path(path)
    if config_path.is_dir():
        configs = ", ".join(sorted(p.name for p in config_path.glob("*.yaml"))[:6]) or "none there"
        raise UserError(f"config {path} is a folder: give one YAML file in it ({configs})")
    if not config_path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"config {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not UTF-8 text") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UserError(f"config {path} must be a YAML mapping of key: value, got {type(config).__name__}")
    return config


def unknown_key_error(key: str, valid: Sequence[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see --help for the valid keys"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def is_null(value: Any) -> bool:
    """`null` in YAML, or the word null/none as a flag value: the key goes back to unset."""
    return value is None or (isinstance(value, str) and value.strip().lower() in NULL_WORDS)


def _unsettable(field: dataclasses.Field) -> bool:
    """Only a key whose default is 'not set' can be unset (`report_to: none` stays the word 'none')."""
    return field.default is None


def _allows_none(kind: Any) -> bool:
    """Whether a field's declared type (a type, or its string when the hints do not resolve) admits None."""
    if isinstance(kind, str):
        return bool(re.search(r"\bNone\b|\bOptional\[|\bAny\b", kind))
    if kind is Any or kind is None or kind is type(None):
        return True
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_allows_none(arg) for arg in typing.get_args(kind))
    return False


def _needing_values(dataclass_types: Sequence[type]) -> set[str]:
    """The keys of `dataclass_types` that cannot be None: neither their default nor their type allows it."""
    keys: set[str] = set()
    for cls in dataclass_types:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an unresolvable hint: judge the field's own (string) type
            hints = {}
        for field in dataclasses.fields(cls):
            if not _unsettable(field) and not _allows_none(hints.get(field.name, field.type)):
                keys.add(field.name)
    return keys


# ---------------------------------------------------------------------------- plain dataclasses


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The keys of a config dataclass (fields marked `internal` in their metadata are not keys)."""
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _base_type(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return annotation


def _convert(kind: Any, value: Any) -> Any:
    """`value` (from YAML, or a flag's string) as `kind`; ValueError/TypeError when it is not one."""
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word not in ("true", "yes", "1", "false", "no", "0"):
            raise ValueError(value)
        return word in ("true", "yes", "1")
    if origin is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if origin is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if origin is list:
        items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
        (item_kind,) = typing.get_args(kind) or (Any,)
        return [_convert(item_kind, item) for item in items]
    if origin is dict:
        mapping = yaml.safe_load(value) if isinstance(value, str) else value  # a flag: `{max_steps: 2}`
        if not isinstance(mapping, dict):
            raise ValueError(value)
        return mapping
    if origin is str:
        if isinstance(value, dict | list):
            raise TypeError(value)
        return str(value)
    return value


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def coerce_value(key: str, field: dataclasses.Field, kind: Any, value: Any, where: str) -> Any:
    """One key's value typed as its field declares, checked against its `choices`; null unsets it."""
    if value is None and not _unsettable(field):
        raise UserError(f"{key} cannot be null {where}: it needs a value")
    if is_null(value) and _unsettable(field):
        return None
    base = _base_type(kind)
    try:
        typed = _convert(base, value)
    except (TypeError, ValueError):
        raise UserError(f"{key}: {value!r} is not a valid {_type_name(base)} {where}") from None
    choices = field.metadata.get("choices")
    if choices and typed not in choices:
        raise UserError(f"{key}: {typed!r} is not one of {', '.join(map(str, choices))} {where}")
    return typed


def merge_config(cls: type, layers: Sequence[Layer]) -> Any:
    """`cls` from layers of values, later layers winning: unknown keys, types and choices checked per layer."""
    fields, hints = config_fields(cls), typing.get_type_hints(cls)
    merged: dict[str, Any] = {}
    for values, where in layers:
        for key, value in values.items():
            if key not in fields:
                raise unknown_key_error(key, list(fields), where)
            merged[key] = coerce_value(key, fields[key], hints[key], value, where)
    try:
        config = cls(**merged)
    except (TypeError, ValueError) as err:  # the dataclass's own __post_init__ checks
        raise UserError(f"invalid config: {str(err).splitlines()[0]}") from None
    check_ranges(config)
    return config


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """`--key VALUE` for every key of `cls` (default: not given); `merge_config` types and checks them."""
    hints = typing.get_type_hints(cls)
    for name, field in config_fields(cls).items():
        if name in skip:
            continue
        kind = _base_type(hints[name])
        origin = typing.get_origin(kind) or kind
        metavar = {bool: "true|false", list: "A,B", dict: "'{key: value}'"}.get(origin)
        choices = field.metadata.get("choices")
        help_text = field.metadata.get("help", "") + (f" ({' | '.join(map(str, choices))})" if choices else "")
        # argparse formats help with %
        parser.add_argument(f"--{name}", default=None, metavar=metavar, help=help_text.replace("%", "%%"))


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)` where an unknown `--key` is the unknown-key error with the closest key.

    Build the parser with `allow_abbrev=False`: `--max_step 5` must be an unknown key, not `--max_steps`.
    """
    args, rest = parser.parse_known_args(argv)
    valid = sorted(action.dest for action in parser._actions if action.dest != "help")
    for item in rest:
        if item.startswith("--"):
            raise unknown_key_error(item[2:].split("=", 1)[0], valid, "on the command line")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The keys of `cls` given as flags."""
    return {name: getattr(args, name) for name in config_fields(cls) if getattr(args, name, None) is not None}


def config_layers(args: argparse.Namespace, cls: type, section: str | None = None) -> list[Layer]:
    """The YAML file of `--config` (or its `section:` mapping, when it has one) under the flags."""
    layers: list[Layer] = []
    if getattr(args, "config", None):
        values = read_yaml(args.config)
        if section and isinstance(values.get(section), dict):
            values = values[section]
        layers.append((values, f"in {args.config}"))
    layers.append((flag_values(args, cls), "on the command line"))
    return layers


# ---------------------------------------------------------------------------- the stages (TRL's parser)


def _raise_user_error(message: str) -> None:
    raise UserError(f"{message} (see --help)")


def _flags_unsetting(args: list[str], unsettable: set[str]) -> tuple[list[str], list[str]]:
    """(args without `--key null|none` for unsettable keys, those keys)."""
    kept: list[str] = []
    unset: list[str] = []
    index = 0
    while index < len(args):
        item = args[index]
        key, sep, inline = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        value = inline if sep else (args[index + 1] if index + 1 < len(args) else None)
        if key in unsettable and value is not None and is_null(value):
            unset.append(key)
            index += 1 if sep else 2
            continue
        kept.append(item)
        index += 1
    return kept, unset


def _rename_keys(config: dict[str, Any], where: str) -> dict[str, Any]:
    """`config` with the renamed keys under their new names; both names at once is ambiguous."""
    for old, new in RENAMED_KEYS.items():
        if old not in config:
            continue
        value = config.pop(old)
        if new in config and value not in (None, config[new]):  # a saved run_config.yaml holds both, the same
            raise UserError(f"{old} and {new} are both set {where}: {old} is the old name of {new}; keep {new}")
        config.setdefault(new, value)
    return config


def _rename_flags(args: list[str]) -> list[str]:
    renamed = []
    for item in args:
        key, sep, value = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        renamed.append(f"--{RENAMED_KEYS[key]}{sep}{value}" if key in RENAMED_KEYS else item)
    return renamed


def _renamed_defaults(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """The old names unset, their class defaults (TRL: gradient checkpointing on) moved to the new names."""
    defaults: dict[str, Any] = {}
    for cls in dataclass_types:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for old, new in RENAMED_KEYS.items():
            if old in fields and new in fields:
                default = fields[old].default if fields[old].default is not dataclasses.MISSING else None
                defaults.update({old: None, new: default})
    return defaults


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    prog: str | None = None,
) -> tuple[Any, ...]:
    """Parse `--config FILE` and flags into the given dataclasses (TRL's `TrlParser`), then check the values'
    bounds (`check_ranges`), refuse QLoRA where it cannot run, and apply `verbose`; with `validate` stop there.

    `defaults` are the stage's own defaults (e.g. bf16 off on CPU); the YAML overrides them and
    the flags override the YAML.
    """
    from trl import ModelConfig, TrlParser  # here, not at the top: the light CLIs import this module too

    args = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: `--max_step 5` must be an unknown key (with a suggestion), not silently --max_steps
    parser = TrlParser(dataclass_types=list(dataclass_types), prog=prog, allow_abbrev=False)
    parser.error = _raise_user_error  # type: ignore[method-assign]  # one line, not the whole usage text
    valid = sorted(a.dest for a in parser._actions if a.dest != "help")

    config: dict[str, Any] = {**_renamed_defaults(dataclass_types), **(defaults or {})}
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise UserError("--config needs a path to a YAML file")
        config_path = args[index + 1]
        del args[index : index + 2]
        file_config = _rename_keys(read_yaml(config_path), f"in {config_path}")
        needing_values = _needing_values(dataclass_types)
        for key, value in file_config.items():
            if key not in valid and key != "env":
                raise unknown_key_error(key, valid, f"in {config_path}")
            if value is None and key in needing_values:
                raise UserError(f"{key} cannot be null in {config_path}: it needs a value")
        config.update(file_config)
    config.pop("env", None)
    unsettable = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if _unsettable(f)}
    args, unset = _flags_unsetting(_rename_flags(args), unsettable)
    config.update(dict.fromkeys(unset))
    parser.set_defaults_with_config(**config)

    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    except (ValueError, TypeError) as err:  # raised by the dataclasses' __post_init__ checks
        raise UserError(f"invalid config: {str(err).splitlines()[0]}") from None
    for item in remaining:
        if item.startswith("--"):
            raise unknown_key_error(item[2:].split("=", 1)[0], valid, "on the command line")
    if remaining:
        raise UserError(f"unexpected command-line argument {remaining[0]!r} (flags look like --key value)")
    for values in parsed:
        check_ranges(values)
        if isinstance(values, RunArguments):
            show_library_reports(values.verbose)
        if isinstance(values, ModelConfig):
            from pipelines.runner.modeling import check_quantization

            check_quantization(values)
    if any(isinstance(values, RunArguments) and values.validate for values in parsed):
        print("config ok")
        raise SystemExit(0)
    return tuple(parsed)


# ---------------------------------------------------------------------------- what a run used


def redact(value: Any, key: str = "") -> Any:
    """Drop secrets (tokens, keys, passwords) from a config before it is written anywhere."""
    if SECRET_KEY.search(key) and value not in (None, "", False):
        return "<redacted>"
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return redact(dataclasses.asdict(value), key)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask_passwords(value)  # e.g. a database URL in `dataset`
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact(str(value))


def resolved_config(*configs: Any) -> dict[str, Any]:
    """One flat mapping of every dataclass field, as the run really used it, secrets removed."""
    merged: dict[str, Any] = {}
    for config in configs:
        for field in dataclasses.fields(config):
            merged[field.name] = redact(getattr(config, field.name), field.name)
    return merged


def save_resolved_config(path: Path, *configs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved_config(*configs), sort_keys=True), encoding="utf-8")
