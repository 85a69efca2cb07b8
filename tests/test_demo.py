"""The README's main command, its first part: the sample data lands in Argilla (three datasets, idempotent on
a second run) and the SFT stage's `argilla://` source gives back the sample instruction pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.demo import SAMPLE_DATASETS, SFT_SOURCE, WORKSPACE

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_annotation_stage_fills_the_three_datasets_and_sft_reads_them_back(
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
        assert second_push[f"{WORKSPACE}/{name}"] == {
            "dataset": f"{WORKSPACE}/{name}",
            "kind": kind,
            "created": 0,
            "updated": len(rows),
        }  # the second demo updated the same records
        dataset = client.datasets(name, workspace=WORKSPACE)
        assert len(list(dataset.records)) == len(rows)
    exported = {row["id"]: row for row in load_source(SFT_SOURCE)}
    source = read_jsonl(REPO / "data" / "textsql" / "train.jsonl")
    assert exported == {r["id"]: {"id": r["id"], "prompt": r["question"], "completion": r["answer"]} for r in source}


def test_unknown_stage_is_one_line_exit_2(run_cli, tmp_path: Path) -> None:
    result = run_cli("pipelines.demo", "--stages", "annotation,rlhf", "--run_dir", tmp_path / "d")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown stage(s) rlhf; choose from annotation, sft, reward, ppo, compare"
    ]
    assert not (tmp_path / "d").exists()
