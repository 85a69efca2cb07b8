"""Data loading and shapes: files of every supported kind become the three shapes TRL trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict

from pipelines.data.formats import detect_mapping, drop_overlong_prompts, to_training_format
from pipelines.data.sources import DataArguments, load_source, load_splits
from pipelines.runner import UserError

ROWS = [
    {"question": "How many customers live in Lyon?", "answer": "SELECT COUNT(*) FROM customers WHERE city = 'Lyon';"},
    {"question": "List every product.", "answer": "SELECT name FROM products;"},
    {"question": "What is 2 plus 3?", "answer": "5"},
]


def user_turn(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def assistant_turn(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


def formatted(rows: list[dict[str, Any]], columns: Any = None, system_prompt: str | None = None) -> Dataset:
    dataset = Dataset.from_list(rows)
    return to_training_format(dataset, detect_mapping(dataset.column_names, columns), system_prompt)


# --- shapes -------------------------------------------------------------------------------------


def test_text_rows_stay_plain_text_for_continued_pretraining() -> None:
    out = formatted([{"text": "Lyon is a city in France.", "source": "wiki"}])
    assert out.column_names == ["text"]
    assert out[0]["text"] == "Lyon is a city in France."


def test_question_answer_rows_become_a_user_prompt_and_assistant_completion() -> None:
    rows = [dict(row, id=f"q{i}", difficulty="easy", template="t1") for i, row in enumerate(ROWS)]
    out = formatted(rows)
    assert sorted(out.column_names) == ["completion", "prompt"]  # extra columns (id, difficulty, ...) dropped
    assert out[0]["prompt"] == user_turn(ROWS[0]["question"])
    assert out[0]["completion"] == assistant_turn(ROWS[0]["answer"])


def test_input_output_rows_become_prompt_and_completion() -> None:
    out = formatted([{"input": "Say hi", "output": "hi"}])
    assert out[0]["prompt"] == user_turn("Say hi")
    assert out[0]["completion"] == assistant_turn("hi")


def test_prompt_completion_strings_become_chat_turns() -> None:
    out = formatted([{"prompt": "Say hi", "completion": "hi"}])
    assert out[0]["prompt"] == user_turn("Say hi")
    assert out[0]["completion"] == assistant_turn("hi")


def test_instruction_context_appears_in_the_prompt_only_when_not_empty() -> None:
    out = formatted(
        [
            {"instruction": "Sum the numbers.", "context": "1 and 2", "response": "3"},
            {"instruction": "Say hi.", "context": "", "response": "hi"},
            {"instruction": "Say bye.", "context": None, "response": "bye"},
            {"instruction": "Count.", "context": "   ", "response": "0"},
        ]
    )
    prompts = [row["prompt"][-1]["content"] for row in out]
    assert prompts == ["Sum the numbers.\n\nContext:\n1 and 2", "Say hi.", "Say bye.", "Count."]
    assert out[0]["completion"] == assistant_turn("3")


def test_instruction_response_without_a_context_column() -> None:
    out = formatted([{"instruction": "Say hi.", "response": "hi"}])
    assert out[0]["prompt"] == user_turn("Say hi.")


def test_messages_rows_are_kept_as_chats() -> None:
    chat = [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "List every product."},
        {"role": "assistant", "content": "SELECT name FROM products;"},
    ]
    out = formatted([{"messages": chat, "id": 1}])
    assert out.column_names == ["messages"]
    assert out[0]["messages"] == chat


def test_system_prompt_goes_first_in_every_chat_prompt() -> None:
    out = formatted(ROWS, system_prompt="You write SQL.")
    assert out[1]["prompt"] == [{"role": "system", "content": "You write SQL."}, *user_turn(ROWS[1]["question"])]


def test_explicit_mapping_renames_any_columns() -> None:
    out = formatted([{"q": "Say hi", "a": "hi"}], columns={"prompt": "q", "completion": "a"})
    assert out[0]["prompt"] == user_turn("Say hi")
    assert out[0]["completion"] == assistant_turn("hi")


def test_explicit_mapping_with_missing_columns_lists_expected_and_found() -> None:
    with pytest.raises(UserError) as err:
        detect_mapping(["q", "a", "id"], {"prompt": "question", "completion": "answer"})
    message = str(err.value)
    assert "question" in message
    assert "answer" in message
    assert "q, a, id" in message  # what the data has
    assert "\n" not in message


def test_unknown_shape_lists_the_shapes_it_knows() -> None:
    with pytest.raises(UserError) as err:
        detect_mapping(["foo", "bar"], None)
    message = str(err.value)
    assert "foo, bar" in message
    for shape in ("question+answer", "prompt+completion", "instruction+response", "messages", "text"):
        assert shape in message
    assert "columns" in message


def test_mapping_roles_that_do_not_form_a_shape_are_rejected() -> None:
    with pytest.raises(UserError, match="do not form a shape"):
        detect_mapping(["q", "a"], {"prompt": "q", "response": "a"})


def test_unknown_role_in_mapping_is_rejected() -> None:
    with pytest.raises(UserError, match="unknown column role"):
        detect_mapping(["q", "a"], "question=q,completion=a")


# --- files ----------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows in the file kind `path`'s suffix names (a folder without suffix: `save_to_disk`)."""
    dataset = Dataset.from_list(rows)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        dataset.to_csv(str(path), index=False)
    elif path.suffix == ".parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.csv", "rows.parquet", "saved_dataset"])
