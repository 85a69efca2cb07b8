"""The closed human-feedback loop (`python -m annotation loop`) on the tiny models, against the session's
embedded Argilla server with two simulated annotators: one full round (records with the reward model's
suggestions, every simulated annotator's answers pulled and unified, pairs in a versioned dataset, the
reward model retrained on them, PPO from the last policy, the figures); a second round killed with
SIGKILL while pushing and again during PPO, then rerun to the end without copies of records or pairs;
and the one-line errors for bad input, the server stopping included."""

from __future__ import annotations

import hashlib
import html
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from annotation.loop import AGENT, TABLE
from annotation.push import best_probabilities, ranks_by_score
from pipelines.eval.report import fmt
from tests.conftest import REPO_ROOT, ArgillaServer, cli_command, cli_env

TINY = "configs/loop/tiny.yaml"
PROMPTS_PER_ROUND = 8  # configs/loop/tiny.yaml
SIMULATED = ["simulated-annotator-1", "simulated-annotator-2"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Failed the way users should see it: exit 2, one `error:` line last, no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def updates(ppo_dir: Path) -> list[dict[str, Any]]:
    """The PPO updates a run logged (its metrics.jsonl also holds held-out evaluations)."""
    return [row for row in read_jsonl(ppo_dir / "metrics.jsonl") if "objective/kl" in row]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


class Loop:
    """`python -m annotation loop` on configs/loop/tiny.yaml for one output dir, against the session server."""

    def __init__(self, server: ArgillaServer, output_dir: Path, reward_model: Path, dataset: str) -> None:
        self.server, self.output_dir, self.dataset = server, output_dir, dataset
        self.env = {**cli_env(), "ARGILLA_API_URL": server.url, "ARGILLA_API_KEY": server.api_key}
        self.flags = [
            *("--config", TINY, "--output_dir", output_dir, "--reward_model", reward_model, "--dataset", dataset),
            *("--annotators_credentials", server.var_dir / "annotators.json"),
        ]

    def command(self, command: str, *flags: Any) -> list[str]:
        return cli_command("annotation", "loop", command, *self.flags, *flags)

    def run(self, command: str = "run", *flags: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(command, *flags), cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=900
        )

    def start(self, log: Path, *flags: Any) -> subprocess.Popen[bytes]:
        """`loop run` in the background, in a session of its own (so a kill reaches the stages it started)."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self.command("run", *flags),
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def owner(self) -> Any:
        import argilla as rg

        return rg.Argilla(api_url=self.server.url, api_key=self.server.api_key)

    def records(self) -> list[dict[str, Any]]:
        """This loop's records on the server, with suggestions and responses."""
        client = self.owner()
        workspace, name = self.dataset.split("/")
        dataset = client.datasets(name, workspace=workspace)
        params = {"include": ["suggestions", "responses"], "limit": 1000}
        items = client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params=params).json()["items"]
        loop = self.output_dir.resolve()
        return [item for item in items if item["metadata"]["loop"] == hashlib.sha1(str(loop).encode()).hexdigest()[:8]]


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(
                f"the loop ended ({process.returncode}) before the point to kill it:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting to kill the loop:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the loop and every stage it started, as a crash or an OOM kill would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


# ---------------------------------------------------------------------------- the round's pieces (no server)


def test_agreement_with_the_suggestion_by_hand() -> None:
    from annotation.loop import suggestion_agreement
    from annotation.unify import Answer, PulledRecord

    def ranked(*ranks: int) -> dict[str, Any]:
        return {"ranking": [{"value": f"response_{i}", "rank": r} for i, r in enumerate(ranks, start=1)]}

    fields = {"prompt": "p", "response_1": "x", "response_2": "y", "response_3": "z"}
    answers = [Answer("a", "submitted", ranked(1, 2, 3)), Answer("b", "submitted", ranked(2, 1, 3))]
    answers += [Answer("c", "submitted", ranked(1, 1, 2)), Answer("d", "draft", ranked(3, 2, 1))]
    record = PulledRecord("r", fields, answers=answers)
    # the model ranks x > y > z. a: same best, 3/3 pairs alike; b: another best, (x,y) reversed, 2/3;
    # c: x tied first (counts as agreeing), (x,y) tied (not counted), 2/2; d is a draft (not counted).
    assert suggestion_agreement([record], {"r": [1.0, 2.0, 3.0]}) == {"answers": 3, "top1": 2 / 3, "pairs": 7 / 8}


def test_simulated_annotators_rank_by_the_verifier_then_closeness_with_seeded_mistakes() -> None:
    from annotation.loop_annotators import Judge

    def verifier(prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0 if "right" in r else 0.0 for r in responses]

    record = {
        "id": "r",
        "fields": {"prompt": "q", "response_1": "wrong b", "response_2": "right", "response_3": "wrong"},
    }
    honest = Judge(verifier, {"q": "wrong"}, error_rate=0.0, disagreement_rate=0.0, seed=0)
    assert [item["rank"] for item in honest.ranking("a", record)] == [3, 1, 2]  # right first, then closest to "wrong"
    mistaken = Judge(verifier, {"q": "wrong"}, error_rate=1.0, disagreement_rate=0.0, seed=0)
    assert [item["rank"] for item in mistaken.ranking("a", record)] == [1, 3, 2]  # reversed
    taste = Judge(verifier, {"q": "wrong"}, error_rate=0.0, disagreement_rate=1.0, seed=0)
    swapped = [item["rank"] for item in taste.ranking("a", record)]
    assert swapped in ([3, 2, 1], [2, 1, 3]) and swapped == [i["rank"] for i in taste.ranking("a", record)]


def test_top_p_keeps_the_smallest_set_reaching_p_at_the_sampling_temperature() -> None:
    import torch

    from annotation.loop_candidates import nucleus

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])  # softmax: 0.644, 0.237, 0.087, 0.032
    kept = nucleus(logits, top_p=0.8, temperature=1.0) > torch.finfo(torch.float32).min
    assert kept.tolist() == [[True, True, False, False]]  # 0.644 < 0.8, then 0.881 reaches it
    flat = nucleus(logits, top_p=0.8, temperature=10.0) > torch.finfo(torch.float32).min
    assert flat.tolist() == [[True, True, True, True]]  # hot: near-uniform (0.29, 0.26, 0.24, 0.21)


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory, run_cli, tiny_model: Path) -> Path:
    """A reward model on the tiny Llama (two steps of configs/reward/tiny.yaml): round 1 starts from it."""
    out = tmp_path_factory.mktemp("loop") / "reward"
    result = run_cli(
        "pipelines.reward",
        *("--config", "configs/reward/tiny.yaml", "--model_name_or_path", tiny_model),
        *("--max_steps", 2, "--output_dir", out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def loop(argilla_server: ArgillaServer, tiny_reward_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Loop:
    """A loop whose round 1 has run to the end (the first test checks it; the second runs round 2)."""
    loop = Loop(
        argilla_server, tmp_path_factory.mktemp("loop") / "out", tiny_reward_model, f"l{uuid.uuid4().hex[:8]}/c"
    )
    result = loop.run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    loop.first_stdout = result.stdout  # type: ignore[attr-defined]
    return loop


def test_one_full_round_with_simulated_annotators(loop: Loop, tiny_reward_model: Path) -> None:
    out, round_dir = loop.output_dir, loop.output_dir / "round-001"
    sampled = json.loads((round_dir / "candidates.json").read_text())
    by_id = {record["id"]: record for record in sampled["records_detail"]}
    records = loop.records()
    # records created with the reward model's ranking and scores as suggestions, the round and policy in metadata
    assert len(records) == sampled["records"] == len(by_id) > 0
    for record in records:
        detail = by_id[record["external_id"]]
        shown = [record["fields"][f"response_{i}"] for i in range(1, 4)]
        assert sorted(shown) == sorted(detail["candidates"]) and len(set(shown)) == 3  # distinct, all shown
        scores = [detail["scores"][detail["candidates"].index(text)] for text in shown]
        assert [record["metadata"][f"score_{i}"] for i in range(1, 4)] == pytest.approx(scores)
        assert record["metadata"] | {"score_1": 0, "score_2": 0, "score_3": 0} == {
            "loop": record["metadata"]["loop"],
            "round": 1,
            "policy": "tiny-llama",
            "reward_model": str(tiny_reward_model),
            "annotators": "simulated",
            **{f"score_{i}": 0 for i in range(1, 4)},
        }
        [suggestion] = record["suggestions"]
        assert suggestion["agent"] == AGENT.format(path=tiny_reward_model, round=1)
        assert [item["rank"] for item in suggestion["value"]] == ranks_by_score(scores)
        assert suggestion["score"] == pytest.approx(best_probabilities(scores))
        # every simulated annotator answered every record (min_submitted 2)
        assert len(record["responses"]) == 2 and {r["status"] for r in record["responses"]} == {"submitted"}

    # every simulated annotator's answers pulled, unified and exported as pairs into preferences/v1
    pulled = read_jsonl(round_dir / "pulled.jsonl")[1:]
    assert {answer["user"] for row in pulled for answer in row["answers"]} == set(SIMULATED)
    report = json.loads((out / "preferences" / "v1" / "report.json").read_text())
    assert report["annotators"] == {name: {"submitted": len(records), "discarded": 0, "draft": 0} for name in SIMULATED}
    assert sum(report["outcomes"].values()) == len(records)
    pairs = read_jsonl(out / "preferences" / "v1" / "pairs.jsonl")
    assert len(pairs) == report["pairs_total"] == report["round_pairs"] > 0
    assert {pair["round"] for pair in pairs} == {1} and {pair["id"] for pair in pairs} <= set(by_id)

    # the reward model continued from round 1's and trained on those pairs; PPO ran from the starting policy
    reward_config = yaml.safe_load((round_dir / "reward.yaml").read_text())
    assert reward_config["model_name_or_path"] == str(tiny_reward_model)
    assert reward_config["dataset"] == str(out / "preferences" / "v1" / "pairs.jsonl")
    reward = json.loads((round_dir / "reward" / "summary.json").read_text())
    assert reward["data"]["train_pairs"] == len(pairs)
    ppo_config = yaml.safe_load((round_dir / "ppo.yaml").read_text())
    assert ppo_config["model_name_or_path"] == "tiny-llama"
    assert ppo_config["reward_model_path"] == str(round_dir / "reward") and ppo_config["reward_function"] is None
    assert [row["step"] for row in updates(round_dir / "ppo")] == [1, 2]

    # the round's figures: round.json, the table, the report
    figures = json.loads((round_dir / "round.json").read_text())
    assert figures["pairs_total"] == len(pairs) and figures["reward_train_pairs"] == len(pairs)
    assert figures["reward_accuracy"] == reward["pairwise"]["accuracy"]
    assert figures["suggestion_agreement"]["answers"] == 2 * len(records)
    assert figures["annotators"] == dict.fromkeys(SIMULATED, len(records))
    comparison = json.loads((round_dir / "eval" / "comparison.json").read_text())
    assert figures["verifier_accuracy_after"] == comparison["metrics"]["after"]["execution_accuracy"]
    table = (out / "rounds.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(title for title, _ in TABLE) + " |" and table[2].startswith("| 1 | ")
    assert json.loads((out / "rounds.json").read_text()) == [figures]
    path = html.escape(json.dumps([0, "reward_accuracy"]))  # the report's loop table, each cell naming its source
    cell = f'data-file="./rounds.json" data-path="{path}">{fmt(figures["reward_accuracy"])}</td>'
    assert cell in (out / "report.html").read_text()
    assert "round 1 done" in loop.first_stdout  # type: ignore[attr-defined]


def test_a_round_killed_while_pushing_and_during_ppo_resumes_without_copies(loop: Loop, tmp_path: Path) -> None:
    out, round_dir = loop.output_dir, loop.output_dir / "round-002"
    first_version = digest(out / "preferences" / "v1")
    first_pairs = read_jsonl(out / "preferences" / "v1" / "pairs.jsonl")

    # 1. killed while pushing: one record per request, killed once the push has begun
    process = loop.start(tmp_path / "push.log", "--push_batch_size", 1)
    wait_for(
        lambda: "Pushing to" in (tmp_path / "push.log").read_text(errors="replace"), process, tmp_path / "push.log"
    )
    kill(process)
    assert (round_dir / "candidates.json").is_file() and not (round_dir / "pushed.json").exists()

    # 2. killed during PPO, once its first update's checkpoint is complete
    process = loop.start(tmp_path / "ppo.log")
    marker = round_dir / "ppo" / "checkpoint-1" / "trainer_state.json"
    wait_for(marker.is_file, process, tmp_path / "ppo.log")
    kill(process)
    assert not (round_dir / "ppo" / "summary.json").exists()
    [first_update] = updates(round_dir / "ppo")

    # 3. the same command again: the round resumes and finishes
    result = loop.run()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 2 done" in result.stdout
    logged = updates(round_dir / "ppo")
    assert [row["step"] for row in logged] == [1, 2] and logged[0] == first_update  # resumed, not redone

    # no copies of records: one per prompt and round, ids made of loop, round and prompt
    records = loop.records()
    ids = [record["external_id"] for record in records]
    per_round = [json.loads((out / f"round-00{n}" / "candidates.json").read_text())["records"] for n in (1, 2)]
    assert len(ids) == len(set(ids)) == sum(per_round)
    assert [sum(r["metadata"]["round"] == n for r in records) for n in (1, 2)] == per_round
    # no copies of pairs: v2 = v1's pairs + round 2's, v1 untouched
    second = read_jsonl(out / "preferences" / "v2" / "pairs.jsonl")
    keys = [(pair["id"], pair["chosen"], pair["rejected"]) for pair in second]
    assert len(keys) == len(set(keys)) and second[: len(first_pairs)] == first_pairs
    assert {pair["round"] for pair in second[len(first_pairs) :]} == {2}
    assert digest(out / "preferences" / "v1") == first_version
    # round 2 continued from round 1's models, on every round's pairs
    reward = json.loads((round_dir / "reward" / "summary.json").read_text())
    assert reward["data"]["train_pairs"] == len(second)
    ppo_config = yaml.safe_load((round_dir / "ppo.yaml").read_text())
    assert ppo_config["model_name_or_path"] == str(out / "round-001" / "ppo")
    assert [row["round"] for row in json.loads((out / "rounds.json").read_text())] == [1, 2]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argilla_server: ArgillaServer, tiny_reward_model: Path, tmp_path: Path
) -> None:
    workspace = f"l{uuid.uuid4().hex[:8]}"
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "a passage"}\n', encoding="utf-8")
    env = {**cli_env(), "ARGILLA_API_URL": argilla_server.url, "ARGILLA_API_KEY": argilla_server.api_key}
    pushed = subprocess.run(
        cli_command("annotation", "push", f"{workspace}/texts", "--kind", "text", "--data", texts),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr[-3000:]

    wrong_kind = Loop(argilla_server, tmp_path / "a", tiny_reward_model, f"{workspace}/texts").run()
    error_line(wrong_kind, f"dataset {workspace}/texts is a text dataset; the loop needs a comparison dataset")
    no_prompts = Loop(argilla_server, tmp_path / "b", tiny_reward_model, f"{workspace}/c").run(
        "run", "--prompts", texts
    )
    error_line(no_prompts, "prompt column(s) question not found; the data has text")
    bad_key = Loop(argilla_server, tmp_path / "c", tiny_reward_model, f"{workspace}/c").run("run", "--candidate", "2")
    error_line(bad_key, "unknown config key 'candidate' on the command line; did you mean 'candidates'?")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_the_server_stopping_mid_round_is_one_line_and_the_round_resumes(
    argilla_server: ArgillaServer, tiny_reward_model: Path, tmp_path: Path
) -> None:
    loop = Loop(argilla_server, tmp_path / "out", tiny_reward_model, f"l{uuid.uuid4().hex[:8]}/c")
    waiting = loop.run("run", "--simulated_annotators", 0)  # people only: sampled, pushed, waiting for them
    assert waiting.returncode == 0, waiting.stderr[-3000:]
    state = json.loads(waiting.stdout.strip().splitlines()[-1])
    assert state["waiting"] and state["complete"] == 0 and state["records"] > 0
    before = digest(loop.output_dir)
    stopped = argilla_server.run_server("stop")
    assert stopped.returncode == 0, stopped.stderr
    try:
        error_line(loop.run("run", "--simulated_annotators", 0), "no Argilla server answers", "server start")
        error_line(loop.run("status"), "no Argilla server answers")
        assert digest(loop.output_dir) == before  # nothing written, nothing lost
    finally:
        started = argilla_server.start()
        assert started.returncode == 0, started.stderr
    again = loop.run("status")
    assert again.returncode == 0, again.stderr[-3000:]
    status = json.loads(again.stdout)
    assert status["round"] == 1 and status["steps"]["pushed"] and not status["steps"]["collected"]
    assert status["records"] == state["records"] and status["annotators"] == {}
    assert digest(loop.output_dir) == before  # the round picks up where it was: nothing sampled or pushed again
