"""The README's main command, its Argilla part: the sample data lands in Argilla (three datasets, idempotent on a
second run, the preference pairs as judgements), and what the training stages read back from there (the
instruction pairs for SFT, the very same pairs for the reward model, each export a versioned HF dataset whose
version and counts the demo records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.demo import IMPORTER, SAMPLE_DATASETS, WORKSPACE, export

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_annotation_stage_fills_the_three_datasets_and_the_stages_read_them_back(
    argilla_server, run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import argilla as rg

    from pipelines.data.sources import load_source

    monkeypatch.setenv("ARGILLA_API_URL", argilla_server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    for attempt in ("first", "second"):
        result = run_cli("pipelines.demo", "--stages", "annotation", "--run_dir", tmp_path / attempt)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"Argilla UI: {argilla_server.url}" in result.stdout
    pushes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"dataset"')]
    second_push = {p["dataset"]: p for p in pushes if "created" in p and not isinstance(p["created"], bool)}
    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    for name, kind, data in SAMPLE_DATASETS:
        rows = read_jsonl(REPO / data)
        push = second_push[f"{WORKSPACE}/{name}"]
        assert (push["kind"], push["created"], push["updated"]) == (kind, 0, len(rows))  # the same records again
        dataset = client.datasets(name, workspace=WORKSPACE)
        assert len(list(dataset.records)) == len(rows)
    # the pairs went in as judgements: a suggestion naming the file, and the importer's submitted ranking
    assert second_push[f"{WORKSPACE}/sql-comparisons"]["agent"] == "import: data/textsql/pairs_train.jsonl"
    assert second_push[f"{WORKSPACE}/sql-comparisons"]["responses"] == {IMPORTER: 2000}

    source = read_jsonl(REPO / "data" / "textsql" / "train.jsonl")
    exported = {row["id"]: row for row in load_source(f"argilla://{WORKSPACE}/text-to-sql")}
    assert exported == {r["id"]: {"id": r["id"], "prompt": r["question"], "completion": r["answer"]} for r in source}
    # the reward stage's data: exactly the pushed chosen/rejected pairs, read back from Argilla
    pairs = read_jsonl(REPO / "data" / "textsql" / "pairs_train.jsonl")
    recorded = export("sql-comparisons", tmp_path / "run")
    assert recorded == {
        "source": f"argilla://{WORKSPACE}/sql-comparisons",
        "path": str(tmp_path / "run" / "data" / "sql-comparisons" / "v1"),
        "version": "v1",
        "records": len(pairs),
        "rows": len(pairs),
    }
    back = sorted((r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in load_source(recorded["path"]))
    assert back == sorted((p["id"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs)


def test_unknown_stage_is_one_line_exit_2(run_cli, tmp_path: Path) -> None:
    result = run_cli("pipelines.demo", "--stages", "annotation,rlhf", "--run_dir", tmp_path / "d")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown stage(s) rlhf; choose from annotation, pretrain, sft, reward, ppo, compare, loop"
    ]
    assert not (tmp_path / "d").exists()


def test_precision_reaches_every_stage_the_demo_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--precision fp32` is what the bf16-vs-fp32 comparison of the whole demo rests on: each stage gets it."""
    import pipelines.demo as demo

    commands: list[list[str]] = []
    monkeypatch.setattr(
        demo, "run_cli", lambda module, *args, capture=False: commands.append([module, *map(str, args)])
    )
    stages = "pretrain,sft,reward,ppo,compare"
    demo.main(["--stages", stages, "--precision", "fp32", "--run_dir", str(tmp_path / "d")])
    assert [c[0] for c in commands] == [
        "pipelines.sft",
        "pipelines.sft",
        "pipelines.reward",
        "pipelines.ppo",
        "pipelines.eval",
    ]
    for command in commands:
        assert command[command.index("--precision") + 1] == "fp32", command