def test_every_supported_file_kind_loads_the_same_rows(tmp_path: Path, name: str) -> None:
    loaded = load_source(str(write_rows(tmp_path / name, ROWS)))
    assert isinstance(loaded, Dataset)
    assert loaded.to_list() == ROWS


def test_text_file_loads_one_row_per_line(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n", encoding="utf-8")
    loaded = load_source(str(path))
    assert loaded["text"] == ["first line", "second line"]


def test_csv_with_empty_context_cells_gets_no_context_section(tmp_path: Path) -> None:
    path = tmp_path / "instructions.csv"
    path.write_text("instruction,context,response\nSay hi,,hi\nSum them,1 and 2,3\n", encoding="utf-8")
    loaded = load_source(str(path))
    out = to_training_format(loaded, detect_mapping(loaded.column_names, None))
    assert [row["prompt"][-1]["content"] for row in out] == ["Say hi", "Sum them\n\nContext:\n1 and 2"]


def test_saved_dataset_dict_uses_its_own_test_split(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    DatasetDict({"train": Dataset.from_list(ROWS[:2]), "test": Dataset.from_list(ROWS[2:])}).save_to_disk(str(folder))
    train, test = load_splits(DataArguments(dataset=str(folder)), seed=0)
    assert train.to_list() == ROWS[:2]
    assert test.to_list() == ROWS[2:]


def assert_one_line_user_error(spec: str, *fragments: str) -> None:
    with pytest.raises(UserError) as err:
        load_source(spec)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_is_a_one_line_user_error(tmp_path: Path) -> None:
    assert_one_line_user_error(str(tmp_path / "nope.jsonl"), "not found", "nope.jsonl")


def test_empty_file_is_a_one_line_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").touch()
    assert_one_line_user_error(str(tmp_path / "empty.jsonl"), "empty", "empty.jsonl")


def test_non_utf8_file_is_a_one_line_user_error_with_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    before = '{"question": "O'
    path.write_bytes((before + 'ù est Lyon ?", "answer": "France"}\n').encode("latin-1"))
    assert_one_line_user_error(str(path), "not UTF-8", f"offset {len(before)}", "latin1.jsonl")


def test_malformed_jsonl_is_a_one_line_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n', encoding="utf-8")
    assert_one_line_user_error(str(path), "broken.jsonl:2 is not JSON")


def test_unsupported_file_kind_is_a_one_line_user_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.xlsx"
    path.write_bytes(b"PK\x03\x04")
    assert_one_line_user_error(str(path), "unsupported", ".xlsx")


def test_hub_dataset_id_while_offline_is_a_one_line_user_error() -> None:
    assert_one_line_user_error("someone/some-dataset", "offline", "someone/some-dataset")


# --- splits ---------------------------------------------------------------------------------------


@pytest.fixture
def forty_rows(tmp_path: Path) -> Path:
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)]
    return write_rows(tmp_path / "forty.jsonl", rows)


