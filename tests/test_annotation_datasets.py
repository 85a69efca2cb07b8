"""Datasets on a real Argilla server: push (idempotent), users, pull + export from three annotators,
`argilla://` as a training source, workspace isolation and parallel submissions; and the one-line
errors for bad input (most of them need no server: the data is checked before anything is sent)."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from annotation.push import _row_dicts, build_records, column_mapping
from pipelines.cli import UserError


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


def test_rows_read_by_column_chunks_are_the_rows_in_order() -> None:
    rows = Dataset.from_list([{"id": i, "text": f"t{i}", "tags": [i, i + 1], "score": i / 2} for i in range(5)])
    assert list(_row_dicts(rows, chunk=2)) == list(rows)  # chunks of 2, 2, 1


def test_ids_are_stable_content_hashes_when_the_data_has_none() -> None:
    rows = Dataset.from_list([{"text": "alpha", "source": "web"}, {"text": "beta", "source": "book"}])
    first, again = build_records(rows, "text"), build_records(rows.select([1, 0]), "text")
    assert {r["external_id"] for r in first} == {r["external_id"] for r in again}
    assert first[0]["fields"] == {"content": "alpha"} and first[0]["metadata"] == {"source": "web"}


def test_pairs_are_shown_in_an_order_the_id_fixes_and_the_judgement_becomes_a_suggestion() -> None:
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
    records = build_records(rows, "comparison", agent="import: pairs.jsonl")
    shown_first = {record["fields"]["response_1"] for record in records}
    assert shown_first == {"good", "bad"}  # chosen is not always first
    for record in records:
        [suggestion] = record["suggestions"]
        good = next(name for name, text in record["fields"].items() if text == "good")
        assert suggestion["agent"] == "import: pairs.jsonl" and "source_chosen" not in record["metadata"]
        ranks = {item["value"]: item["rank"] for item in suggestion["value"]}
        assert ranks[good] == 1 and sorted(ranks.values()) == [1, 2]
        assert record["metadata"][good.replace("response", "score")] == 2.0
        # the suggestion's scores: each candidate's Bradley-Terry probability of being best, e / (1 + e) for chosen
        assert suggestion["score"][int(good[-1]) - 1] == pytest.approx(math.e / (1 + math.e))
    assert build_records(rows, "comparison", agent="import: pairs.jsonl") == records  # deterministic


def test_labels_in_pushed_data_become_suggestions_of_their_questions() -> None:
    def suggested(kind: str, row: dict[str, Any]) -> dict[str, Any]:
        [record] = build_records(Dataset.from_list([row]), kind, agent="import: x")
        assert {s["agent"] for s in record["suggestions"]} <= {"import: x"}
        return {s["question_name"]: s["value"] for s in record["suggestions"]}

    assert suggested("text", {"text": "t", "keep": False, "quality": 2.0}) == {"decision": "discard", "quality": 2}
    assert suggested("text", {"text": "t", "decision": "Keep"}) == {"decision": "keep"}
    instruction = {"question": "q", "answer": "a", "rating": 4, "correction": "b"}
    assert suggested("instruction", instruction) == {"rating": 4, "corrected_response": "b"}
    ranked = {"prompt": "p", "responses": ["x", "y", "z"], "ranks": [2, 1, 2], "better_response": "w"}
    assert suggested("comparison", ranked) == {
        "ranking": [
            {"value": "response_1", "rank": 2},
            {"value": "response_2", "rank": 1},
            {"value": "response_3", "rank": 2},
        ],
        "corrected_best": "w",
    }
    # a label changed later keeps the content-hash id: a re-push updates the record
    first, again = (build_records(Dataset.from_list([{"text": "t", "quality": q}]), "text") for q in (2, 5))
    assert first[0]["external_id"] == again[0]["external_id"]


@pytest.mark.parametrize(
    ("kind", "row", "needle"),
    [
        ("text", {"text": "t", "decision": "maybe"}, "row 1 has decision 'maybe' (keep or discard)"),
        ("instruction", {"question": "q", "answer": "a", "rating": 7}, "row 1 has rating 7 (an integer from 1 to 5)"),
        ("comparison", {"prompt": "p", "responses": ["x", "y"], "ranks": [1, 3]}, "has ranks [1, 3] for 2 responses"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_sent(kind: str, row: dict[str, Any], needle: str) -> None:
    with pytest.raises(UserError, match=re.escape(needle)):
        build_records(Dataset.from_list([row]), kind)


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


# ---------------------------------------------------------------------------- against the real server


@pytest.fixture
def argilla_server(request: pytest.FixtureRequest):
    """The session's embedded server (tests/conftest.py); these tests skip only where it is not defined."""
    try:
        return request.getfixturevalue("argilla_server")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py defines no `argilla_server` fixture yet")


