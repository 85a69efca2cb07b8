"""Turn rows of any common shape into the three shapes TRL trains on.

- `text`: plain text (continued pretraining; loss on every token);
- `prompt` + `completion` (conversational): instruction data; the loss covers the completion only;
- `messages`: multi-turn chats; the loss covers the assistant turns only.

The shape is taken from an explicit `columns` mapping (role=column) or detected by column names.
Instruction rows with a context put it after the instruction under a "Context:" header. The columns that
become text are checked first (`check_text_columns`): a null, blank or non-text value (a number, a list)
is refused with its row numbers instead of becoming "" or "0"-less text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import datasets
from datasets import Dataset, Value

from pipelines.cli import UserError

ROLES = (
    "text",
    "prompt",
    "completion",
    "messages",
    "instruction",
    "context",
    "response",
    "system",
)

# Shapes detected by column names, in order of preference: role -> column.
KNOWN_SHAPES: tuple[dict[str, str], ...] = (
    {"messages": "messages"},
    {"prompt": "prompt", "completion": "completion"},
    {"instruction": "instruction", "response": "response"},
    {"question": "prompt", "answer": "completion"},
    {"input": "prompt", "output": "completion"},
    {"text": "text"},
)
OPTIONAL_COLUMNS = {"context": "context", "system": "system"}


def parse_columns(columns: str | Mapping[str, str] | None) -> dict[str, str]:
    """`'prompt=question,completion=answer'` (flag) or a YAML mapping -> {role: column}."""
    if not columns:
        return {}
    if isinstance(columns, Mapping):
        mapping = {str(k): str(v) for k, v in columns.items()}
    else:
        mapping = {}
        for item in str(columns).split(","):
            role, sep, column = item.partition("=")
            if not sep or not role.strip() or not column.strip():
                raise UserError(f"bad column mapping item {item!r}: write role=column, e.g. prompt=question")
            mapping[role.strip()] = column.strip()
    unknown = sorted(set(mapping) - set(ROLES))
    if unknown:
        raise UserError(f"unknown column role(s) {', '.join(unknown)} in the mapping; roles are {', '.join(ROLES)}")
    return mapping


def detect_mapping(column_names: list[str], columns: str | Mapping[str, str] | None) -> dict[str, str]:
    """The role -> column mapping for this dataset, or a `UserError` listing found vs expected columns."""
    found = ", ".join(column_names)
    mapping = parse_columns(columns)
    if mapping:
        missing = [column for column in mapping.values() if column not in column_names]
        if missing:
            raise UserError(f"missing column(s) {', '.join(missing)}: the mapping expects them, the data has {found}")
        return _validate(mapping, found)
    for shape in KNOWN_SHAPES:
        if all(column in column_names for column in shape):
            detected = {role: column for column, role in shape.items()}
            detected.update({role: col for col, role in OPTIONAL_COLUMNS.items() if col in column_names})
            return _validate(detected, found)
    expected = " | ".join("+".join(shape) for shape in KNOWN_SHAPES)
    raise UserError(f"cannot tell the data's shape: expected columns {expected}; found {found} (or set `columns`)")


def _validate(mapping: dict[str, str], found: str) -> dict[str, str]:
    roles = set(mapping) - {"system", "context"}
    valid = (
        {"text"},
        {"messages"},
        {"prompt", "completion"},
        {"instruction", "response"},
    )
    if roles not in valid:
        raise UserError(
            f"column roles {', '.join(sorted(roles))} do not form a shape; use text, messages, prompt+completion "
            f"or instruction(+context)+response (data columns: {found})"
        )
    return mapping


def _user_prompt(row: Mapping[str, Any], mapping: dict[str, str]) -> str:
    if "instruction" in mapping:
        text = row[mapping["instruction"]]
        context = (row.get(mapping.get("context", "")) or "").strip()
        return f"{text}\n\nContext:\n{context}" if context else text
    return row[mapping["prompt"]]


def _answer(row: Mapping[str, Any], mapping: dict[str, str]) -> str:
    return row[mapping["response" if "response" in mapping else "completion"]]


OPTIONAL_ROLES = ("context", "system")
TEXT_TYPES = ("string", "large_string")


def _rows_named(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    more = f" (and {len(numbers) - 5} more)" if len(numbers) > 5 else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def check_text_columns(
    rows: Dataset,
    required: Sequence[str],
    name: str,
    optional: Sequence[str] = (),
    lists: Collection[str] = (),
    messages: Collection[str] = (),
) -> None:
    """Every row of the `required` columns holds text (not null, not blank), the `optional` ones text or nothing;
    columns in `lists` may hold lists instead (chat messages, ranked candidates), those in `messages` must (a
    conversation per row). A one-line `UserError` names the column and the rows (counted from 1 in `name`'s order)
    otherwise."""
    for column in [*required, *optional]:
        feature = rows.features[column]
        is_list = not isinstance(feature, Value)
        kind = "list" if is_list else feature.dtype
        if column in messages and not is_list:
            raise UserError(
                f"{name}: column {column!r} holds {kind} values, but the messages role needs a list of chat messages "
                "({role, content}) per row; map a text column to text, prompt or completion instead"
            )
        if (is_list and column not in lists) or (not is_list and kind not in (*TEXT_TYPES, "null")):
            example = next(((i, v) for i, v in enumerate(rows[column], start=1) if v is not None), None)
            shown = f" (row {example[0]}: {example[1]!r})" if example else ""
            raise UserError(
                f"{name}: column {column!r} holds {kind} values, not text{shown}; write them as strings in the data "
                '(e.g. "4", not 4) or map another column'
            )
        if column in optional:
            continue
        empty = [i for i, v in enumerate(rows[column], start=1) if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            raise UserError(
                f"{name}: column {column!r} is empty (null or blank) in {_rows_named(empty)}; fill them in or drop "
                "those rows"
            )


def text_columns(purpose: str, names: Sequence[str], columns: str | Mapping[str, str] | None) -> dict[str, list[str]]:
    """Which columns a `purpose` (see pipelines.data.sources.PURPOSES) turns into text: `required` (text in every
    row), `optional` (text or nothing) and `lists` (may hold lists): the arguments of `check_text_columns`."""
    if purpose == "reward":
        ranking = {"prompt", "responses", "ranks"} <= set(names)
        shape = ["prompt", "responses"] if ranking else [c for c in ("prompt", "chosen", "rejected") if c in names]
        return {"required": shape, "optional": [], "lists": shape}
    return _roles_to_check(prompt_mapping(names, columns) if purpose == "ppo" else detect_mapping(list(names), columns))


def _roles_to_check(mapping: Mapping[str, str]) -> dict[str, list[str]]:
    return {
        "required": [column for role, column in mapping.items() if role not in OPTIONAL_ROLES],
        "optional": [column for role, column in mapping.items() if role in OPTIONAL_ROLES],
        "lists": [mapping["messages"]] if "messages" in mapping else [],
        "messages": [mapping["messages"]] if "messages" in mapping else [],
    }


def to_training_format(
    dataset: Dataset, mapping: dict[str, str], system_prompt: str | None = None, name: str = "the data"
) -> Dataset:
    """Rows -> `text`, conversational `prompt`/`completion`, or `messages` (TRL's dataset types); a row without
    text where the mapping needs it is a `UserError` naming it (`name`: what the rows are, for the message)."""
    check_text_columns(dataset, name=name, **_roles_to_check(mapping))
    for role in ("text", "messages"):
        if role in mapping:
            kept = dataset.select_columns([mapping[role]])
            return kept if mapping[role] == role else kept.rename_column(mapping[role], role)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        system = row.get(mapping["system"]) if "system" in mapping else system_prompt
        prompt = [{"role": "system", "content": system}] if system else []
        prompt.append({"role": "user", "content": _user_prompt(row, mapping)})
        return {
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": _answer(row, mapping)}],
        }

    with bars_only_if_long(len(dataset)):
        return dataset.map(convert, remove_columns=dataset.column_names, desc="Formatting")


# Below these sizes datasets' own work takes well under a second: no progress bar (it would only stand in
# front of the one-line error that a user's mistake in the data ends in).
QUICK_ROWS = 50_000
QUICK_FILE_BYTES = 32 * 2**20


@contextlib.contextmanager
def bars_only_if_long(size: int, quick_below: int = QUICK_ROWS) -> Iterator[None]:
    """datasets' progress bars inside the block only where `size` (rows, or bytes with QUICK_FILE_BYTES) makes
    the work long enough to need them."""
    if size >= quick_below or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def generation_pairs(dataset: Dataset) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Prompts (chat messages) and reference answers for generation eval; empty for plain text."""
    if "prompt" in dataset.column_names:
        return list(dataset["prompt"]), [c[-1]["content"] for c in dataset["completion"]]
    if "messages" in dataset.column_names:
        prompts, references = [], []
        for messages in dataset["messages"]:
            last = max(
                (i for i, m in enumerate(messages) if m["role"] == "assistant"),
                default=None,
            )
            if last:
                prompts.append(messages[:last])
                references.append(messages[last]["content"])
        return prompts, references
    return [], []


def drop_overlong_prompts(dataset: Dataset, tokenizer: Any, max_length: int | None, name: str) -> Dataset:
    """Drop examples whose prompt alone fills `max_length` (nothing would be left to learn from).

    All of them too long is a config mistake and a `UserError`; some of them is reported.
    """
    if not max_length or "prompt" not in dataset.column_names:
        return dataset

    def prompt_length(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
        ids = tokenizer.apply_chat_template(batch["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
        return {"_prompt_tokens": [len(x) for x in ids]}

    with bars_only_if_long(len(dataset)):
        lengths = dataset.map(prompt_length, batched=True, desc=f"Measuring {name} prompts")["_prompt_tokens"]
    keep = [i for i, n in enumerate(lengths) if n < max_length]
    if not keep:
        raise UserError(
            f"max_length={max_length} is not longer than any {name} prompt (shortest {min(lengths)} tokens, "
            f"longest {max(lengths)}): raise max_length above {max(lengths)}"
        )
    if len(keep) < len(dataset):
        print(
            f"{name}: dropped {len(dataset) - len(keep)}/{len(dataset)} examples whose prompt alone reaches "
            f"max_length={max_length} (longest prompt {max(lengths)} tokens)"
        )
        return dataset.select(keep)
    return dataset


PROMPT_COLUMNS = ("prompt", "question", "instruction", "input", "query")


def prompt_mapping(names: Sequence[str], columns: str | Mapping[str, str] | None) -> dict[str, str]:
    """The role -> column mapping of the prompt side only (instruction and context): all RL and evaluation need."""
    mapping = parse_columns(columns)
    found = ", ".join(names)
    if not mapping:
        column = next((c for c in PROMPT_COLUMNS if c in names), None)
        if column is None:
            raise UserError(f"no prompt column: expected one of {', '.join(PROMPT_COLUMNS)}; found {found}")
        mapping = {"instruction": column} | ({"context": "context"} if "context" in names else {})
    elif "prompt" in mapping and "instruction" not in mapping:
        mapping = {"instruction": mapping["prompt"], **{k: v for k, v in mapping.items() if k != "prompt"}}
    mapping = {role: column for role, column in mapping.items() if role in ("instruction", "context")}
    missing = [c for c in mapping.values() if c not in names]
    if missing or "instruction" not in mapping:
        raise UserError(f"prompt column(s) {', '.join(missing) or 'prompt'} not found; the data has {found}")
    return mapping


def to_prompts(
    dataset: Dataset, columns: str | Mapping[str, str] | None, system_prompt: str | None
) -> list[list[dict]]:
    """Chat prompts for RL and evaluation: only the prompt side of any supported shape is needed."""
    mapping = prompt_mapping(dataset.column_names, columns)
    check_text_columns(dataset, name="the prompts", **_roles_to_check(mapping))
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [[*system, {"role": "user", "content": _user_prompt(row, mapping)}] for row in dataset]
