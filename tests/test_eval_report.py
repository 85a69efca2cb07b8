"""The evaluation report: a base-vs-SFT comparison on the tiny model (SFT and a reward model trained from the
shipped tiny configs), `compare` judging it (win rates by the verifier and the reward model, token metrics),
and the HTML report opened in headless Chromium, every number on the page checked against the JSON it names.
The screenshot lands in test-artifacts/eval_report.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import UserError
from pipelines.eval import harness
from pipelines.eval.__main__ import main as eval_main
from pipelines.eval.compare import win_rates
from pipelines.eval.report import build_report
from pipelines.tasks.textsql.evaluate import evaluate_predictions
from tests.browser import artifact, launch_chromium

REPO = Path(__file__).resolve().parents[1]
PROMPTS = 8


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def head_jsonl(source: Path, target: Path, n: int) -> Path:
    target.write_text("".join(line + "\n" for line in source.read_text().splitlines()[:n]), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, run_cli_many) -> Path:
    """runs/<tmp>/{sft,reward,comparison} as a demo run lays them out, with small held-out sets for speed."""
    root = tmp_path_factory.mktemp("eval-report")
    run = root / "run"
    data = REPO / "data" / "textsql"
    eval_rows = head_jsonl(data / "test.jsonl", root / "test.jsonl", 16)
    eval_pairs = head_jsonl(data / "pairs_test.jsonl", root / "pairs_test.jsonl", 16)
    quick = ("--report_to", "none", "--save_strategy", "no")
    sft, reward = run_cli_many(
        ("pipelines.sft", "--config", "configs/sft/tiny.yaml", "--output_dir", run / "sft", "--eval_dataset",
         eval_rows, "--eval_generation_samples", 0, *quick),
        ("pipelines.reward", "--config", "configs/reward/tiny.yaml", "--output_dir", run / "reward",
         "--eval_dataset", eval_pairs, "--max_steps", 4, *quick),
    )  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert reward.returncode == 0, reward.stderr[-3000:]
    eval_main(  # in this process: its imports are already paid for
        ["compare", "--models", str(tiny_model), str(run / "sft"), "--names", "base", "sft",
         "--reward_model", str(run / "reward"), "--data", str(eval_rows), "--samples", str(PROMPTS),
         "--max_new_tokens", "16", "--batch_size", "8", "--output_dir", str(run / "comparison")]
    )  # fmt: skip
    return run


@pytest.fixture(scope="module")
def comparison(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "comparison" / "comparison.json").read_text())


def test_win_rates_count_each_later_model_against_each_earlier_one_with_ties_as_half() -> None:
    rates = win_rates({"base": [0, 1, 0, 0], "sft": [1, 1, 0, 1], "ppo": [1, 0, 0, 1]})
    assert list(rates) == ["sft vs base", "ppo vs base", "ppo vs sft"]
    assert (rates["sft vs base"]["wins"], rates["sft vs base"]["ties"], rates["sft vs base"]["losses"]) == (2, 2, 0)
    assert rates["sft vs base"]["win_rate"] == pytest.approx(0.75)
    assert rates["ppo vs sft"]["win_rate"] == pytest.approx(3 / 8)  # one loss, three ties


def test_compare_judges_every_prompt_and_derives_win_rates_from_those_verdicts(comparison: dict[str, Any]) -> None:
    assert comparison["prompts"] == PROMPTS
    verdicts = comparison["per_prompt"]
    for judge, key in (("verifier", "correct"), ("reward_model", "reward")):
        rate = comparison["win_rates"][judge]["sft vs base"]
        sft, base = ([float(v) for v in verdicts[name][key]] for name in ("sft", "base"))
        assert len(sft) == len(base) == PROMPTS
        assert rate["wins"] == sum(s > b for s, b in zip(sft, base, strict=True))
        assert rate["losses"] == sum(s < b for s, b in zip(sft, base, strict=True))
        assert rate["wins"] + rate["ties"] + rate["losses"] == PROMPTS
    for name, metrics in comparison["metrics"].items():
        assert metrics["execution_accuracy"] == pytest.approx(sum(verdicts[name]["correct"]) / PROMPTS)
        assert metrics["reward_mean"] == pytest.approx(sum(verdicts[name]["reward"]) / PROMPTS)
        failures = sum(entry["count"] for entry in comparison["errors"][name].values())
        assert failures == PROMPTS - sum(verdicts[name]["correct"])


def test_sft_fits_the_gold_answers_better_than_its_random_base(comparison: dict[str, Any]) -> None:
    base, sft = comparison["metrics"]["base"], comparison["metrics"]["sft"]
    assert sft["perplexity"] < base["perplexity"] / 10  # a random 49k-vocabulary model is near 49k
    assert sft["token_accuracy"] > base["token_accuracy"]


def test_generations_record_each_response_length_and_eos(run_dir: Path, comparison: dict[str, Any]) -> None:
    rows = read_jsonl(run_dir / "comparison" / "generations.jsonl")
    assert len(rows) == PROMPTS
    for name, metrics in comparison["metrics"].items():
        lengths = [row["new_tokens"][name] for row in rows]
        assert all(0 <= n <= 16 for n in lengths)
        assert metrics["mean_new_tokens"] == pytest.approx(sum(lengths) / PROMPTS)
        assert metrics["eos_rate"] == pytest.approx(sum(row["hit_eos"][name] for row in rows) / PROMPTS)


def _json_value(run_dir: Path, file: str, path: list[Any]) -> Any:
    value = json.loads((run_dir / file).read_text())  # an absolute `file` stays as it is
    for key in path:
        value = value[key]
    return value


def _shows(text: str, value: Any) -> bool:
    if isinstance(value, int):  # bool included
        return text == str(value)
    shown = float(text)
    return math.isclose(shown, value, rel_tol=5e-4, abs_tol=5.01e-4)  # 3 decimals: off by up to half the last one


def test_report_opens_offline_in_chromium_and_shows_the_numbers_of_the_json_files(run_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert (run_dir / "comparison" / "report.html").is_file()  # compare ends by writing its own report
    eval_main(["report", "--run_dir", str(run_dir)])
    page_path = run_dir / "report.html"
    assert page_path.is_file()
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            cells = page.eval_on_selector_all(
                "[data-path]",
                "els => els.map(e => [e.dataset.file, JSON.parse(e.dataset.path), e.textContent.trim()])",
            )
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            page.screenshot(path=artifact("eval_report.png"), full_page=True)
        finally:
            browser.close()

    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from a network
    assert headings[0].startswith("Model comparison") and any("SFT run" in h for h in headings), headings
    assert images and all(width > 0 for _, width in images), images  # curves, histograms, reward_eval.png
    wrong = [(f, p, t) for f, p, t in cells if not _shows(t, _json_value(run_dir, f, p))]
    assert not wrong, wrong[:5]

    shown = {(f, tuple(p)) for f, p, _ in cells}
    comparison = json.loads((run_dir / "comparison" / "comparison.json").read_text())
    for name, metrics in comparison["metrics"].items():  # the whole metric table, every model
        assert {("comparison/comparison.json", ("metrics", name, key)) for key in metrics} <= shown
    for judge in ("verifier", "reward_model"):
        assert ("comparison/comparison.json", ("win_rates", judge, "sft vs base", "win_rate")) in shown
    summary = json.loads((run_dir / "sft" / "summary.json").read_text())
    for key in ("eval_loss", "eval_perplexity", "eval_mean_token_accuracy"):
        assert ("sft/summary.json", ("eval", key)) in shown and key in summary["eval"]
    assert ("sft/summary.json", ("train", "train_loss")) in shown
    assert ("reward/summary.json", ("pairwise", "accuracy")) in shown


def test_error_analysis_groups_failures_by_category_with_their_examples(tmp_path: Path) -> None:
    rows = read_jsonl(REPO / "data" / "textsql" / "test.jsonl")[:4]
    predictions = [
        rows[0]["answer"],
        rows[1]["answer"].replace("78", "79"),  # a wrong literal
        "SELECT p.name FROM order_items oi JOIN products p ON WHERE",  # does not run
        rows[3]["answer"].rstrip(";") + " AND AND AND",  # cut off at the token limit
    ]
    report = evaluate_predictions(rows, predictions, no_eos=[False, False, False, True])
    data = {
        "prompts": 4,
        "metrics": {"model": {"execution_accuracy": report["execution_accuracy"]}},
        "errors": {"model": report["errors"]},
        "per_prompt": {"model": {"correct": [p["correct"] for p in report["per_prediction"]]}},
    }
    (tmp_path / "comparison.json").write_text(json.dumps(data))
    page = build_report(tmp_path)
    failed = {c: e for c, e in report["errors"].items() if e["count"]}
    assert set(failed) == {"wrong_condition", "syntax_error", "runaway_generation"}
    for category, entry in failed.items():
        assert f"<b>{category}</b>" in page
        assert (
            f'data-path="[&quot;errors&quot;, &quot;model&quot;, &quot;{category}&quot;, &quot;count&quot;]">1<' in page
        )
        assert entry["examples"][0]["question"] in page
    assert "<b>wrong_column</b>" not in page  # categories nobody fell into stay out of the way


def test_report_of_a_folder_without_runs_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        eval_main(["report", "--run_dir", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nothing to report") and "\n" not in err


def test_lm_eval_tasks_without_the_harness_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"arc_easy,hellaswag needs lm-evaluation-harness.*pip install lm-eval"):
        harness.check_available(["arc_easy", "hellaswag"])


def test_lm_eval_tasks_offline_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: object())  # as if installed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set"):
        harness.check_available(["arc_easy"])


def test_compare_with_lm_eval_tasks_stops_before_loading_any_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as stop:
        eval_main(["compare", "--models", "no-such-model", "--output_dir", str(out), "--lm_eval_tasks", "arc_easy"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lm_eval_tasks arc_easy") and "\n" not in err
    assert not out.exists()
