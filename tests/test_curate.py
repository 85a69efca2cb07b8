"""Data curation (`python -m pipelines.data`): near-dedup finds planted paraphrases, exact dedup normalises,
filters and selection count right, the card says what happened, and bad input is one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from pipelines.cli import UserError
from pipelines.data import dedup, filters, select
from pipelines.data.curate import CurationConfig, DedupStep, FilterStep, SelectStep, StatsStep, curate, main
from pipelines.data.fields import ROW, TOKENS, add_token_counts, load_fast_tokenizer, token_lengths

DISTINCT = [
    "How do I reset my password if I no longer have access to my email?",
    "What is the boiling point of water at the top of Mount Everest?",
    "Write a short poem about autumn leaves falling in the park.",
    "Explain the difference between a list and a tuple in Python.",
    "Which planets in the solar system have rings?",
    "Summarise the main causes of the French Revolution.",
    "Translate 'good morning' into Spanish, German and Italian.",
    "How many customers live in Lyon?",
    "How many customers live in Oslo?",
    "Give me a recipe for a vegetarian lasagna.",
    "Why is the sky blue during the day and red at sunset?",
    "List three exercises that strengthen the lower back.",
    "What does the acronym GDPR stand for?",
    "How long should I boil an egg for a soft yolk?",
    "Compare the fuel efficiency of diesel and petrol cars.",
    "Who painted the ceiling of the Sistine Chapel?",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "Describe how a bill becomes a law in the United States.",
    "What are good houseplants for a room with little light?",
    "How does compound interest work on a savings account?",
    "Write a SQL query that counts orders per customer.",
    "Recommend a novel for someone who enjoyed The Hobbit.",
    "How can I stop my cat from scratching the sofa?",
    "Draft a polite email declining a meeting invitation.",
]
# Paraphrase-level edits of some of them: a changed word, word order, spelling, punctuation, case, a typo.
PLANTED = {
    0: "How can I reset my password if I no longer have access to my email?",
    2: "Write a short poem about the autumn leaves falling in the park",
    3: "Explain the difference between a tuple and a list in Python.",
    5: "Summarize the main causes of the French Revolution.",
    9: "Give me a recipe for vegetarian lasagna, please.",
    10: "why is the sky blue during the day, and red at sunset",
    13: "How long should I boil an egg to get a soft yolk?",
    19: "How does compound interest work on a savings acount?",
    22: "How do I stop my cat from scratching the sofa?",
    23: "Draft a polite e-mail declining a meeting invitation.",
}


def splits_of(rows: list[dict[str, Any]], **more: list[dict[str, Any]]) -> dict[str, Dataset]:
    """Splits as the pipeline holds them: every row numbered as in its source."""
    named = {"train": rows, **more}
    return {name: Dataset.from_list([{ROW: i, **r} for i, r in enumerate(split)]) for name, split in named.items()}


@pytest.fixture(scope="module")
def encoder() -> Any:
    return dedup.load_encoder(None, 128)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_fast_tokenizer(str(tiny_model))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_planted_near_duplicates_are_removed_and_distinct_texts_survive(encoder: Any, precision: str) -> None:
    texts = DISTINCT + list(PLANTED.values())
    kept, removed, report = dedup.near_dedup(
        splits_of([{"text": t} for t in texts]), ["text"], encoder, DedupStep.threshold, 64, "dedup", precision
    )
    assert report["bf16"] == (precision == "bf16")
    assert kept["train"]["text"] == DISTINCT
    by_row = {r["row"]: r for r in removed}
    assert sorted(by_row) == list(range(len(DISTINCT), len(texts)))
    for offset, original in enumerate(PLANTED):
        record = by_row[len(DISTINCT) + offset]
        assert record["kept_row"] == original
        assert record["kept_fields"]["text"] == DISTINCT[original]
        assert 0.95 <= record["similarity"] <= 1.0
        assert record["reason"] == "near duplicate (cosine >= 0.95)"


def test_near_dedup_keeps_the_held_out_twin(encoder: Any) -> None:
    train = [{"text": DISTINCT[1]}, {"text": PLANTED[3]}]
    test = [{"text": DISTINCT[3]}]
    kept, removed, _ = dedup.near_dedup(splits_of(train, test=test), ["text"], encoder, 0.95, 8, "dedup")
    assert kept["test"]["text"] == [DISTINCT[3]]
    assert kept["train"]["text"] == [DISTINCT[1]]
    assert (removed[0]["split"], removed[0]["kept_split"]) == ("train", "test")


def test_clusters_link_chains_to_their_smallest_member() -> None:
    import numpy as np

    roots = dedup.clusters(6, np.array([4, 1, 2]), np.array([5, 2, 4]))
    assert roots.tolist() == [0, 1, 1, 3, 1, 1]


def test_exact_dedup_ignores_case_width_punctuation_and_spacing_in_any_script() -> None:
    rows = [
        "Hello, World!",
        "hello   world",
        "ＨＥＬＬＯ — World…",  # full-width letters, an em dash, an ellipsis
        "hello word",
        "Привет, мир!",
        "привет мир",
        "你好，世界。",
        "你好 世界",
        "नमस्ते दुनिया",
        "नमस्ते, दुनिया!",
    ]
    kept, removed = filters.exact_dedup(splits_of([{"text": t} for t in rows]), ["text"], "filter")
    assert kept["train"]["text"] == ["Hello, World!", "hello word", "Привет, мир!", "你好，世界。", "नमस्ते दुनिया"]
    assert [(r["row"], r["kept_row"]) for r in removed] == [(1, 0), (2, 0), (5, 4), (7, 6), (9, 8)]
    assert filters.normalise("Straße\tÉTÉ") == filters.normalise("STRASSE été")


def test_exact_dedup_keeps_fields_apart() -> None:
    rows = [{"q": "a b", "a": "c"}, {"q": "a", "a": "b c"}, {"q": "A B!", "a": "c."}]
    kept, removed = filters.exact_dedup(splits_of(rows), ["q", "a"], "filter")
    assert kept["train"][ROW] == [0, 1]
    assert [r["row"] for r in removed] == [2]


def test_token_filter_and_empty_rows_counts(tokenizer: Any) -> None:
    texts = ["one", "one two three four five six seven eight nine ten", "  ", "one two three", ""]
    splits = {"train": add_token_counts(splits_of([{"text": t} for t in texts])["train"], tokenizer, ["text"], 1)}
    counts = splits["train"][TOKENS]
    assert counts[0] < counts[3] < counts[1]
    no_empty, empty = filters.drop_empty(splits, ["text"], "filter")
    assert [r["row"] for r in empty] == [2, 4]
    kept, removed = filters.token_bounds(no_empty, ["text"], counts[0] + 1, counts[3], "filter")
    assert kept["train"]["text"] == ["one two three"]
    assert {r["reason"] for r in removed} == {f"under min_tokens {counts[0] + 1}", f"over max_tokens {counts[3]}"}
    assert [r["tokens"] for r in removed] == [counts[0], counts[1]]


def test_fast_token_count_matches_the_tokenizer(tokenizer: Any) -> None:
    texts = ["héllo wörld 你好 <|im_end|> 🙂", "", "  spaces  ", "SELECT name FROM products WHERE price < 50;"]
    expected = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert token_lengths(tokenizer, texts) == expected


def test_tiers_by_bounds_and_by_tertiles() -> None:
    splits = splits_of([{"score": s} for s in [1, 2, 3, 4, 5, 6, None]])
    tiered, counts = select.add_tiers(splits, "score", select.tier_bounds(splits, "score", [3, 5]), "tier")
    assert tiered["train"]["tier"] == ["easy", "easy", "medium", "medium", "hard", "hard", None]
    assert counts["train"] == {"easy": 2, "medium": 2, "hard": 2}
    low, high = select.tier_bounds(splits, "score", None)
    assert 2 < low < high < 5
    with pytest.raises(UserError, match="two increasing numbers"):
        SelectStep(tiers_by="score", tier_bounds=[5, 3])


def test_top_k_by_rating_keeps_source_order_and_leaves_test_whole() -> None:
    rows = [{"text": str(i), "rating": r} for i, r in enumerate([3, 5, None, 4, 1, 5])]
    chosen, report = select.top_k(splits_of(rows, test=rows[:2]), 3, "rating", ascending=False)
    assert chosen["train"]["text"] == ["1", "3", "5"]
    assert report["train"] == {"kept": 3, "cutoff": 4.0}
    assert len(chosen["test"]) == 2
    lowest, _ = select.top_k(splits_of(rows), 2, "rating", ascending=True)
    assert lowest["train"]["text"] == ["0", "4"]
    with pytest.raises(UserError, match="not numeric"):
        select.top_k(splits_of(rows), 2, "text", ascending=False)


def test_top_k_larger_than_the_data_warns_and_keeps_all(capsys: pytest.CaptureFixture[str]) -> None:
    chosen, _ = select.top_k(splits_of([{"rating": 1}, {"rating": 2}]), 10, "rating", ascending=False)
    assert len(chosen["train"]) == 2
    assert "top_k 10 is larger than split 'train' (2 rows): keeping all" in capsys.readouterr().out


def test_pipeline_writes_versions_with_a_card_listing_counts(tmp_path: Path, tiny_model: Path) -> None:
    rows = [
        {"prompt": f"Question number {i} about topic {i * 7}?", "completion": "x" * (i % 5), "rating": i % 4}
        for i in range(12)
    ]
    rows += [{"prompt": "question NUMBER 3 about topic 21", "completion": "xxx", "rating": 0}]  # exact dupe of 3
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = CurationConfig(
        dataset=str(source), tokenizer=str(tiny_model), output_dir=str(tmp_path / "out"), num_proc=1
    )
    steps = [StatsStep(), FilterStep(), SelectStep(top_k=5, by="rating", tiers_by="tokens"), StatsStep()]
    first = curate(config, steps, "test")
    second = curate(config, [FilterStep(exact_dedup=False)], "test")

    assert (first.name, second.name) == ("v1", "v2")
    assert (tmp_path / "out" / "latest").resolve() == second.resolve()
    record = json.loads((first / "curation.json").read_text())
    counts = [(s["step"], s["before"]["train"], s["after"]["train"], s["removed"]) for s in record["steps"]]
    assert counts == [
        ("stats", 13, 13, {}),
        ("filter", 13, 9, {"empty field 'completion'": 3, "exact duplicate": 1}),
        ("select", 9, 5, {}),
        ("stats", 5, 5, {}),
    ]
    card = (first / "README.md").read_text()
    assert (
        "| 2 | filter | " in card and "| train 13 | train 9 | empty field 'completion': 3; exact duplicate: 1" in card
    )
    assert "| 3 | select | " in card and "| train 9 | train 5 |" in card
    assert "![token counts](plots/1-tokens.png)" in card and (first / "plots" / "1-tokens.png").stat().st_size > 0
    assert "rating" in (first / "stats" / "1-stats.md").read_text()
    removed = [json.loads(line) for line in (first / "removed" / "2-filter.jsonl").read_text().splitlines()]
    assert {r["row"] for r in removed} == {0, 5, 10, 12} and removed[-1]["kept_row"] == 3
    saved = load_from_disk(str(first))
    assert isinstance(saved, Dataset) and saved.column_names == ["prompt", "completion", "rating", "tier"]
    assert sorted(saved["rating"], reverse=True)[:3] == [3, 3, 3]


def test_dedup_step_writes_the_review_file(tmp_path: Path) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in DISTINCT + list(PLANTED.values())))
    config = CurationConfig(dataset=str(source), output_dir=str(tmp_path / "out"))
    version = curate(config, [DedupStep()], "test")
    review = [json.loads(line) for line in (version / "removed" / "1-dedup.jsonl").read_text().splitlines()]
    assert [(r["fields"]["text"], r["kept_fields"]["text"]) for r in review] == [
        (twin, DISTINCT[original]) for original, twin in PLANTED.items()
    ]
    assert f"| train {len(DISTINCT) + len(PLANTED)} | train {len(DISTINCT)} |" in (version / "README.md").read_text()


def test_stats_alone_writes_the_report_without_a_dataset_copy(tmp_path: Path, tiny_model: Path) -> None:
    source = tmp_path / "chat.jsonl"
    chats = [[{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, how can I help?"}]]
    source.write_text("".join(json.dumps({"messages": m, "label": "good"}) + "\n" for m in chats * 3))
    config = CurationConfig(dataset=str(source), tokenizer=str(tiny_model), output_dir=str(tmp_path / "out"))
    version = curate(config, [StatsStep()], "test")
    report = json.loads((version / "stats" / "1-stats.json").read_text())
    assert report["tokens"]["train"]["messages"]["rows"] == 3 and report["tokens"]["train"]["messages"]["min"] > 5
    assert report["labels"]["train"]["label"]["counts"] == {"good": 3}
    assert not (version / "dataset_info.json").exists()
    assert "Statistics only" in (version / "README.md").read_text()


def test_pipeline_keeps_splits_of_a_dataset_dict(tmp_path: Path, tiny_model: Path) -> None:
    DatasetDict(
        {"train": Dataset.from_dict({"text": ["a b", "A, b!", "c"]}), "test": Dataset.from_dict({"text": ["c"]})}
    ).save_to_disk(str(tmp_path / "src"))
    config = CurationConfig(dataset=str(tmp_path / "src"), tokenizer=str(tiny_model), output_dir=str(tmp_path / "out"))
    saved = load_from_disk(str(curate(config, [FilterStep()], "test")))
    assert {name: rows["text"] for name, rows in saved.items()} == {"train": ["a b"], "test": ["c"]}


@pytest.mark.parametrize("command", ["stats", "filter", "dedup", "select", "run"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--dataset" in capsys.readouterr().out


BAD_INPUT = {
    "unknown column(s) nope in step stats; the data has question, answer": ("stats", "--fields", "nope"),
    "unknown column(s) stars in step select": ("select", "--top_k", "2", "--by", "stars"),
    "threshold must be a cosine similarity in [0, 1], got 1.5": ("dedup", "--threshold", "1.5"),
    "threshold must be a cosine similarity in [0, 1], got -0.1": ("dedup", "--threshold", "-0.1"),
    "tokenizer not found: 'models/no-such-model' is not a folder": ("stats", "--tokenizer", "models/no-such-model"),
    "embedding model not found: 'no/such/encoder'": ("dedup", "--model", "no/such/encoder"),
    "tier_bounds must be two increasing numbers": ("select", "--tiers_by", "tokens", "--tier_bounds", "9,3"),
    "unknown config key 'treshold' for step dedup in": ("run", "--config", "{config}"),
    "did you mean 'threshold'?": ("run", "--config", "{config}"),
    "num_proc: 'two' is not a valid int on the command line": ("stats", "--num_proc", "two"),
    "unknown config key 'treshold' on the command line; did you mean 'threshold'?": ("dedup", "--treshold", "0.9"),
    "unknown step 'dedupe'": ("dedupe",),
}


@pytest.mark.parametrize("message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    message: str, tmp_path: Path, write_qa_jsonl: Any, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=6)
    out = tmp_path / "out"
    config = tmp_path / "curate.yaml"
    config.write_text(f"dataset: {data}\noutput_dir: {out}\nsteps:\n  - dedup:\n      treshold: 0.9\n")
    command, *flags = (arg.format(config=config) for arg in BAD_INPUT[message])
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--dataset", str(data), "--output_dir", str(out), "--tokenizer", str(tiny_model), *flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists()  # no half-written output


def test_cli_exit_codes_top_k_warns_and_a_bad_threshold_fails(
    tmp_path: Path, run_cli_many: Any, write_qa_jsonl: Any, tiny_model: Path
) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", n=6)
    common = ("--dataset", data, "--tokenizer", tiny_model)
    warned, failed = run_cli_many(
        ("pipelines.data", "select", *common, "--output_dir", tmp_path / "out", "--top_k", "50", "--by", "tokens"),
        ("pipelines.data", "dedup", *common, "--output_dir", tmp_path / "bad", "--threshold", "1.5"),
    )
    assert warned.returncode == 0, warned.stderr[-2000:]
    assert "warning: top_k 50 is larger than split 'train' (6 rows): keeping all of them" in warned.stdout
    assert len(load_from_disk(str(tmp_path / "out" / "v1"))) == 6
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == "error: threshold must be a cosine similarity in [0, 1], got 1.5"
