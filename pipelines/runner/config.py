"""Config handling shared by every stage: YAML + command-line flags on TRL's own parser.

`python -m pipelines.<stage> --config configs/<stage>/<name>.yaml [--key value ...]`: YAML keys
and flags are the same names (the fields of the stage's dataclasses); flags win over YAML.
Unknown keys are an error that suggests the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from trl import TrlParser

from pipelines.cli import UserError, mask_passwords

# Names of credentials (not e.g. `eos_token` or `max_new_tokens`, which are settings).
SECRET_KEY = re.compile(r"(hub_token|access_?token|auth_?token|api_?key|password|secret)", re.IGNORECASE)


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


def _load_yaml(path: str) -> dict[str, Any]:
    config_path = Path(path)
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


def _unknown_key_error(key: str, valid: Sequence[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see --help for the valid keys"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _raise_user_error(message: str) -> None:
    raise UserError(f"{message} (see --help)")


def parse_config(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    prog: str | None = None,
) -> tuple[Any, ...]:
    """Parse `--config FILE` and flags into the given dataclasses (TRL's `TrlParser`).

    `defaults` are the stage's own defaults (e.g. bf16 off on CPU); the YAML overrides them and
    the flags override the YAML.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: `--max_step 5` must be an unknown key (with a suggestion), not silently --max_steps
    parser = TrlParser(dataclass_types=list(dataclass_types), prog=prog, allow_abbrev=False)
    parser.error = _raise_user_error  # type: ignore[method-assign]  # one line, not the whole usage text
    valid = sorted(a.dest for a in parser._actions if a.dest != "help")

    config: dict[str, Any] = dict(defaults or {})
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise UserError("--config needs a path to a YAML file")
        config_path = args[index + 1]
        del args[index : index + 2]
        file_config = _load_yaml(config_path)
        for key in file_config:
            if key not in valid and key != "env":
                raise _unknown_key_error(key, valid, f"in {config_path}")
        config.update(file_config)
    config.pop("env", None)
    parser.set_defaults_with_config(**config)

    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    except (
        ValueError,
        TypeError,
    ) as err:  # raised by the dataclasses' __post_init__ checks
        raise UserError(f"invalid config: {str(err).splitlines()[0]}") from None
    for item in remaining:
        if item.startswith("--"):
            raise _unknown_key_error(item[2:].split("=", 1)[0], valid, "on the command line")
    if remaining:
        raise UserError(f"unexpected command-line argument {remaining[0]!r} (flags look like --key value)")
    return tuple(parsed)


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