@pytest.fixture
def owner(argilla_server, monkeypatch: pytest.MonkeyPatch):
    """An owner's SDK client; the CLI (in process and in subprocesses) talks to the same server."""
    import argilla as rg

    monkeypatch.setenv("ARGILLA_API_URL", argilla_server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    return rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)


@pytest.fixture
def ws() -> str:
    """A workspace of its own for each test."""
    return f"t{uuid.uuid4().hex[:10]}"


def total_records(owner, address: str) -> int:
    dataset = owner.datasets(address.split("/")[1], workspace=address.split("/")[0])
    response = owner.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1})
    response.raise_for_status()
    return response.json()["total"]


def pushed(cli, *argv: Any) -> dict[str, Any]:
    code, out, err = cli("push", *argv)
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_push_twice_keeps_one_copy_of_each_record(cli, owner, ws: str, tmp_path: Path, write_qa_jsonl) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=20)
    assert pushed(cli, f"{ws}/qa", "--kind", "instruction", "--data", data)["created"] == 20
    again = pushed(cli, f"{ws}/qa", "--data", data)  # the dataset now says its kind
    assert (again["created"], again["updated"]) == (0, 20)
    assert total_records(owner, f"{ws}/qa") == 20
    no_ids = write_jsonl(tmp_path / "t.jsonl", [{"text": f"passage {i}", "source": "web"} for i in range(7)])
    for _ in range(2):
        pushed(cli, f"{ws}/corpus", "--kind", "text", "--data", no_ids)
    assert total_records(owner, f"{ws}/corpus") == 7


def test_a_webhook_gets_the_events_of_pushed_records(cli, owner, ws: str, tmp_path: Path) -> None:
    """The server builds webhook events only when a webhook listens (annotation/server/patches.py): this one does."""
    received: list[dict[str, Any]] = []

    class Listener(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    listener = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    http = owner.api.http_client
    url = f"http://127.0.0.1:{listener.server_port}/hook"
    hook = http.post("/api/v1/webhooks", json={"url": url, "events": ["record.created"]}).json()
    try:
        data = write_jsonl(tmp_path / "t.jsonl", [{"id": f"w{i}", "text": f"passage {i}"} for i in range(3)])
        pushed(cli, f"{ws}/hooked", "--kind", "text", "--data", data)
        deadline = time.monotonic() + 60
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        http.delete(f"/api/v1/webhooks/{hook['id']}")
        listener.shutdown()
    assert sorted((event["type"], event["data"]["external_id"]) for event in received) == [
        ("record.created", f"w{i}") for i in range(3)
    ]


def test_push_errors_against_a_server(cli, owner, ws: str, tmp_path: Path, write_qa_jsonl, monkeypatch) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=4)
    error_line(*cli("push", f"{ws}/missing", "--data", data)[::2], "not found", "python -m annotation create")
    pushed(cli, f"{ws}/qa", "--kind", "instruction", "--data", data)
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a passage"}])
    error_line(
        *cli("push", f"{ws}/qa", "--kind", "text", "--data", texts)[::2], "is a dataset of kind instruction, not text"
    )
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    error_line(
        *cli("push", f"{ws}/qa", "--data", pairs)[::2], "do not fit the instruction kind", "found prompt, chosen"
    )
    error_line(*cli("export", f"{ws}/nope")[::2], "dataset 'nope' not found in workspace", "qa")
    dupes = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    error_line(*cli("push", f"{ws}/never", "--kind", "text", "--data", dupes)[::2], "duplicate ids")
    assert owner.datasets("never", workspace=ws) is None  # nothing half-written: not even the dataset
    monkeypatch.setenv("ARGILLA_API_KEY", "not-the-key")
    error_line(*cli("pull", f"{ws}/qa")[::2], "API key was rejected")