def test_seeded_split_is_deterministic_and_disjoint(forty_rows: Path) -> None:
    args = DataArguments(dataset=str(forty_rows), test_size=0.25)
    train_a, eval_a = load_splits(args, seed=3)
    train_b, eval_b = load_splits(args, seed=3)
    assert train_a["question"] == train_b["question"]
    assert eval_a["question"] == eval_b["question"]
    assert len(eval_a) == 10
    assert len(train_a) == 30
    assert not set(train_a["question"]) & set(eval_a["question"])


def test_another_seed_gives_another_split(forty_rows: Path) -> None:
    args = DataArguments(dataset=str(forty_rows), test_size=0.25)
    assert load_splits(args, seed=3)[1]["question"] != load_splits(args, seed=4)[1]["question"]


def test_test_size_of_one_or_more_is_a_row_count(forty_rows: Path) -> None:
    train, test = load_splits(DataArguments(dataset=str(forty_rows), test_size=5), seed=0)
    assert (len(train), len(test)) == (35, 5)


def test_eval_dataset_replaces_the_split(forty_rows: Path, tmp_path: Path) -> None:
    held_out = write_rows(tmp_path / "held_out.jsonl", ROWS)
    train, test = load_splits(DataArguments(dataset=str(forty_rows), eval_dataset=str(held_out)), seed=0)
    assert len(train) == 40
    assert test.to_list() == ROWS


def test_max_train_samples_caps_the_training_rows(forty_rows: Path) -> None:
    train, _ = load_splits(DataArguments(dataset=str(forty_rows), test_size=4, max_train_samples=8), seed=0)
    assert len(train) == 8


def test_single_row_cannot_be_split(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "one.jsonl", ROWS[:1])
    with pytest.raises(UserError, match="too few"):
        load_splits(DataArguments(dataset=str(path)), seed=0)


def test_train_and_eval_files_of_different_shapes_are_each_detected(tmp_path: Path, tiny_model: Path) -> None:
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from pipelines.sft.__main__ import build_datasets

    exported = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]  # what an Argilla export holds
    args = DataArguments(dataset=str(write_rows(tmp_path / "export.jsonl", exported)))
    args.eval_dataset = str(write_rows(tmp_path / "held_out.jsonl", ROWS))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    train, held_out = build_datasets(args, tokenizer, SimpleNamespace(seed=0, max_length=64))  # the keys it reads
    assert train[0]["prompt"] == user_turn("q0")
    assert held_out[0]["prompt"] == user_turn(ROWS[0]["question"])
    assert held_out[0]["completion"] == assistant_turn(ROWS[0]["answer"])


# --- prompts that fill max_length ---------------------------------------------------------------


def test_examples_whose_prompt_fills_max_length_are_dropped_and_counted(tiny_model: Path, capsys) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"question": "Hi?", "answer": "Hello."}, {"question": "word " * 200, "answer": "Too long."}]
    out = drop_overlong_prompts(formatted(rows), tokenizer, max_length=100, name="train")
    assert len(out) == 1
    assert out[0]["prompt"] == user_turn("Hi?")
    assert "dropped 1/2" in capsys.readouterr().out


def test_every_prompt_filling_max_length_is_a_user_error(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(UserError, match="raise max_length above"):
        drop_overlong_prompts(formatted(ROWS), tokenizer, max_length=4, name="train")
