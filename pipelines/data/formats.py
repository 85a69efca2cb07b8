"""Turn rows of any common shape into the three shapes TRL trains on.

- `text`: plain text (continued pretraining; loss on every token);
- `prompt` + `completion` (conversational): instruction data; the loss covers the completion only;
- `messages`: multi-turn chats; the loss covers the assistant turns only.

The shape is taken from an explicit `columns` mapping (role=column) or detected by column names.
Instruction rows with a context put it after the instruction under a "Context:" header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datasets import Dataset

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
        text = str(row[mapping["instruction"]] or "")
        context = str(row.get(mapping.get("context", ""), "") or "").strip()
        return f"{text}\n\nContext:\n{context}" if context else text
    return str(row[mapping["prompt"]] or "")


def _answer(row: Mapping[str, Any], mapping: dict[str, str]) -> str:
    return str(row[mapping["response" if "response" in mapping else "completion"]] or "")


def to_training_format(dataset: Dataset, mapping: dict[str, str], system_prompt: str | None = None) -> Dataset:
    """Rows -> `text`, conversational `prompt`/`completion`, or `messages` (TRL's dataset types)."""
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

    return dataset.map(convert, remove_columns=dataset.column_names, desc="Formatting")


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


def to_prompts(
    dataset: Dataset, columns: str | Mapping[str, str] | None, system_prompt: str | None
) -> list[list[dict]]:
    """Chat prompts for RL and evaluation: only the prompt side of any supported shape is needed."""
    mapping = parse_columns(columns)
    found = ", ".join(dataset.column_names)
    if not mapping:
        column = next((c for c in PROMPT_COLUMNS if c in dataset.column_names), None)
        if column is None:
            raise UserError(f"no prompt column: expected one of {', '.join(PROMPT_COLUMNS)}; found {found}")
        mapping = {"instruction": column} | ({"context": "context"} if "context" in dataset.column_names else {})
    elif "prompt" in mapping and "instruction" not in mapping:
        mapping = {"instruction": mapping["prompt"], **{k: v for k, v in mapping.items() if k != "prompt"}}
    missing = [c for c in mapping.values() if c not in dataset.column_names]
    if missing or "instruction" not in mapping:
        raise UserError(f"prompt column(s) {', '.join(missing) or 'prompt'} not found; the data has {found}")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [[*system, {"role": "user", "content": _user_prompt(row, mapping)}] for row in dataset]