def ranked(*ranks: int) -> list[dict[str, Any]]:
    return [{"value": f"response_{i}", "rank": rank} for i, rank in enumerate(ranks, start=1)]


def test_three_annotators_pull_and_export(cli, owner, ws: str, tmp_path: Path) -> None:
    import argilla as rg

    credentials = tmp_path / "annotators.json"
    code, out, err = cli("users", "add", ws, f"{ws}a", f"{ws}b", f"{ws}c", "--credentials", credentials)
    assert code == 0, err
    saved = json.loads(credentials.read_text())
    assert sorted(saved) == [f"{ws}a", f"{ws}b", f"{ws}c"] and credentials.stat().st_mode & 0o777 == 0o600
    assert not any(entry["password"] in out for entry in saved.values())  # passwords go to the file only
    rows = [
        {"id": f"r{i}", "prompt": f"prompt r{i}", "response_1": f"r{i} one", "response_2": f"r{i} two"}
        for i in (1, 2, 3, 4)
    ]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    pushed(cli, f"{ws}/prefs", "--kind", "comparison", "--data", data, "--min_submitted", "3")
    dataset = owner.datasets("prefs", workspace=ws)
    assert dataset.settings.distribution.min_submitted == 3
    a, b, c = (owner.users(f"{ws}{x}").id for x in "abc")
    # The unit test's scenario (tests/test_annotation_unify.py): r2 is a 2-1 disagreement, r3 a tie.
    answers = {
        "r1": [(a, ranked(1, 2), None), (b, ranked(1, 2), None), (c, ranked(1, 2), "r1 better")],
        "r2": [(a, ranked(2, 1), None), (b, ranked(2, 1), None), (c, ranked(1, 2), None)],
        "r3": [(a, ranked(1, 2), None), (b, ranked(2, 1), None)],
        "r4": [(a, ranked(1, 2), None)],
    }
    records = []
    for row in rows:
        responses = []
        for user, ranking, better in answers[row["id"]]:
            responses.append(rg.Response("ranking", ranking, user_id=user, status="submitted"))
            if better:
                responses.append(rg.Response("corrected_best", better, user_id=user, status="submitted"))
        fields = {k: v for k, v in row.items() if k != "id"}
        records.append(rg.Record(id=row["id"], fields=fields, responses=responses))
    dataset.records.log(records)

    code, out, err = cli("pull", f"{ws}/prefs", "--output", tmp_path / "pulled.jsonl")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["annotators"] == {
        f"{ws}a": {"submitted": 4, "discarded": 0, "draft": 0},
        f"{ws}b": {"submitted": 3, "discarded": 0, "draft": 0},
        f"{ws}c": {"submitted": 2, "discarded": 0, "draft": 0},
    }
    assert summary["agreement"]["ranking"]["alpha"] == pytest.approx(0.0625, abs=1e-12)
    assert summary["outcomes"] == {"accepted": 3, "discarded": 0, "unanswered": 0, "disagreement": 1}

    code, out, err = cli("export", f"{ws}/prefs", "--output_dir", tmp_path / "export")
    assert code == 0, err
    exported = [json.loads(line) for line in (tmp_path / "export" / "v1" / "prefs.jsonl").read_text().splitlines()]
    assert [(r["id"], r["chosen"], r["rejected"]) for r in exported] == [
        ("r1", "r1 better", "r1 one"),
        ("r1", "r1 better", "r1 two"),
        ("r1", "r1 one", "r1 two"),
        ("r2", "r2 two", "r2 one"),
        ("r4", "r4 one", "r4 two"),
    ]
    aside = (tmp_path / "export" / "v1" / "disagreements.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in aside] == ["r3"]


def test_sft_trains_on_an_argilla_source(
    cli, owner, ws: str, tmp_path: Path, run_cli, tiny_model, write_qa_jsonl
) -> None:
    import argilla as rg

    from pipelines.data.sources import load_source

    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=24)
    pushed(cli, f"{ws}/qa", "--kind", "instruction", "--data", data)
    dataset = owner.datasets("qa", workspace=ws)
    me = owner.me.id
    fixed = rg.Response("corrected_response", "Forty-two.", user_id=me, status="submitted")
    rating = rg.Response("rating", 2, user_id=me, status="submitted")
    gone = rg.Response("rating", 1, user_id=me, status="discarded")
    dataset.records.log(
        [
            rg.Record(id="q0", fields={"instruction": "What is 0 plus 0?", "response": "0"}, responses=[fixed, rating]),
            rg.Record(id="q1", fields={"instruction": "What is 1 plus 1?", "response": "2"}, responses=[gone]),
        ]
    )
    rows = {row["id"]: row for row in load_source(f"argilla://{ws}/qa")}
    assert len(rows) == 23 and "q1" not in rows  # discarded: left out
    assert rows["q0"]["completion"] == "Forty-two."  # the correction replaces the response
    assert rows["q2"] == {"id": "q2", "prompt": "What is 2 plus 2?", "completion": "4"}
    out = tmp_path / "run"
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "What is 9 plus 9?", "completion": "18"}] * 2)
    result = run_cli(
        "pipelines.sft",
        *("--config", "configs/sft/tiny.yaml", "--model_name_or_path", tiny_model),
        *("--dataset", f"argilla://{ws}/qa", "--eval_dataset", evals),
        *("--columns", ""),  # tiny.yaml maps question/answer; the Argilla rows are prompt/completion: detect
        *("--output_dir", out, "--eval_generation_samples", 0, "--max_steps", 2),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == {"train_examples": 23, "eval_examples": 2}


def login(url: str, username: str, password: str) -> dict[str, str]:
    """An annotator's own session, the way the UI logs in."""
    import httpx

    response = httpx.post(f"{url}/api/v1/token", data={"username": username, "password": password})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_an_annotator_cannot_read_a_workspace_it_is_not_in(cli, owner, argilla_server, ws: str, tmp_path: Path) -> None:
    import httpx

    data = write_jsonl(tmp_path / "t.jsonl", [{"text": "secret passage"}])
    pushed(cli, f"{ws}/private", "--kind", "text", "--data", data)
    pushed(cli, f"{ws}x/public", "--kind", "text", "--data", data)
    credentials = tmp_path / "c.json"
    assert cli("users", "add", f"{ws}x", f"{ws}out", "--credentials", credentials)[0] == 0
    headers = login(argilla_server.url, f"{ws}out", json.loads(credentials.read_text())[f"{ws}out"]["password"])
    private, public = owner.datasets("private", workspace=ws), owner.datasets("public", workspace=f"{ws}x")
    with httpx.Client(base_url=argilla_server.url, headers=headers) as http:
        assert http.get(f"/api/v1/datasets/{public.id}").status_code == 200  # logged in, in its own workspace
        assert http.get(f"/api/v1/datasets/{private.id}").status_code == 403
        assert http.post(f"/api/v1/me/datasets/{private.id}/records/search", json={}).status_code == 403


def test_two_annotators_submit_25_records_each_in_parallel(
    cli, owner, argilla_server, ws: str, tmp_path: Path, write_qa_jsonl
) -> None:
    import httpx

    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=25)
    pushed(cli, f"{ws}/qa", "--kind", "instruction", "--data", data, "--min_submitted", "2")
    credentials = tmp_path / "c.json"
    assert cli("users", "add", ws, f"{ws}1", f"{ws}2", "--credentials", credentials)[0] == 0
    passwords = json.loads(credentials.read_text())
    dataset = owner.datasets("qa", workspace=ws)
    listed = owner.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 100}).json()
    record_ids = [item["id"] for item in listed["items"]]
    assert len(record_ids) == 25
    clients = [
        httpx.Client(
            base_url=argilla_server.url,
            headers=login(argilla_server.url, name, passwords[name]["password"]),
            timeout=120,
        )
        for name in (f"{ws}1", f"{ws}2")
    ]

    def submit(job: tuple[int, str]) -> int:
        who, record_id = job
        body = {"values": {"rating": {"value": 1 + who * 3}}, "status": "submitted"}
        return clients[who].post(f"/api/v1/records/{record_id}/responses", json=body).status_code

    jobs = [(who, record_id) for record_id in record_ids for who in (0, 1)]
    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(submit, jobs))
    for client in clients:
        client.close()
    assert codes == [201] * 50
    code, out, err = cli("pull", f"{ws}/qa", "--output", tmp_path / "pulled.jsonl")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["annotators"] == {f"{ws}{n}": {"submitted": 25, "discarded": 0, "draft": 0} for n in (1, 2)}
    assert summary["agreement"]["rating"]["pairwise_agreement"] == 0.0  # ratings 1 vs 4 everywhere


