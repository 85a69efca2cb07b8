"""Datasets on a real Argilla server: push (idempotent), users, pull + export from three annotators,
`argilla://` as a training source, workspace isolation and parallel submissions; and the one-line
errors for bad input (most of them need no server: the data is checked before anything is sent)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from annotation.push import build_records, column_mapping
from pipelines.errors import UserError


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def error_line(code: int | str | None, stderr: str, *needles: str) -> str:
    """Failed the way users should see it: exit 2, the one `error:` line last, no traceback."""
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]):
    """`cli(*argv) -> (exit code, stdout, stderr)` of `python -m annotation ...`, run in this process."""
    from annotation.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])

    def run(*argv: Any) -> tuple[int | str | None, str, str]:
        capfd.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exited:
            code = exited.code
        out, err = capfd.readouterr()
        return code, out, err

    return run


# ---------------------------------------------------------------------------- records from data (no server)


def test_sft_shapes_map_to_instruction_records_with_the_rest_as_metadata() -> None:
    rows = Dataset.from_list([{"question": "q1", "answer": "a1", "id": "x1", "difficulty": "easy"}])
    assert build_records(rows, "instruction") == [
        {
            "external_id": "x1",
            "fields": {"instruction": "q1", "response": "a1"},
            "metadata": {"difficulty": "easy"},
            "suggestions": [],
        }
    ]
    mapped = Dataset.from_list([{"q": "q1", "a": "a1", "ctx": "c"}])
    record = build_records(mapped, "instruction", columns="instruction=q,response=a,context=ctx")[0]
    assert record["fields"] == {"instruction": "q1", "context": "c", "response": "a1"}


def test_ids_are_stable_content_hashes_when_the_data_has_none() -> None:
    rows = Dataset.from_list([{"text": "alpha", "source": "web"}, {"text": "beta", "source": "book"}])
    first, again = build_records(rows, "text"), build_records(rows.select([1, 0]), "text")
    assert {r["external_id"] for r in first} == {r["external_id"] for r in again}
    assert first[0]["fields"] == {"content": "alpha"} and first[0]["metadata"] == {"source": "web"}


def test_pairs_are_shown_in_an_order_the_id_fixes_and_scores_become_a_suggestion() -> None:
    rows = Dataset.from_list(
        [
            {
                "id": f"p{i}",
                "prompt": "p",
                "chosen": "good",
                "rejected": "bad",
                "chosen_score": 2.0,
                "rejected_score": 1.0,
            }
            for i in range(16)
        ]
    )
    records = build_records(rows, "comparison")
    positions = {r["metadata"]["source_chosen"] for r in records}
    assert positions == {"response_1", "response_2"}  # chosen is not always first
    for record in records:
        good = record["metadata"]["source_chosen"]
        assert record["fields"][good] == "good"
        assert record["metadata"][good.replace("response", "score")] == 2.0
        ranks = {item["value"]: item["rank"] for item in record["suggestions"][0]["value"]}
        assert ranks[good] == 1 and sorted(ranks.values()) == [1, 2]
    assert build_records(rows, "comparison") == records  # deterministic


def test_ranked_lists_and_numbered_columns() -> None:
    listed = Dataset.from_list([{"question": "q", "responses": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5]}])
    record = build_records(listed, "comparison")[0]
    assert record["fields"] == {"prompt": "q", "response_1": "a", "response_2": "b", "response_3": "c"}
    assert [item["rank"] for item in record["suggestions"][0]["value"]] == [3, 1, 2]
    numbered = Dataset.from_list([{"prompt": "q", "response_1": "a", "response_2": "b", "response_3": None}])
    assert column_mapping("comparison", numbered.column_names, None)["numbered"] == [
        "response_1",
        "response_2",
        "response_3",
    ]
    assert build_records(numbered, "comparison")[0]["fields"] == {"prompt": "q", "response_1": "a", "response_2": "b"}


@pytest.mark.parametrize(
    ("kind", "rows", "needles"),
    [
        (
            "text",
            [{"question": "q", "answer": "a"}],
            ["do not fit the text kind", "found question, answer", "expected text"],
        ),
        ("comparison", [{"prompt": "p", "answer": "a"}], ["found prompt, answer", "chosen+rejected"]),
        ("instruction", [{"instruction": "i", "response": None}], ["row 1 has no response"]),
        (
            "instruction",
            [{"instruction": "i", "response": "r", "id": 1}, {"instruction": "j", "response": "s", "id": 1}],
            ["duplicate ids", "'1' x2"],
        ),
        ("text", [{"text": "x" * 50}], ["over the size limit of 40", "(50)"]),
    ],
)
def test_bad_rows_are_refused_before_anything_is_sent(
    kind: str, rows: list[dict[str, Any]], needles: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        build_records(Dataset.from_list(rows), kind, max_chars=40)
    for needle in needles:
        assert needle in str(caught.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_errors_are_one_line_without_a_server(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGILLA_API_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("ARGILLA_API_KEY", "unused")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = cli("push", "ws/d", "--kind", "text", "--data", empty)
    error_line(code, err, "empty")
    dupes = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    error_line(*cli("push", "ws/d", "--kind", "text", "--data", dupes)[::2], "duplicate ids")
    wrong = write_jsonl(tmp_path / "w.jsonl", [{"q": "x"}])
    error_line(*cli("push", "ws/d", "--kind", "instruction", "--data", wrong)[::2], "found q")
    good = write_jsonl(tmp_path / "g.jsonl", [{"text": "fine"}])
    push = cli("push", "ws/d", "--kind", "text", "--data", good)
    error_line(*push[::2], "no Argilla server answers", "python -m annotation server start")
    error_line(*cli("export", "ws/d")[::2], "no Argilla server answers")
    error_line(*cli("pull", "ws")[::2], "expected workspace/dataset")