def exported_pairs(folder: Path, name: str) -> list[tuple[str, str, str, str]]:
    rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
    return sorted((r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows)


def test_pushed_pairs_stay_judgements_and_export_gives_them_back(
    cli, owner, ws: str, tmp_path: Path, write_qa_jsonl
) -> None:
    pairs = [
        {"id": f"x{i}", "prompt": f"question {i}", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(6)
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    importer, credentials = f"{ws}-import", tmp_path / "c.json"
    argv = ("--kind", "comparison", "--data", data, "--as-responses", importer, "--credentials", credentials)
    first = pushed(cli, f"{ws}/prefs", *argv)
    assert first | {"created": 6} == {
        "dataset": f"{ws}/prefs",
        "kind": "comparison",
        "created": 6,
        "updated": 0,
        "judgements": 6,
        "agent": f"import: {data}",
        "responses": {importer: 6},
    }
    assert pushed(cli, f"{ws}/prefs", *argv)["updated"] == 6  # a re-push updates records and answers: no copies
    dataset = owner.datasets("prefs", workspace=ws)
    listed = owner.api.http_client.get(
        f"/api/v1/datasets/{dataset.id}/records", params={"include": ["suggestions", "responses"], "limit": 50}
    ).json()["items"]
    assert len(listed) == 6 and all(len(item["responses"]) == 1 for item in listed)
    assert {s["agent"] for item in listed for s in item["suggestions"]} == {f"import: {data}"}

    code, _, err = cli("export", f"{ws}/prefs", "--output_dir", tmp_path / "export")
    assert code == 0, err
    assert exported_pairs(tmp_path / "export" / "v1", "prefs") == sorted(tuple(p.values()) for p in pairs)
    report = json.loads((tmp_path / "export" / "v1" / "report.json").read_text())
    assert report["annotators"] == {importer: {"submitted": 6, "discarded": 0, "draft": 0}}  # like any annotator


def test_argilla_source_query_options(cli, owner, ws: str, tmp_path: Path, write_qa_jsonl) -> None:
    from pipelines.data.sources import load_source

    credentials = tmp_path / "c.json"
    ranked = [{"id": f"r{i}", "prompt": f"p{i}", "responses": [f"a{i}", f"b{i}", f"c{i}"]} for i in range(3)]
    for user, ranks in (("first", [1, 2, 3]), ("second", [3, 2, 1])):  # two annotators, opposite rankings
        data = write_jsonl(tmp_path / f"{user}.jsonl", [row | {"ranks": ranks} for row in ranked])
        pushed(cli, f"{ws}/prefs", "--kind", "comparison", "--data", data, "--as-responses", f"{ws}{user}",
               "--credentials", credentials)  # fmt: skip
    with pytest.raises(UserError, match=rf"argilla://{ws}/prefs has no exportable records yet"):
        load_source(f"argilla://{ws}/prefs")  # every record is a 1-1 tie: aside
    first = load_source(f"argilla://{ws}/prefs?tie_rule=first")
    assert sorted((r["id"], r["chosen"], r["rejected"]) for r in first if r["id"] == "r0") == [
        ("r0", "a0", "b0"),
        ("r0", "a0", "c0"),
        ("r0", "b0", "c0"),
    ]  # the earlier answer (the first user's) wins a tie
    best = load_source(f"argilla://{ws}/prefs?tie_rule=first&pair_rule=best_vs_rest")
    assert len(first) == 9 and len(best) == 6
    with pytest.raises(UserError, match=r"pair_rule: 'coin' is not one of all_pairs, best_vs_rest in argilla://"):
        load_source(f"argilla://{ws}/prefs?pair_rule=coin")
    with pytest.raises(UserError, match=r"unknown config key 'tie_rul' in argilla://.*did you mean 'tie_rule'"):
        load_source(f"argilla://{ws}/prefs?tie_rul=first")

    pushed(cli, f"{ws}/qa", "--kind", "instruction", "--data", write_qa_jsonl(tmp_path / "qa.jsonl", n=3))
    messages = {row["id"]: row["messages"] for row in load_source(f"argilla://{ws}/qa?format=messages")}
    assert messages["q1"] == [
        {"role": "user", "content": "What is 1 plus 1?"},
        {"role": "assistant", "content": "2"},
    ]


def test_reward_and_continued_pretraining_train_from_argilla(
    cli, owner, ws: str, tmp_path: Path, run_cli_many, tiny_model
) -> None:
    pairs = [{"id": f"x{i}", "prompt": f"question {i}", "chosen": f"SELECT {i};", "rejected": "no"} for i in range(12)]
    pushed(cli, f"{ws}/prefs", "--kind", "comparison", "--data", write_jsonl(tmp_path / "p.jsonl", pairs),
           "--as-responses", f"{ws}-import", "--credentials", tmp_path / "c.json")  # fmt: skip
    texts = [{"id": f"t{i}", "text": f"The shop sells item {i}. " * 8, "keep": i % 4 != 0} for i in range(12)]
    pushed(cli, f"{ws}/corpus", "--kind", "text", "--data", write_jsonl(tmp_path / "t.jsonl", texts),
           "--as-responses", f"{ws}-import", "--credentials", tmp_path / "c.json")  # fmt: skip
    held_out = write_jsonl(tmp_path / "heldout.jsonl", pairs[:2])
    reward, pretrain = run_cli_many(
        ("pipelines.reward", "--config", "configs/reward/tiny.yaml", "--model_name_or_path", tiny_model,
         "--dataset", f"argilla://{ws}/prefs", "--eval_dataset", held_out, "--max_steps", 2,
         "--output_dir", tmp_path / "rm"),
        ("pipelines.sft", "--config", "configs/sft/pretrain_tiny.yaml", "--model_name_or_path", tiny_model,
         "--dataset", f"argilla://{ws}/corpus", "--eval_dataset", write_jsonl(tmp_path / "e.jsonl", texts[:2]),
         "--packing", "false", "--max_steps", 2, "--output_dir", tmp_path / "cpt"),
    )  # fmt: skip
    assert reward.returncode == 0, reward.stderr[-3000:]
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["data"]["train_pairs"] == 12
    # 3 of the 12 texts were discarded by the imported keep/discard labels: 9 kept
    assert json.loads((tmp_path / "cpt" / "summary.json").read_text())["data"]["train_examples"] == 9
