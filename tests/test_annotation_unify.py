"""Unifying several annotators' answers, their agreement and the export rows, on hand-made pulled records
(no server): every expected figure below is computed by hand in the comments, not by the code under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from annotation import schemas
from annotation.export import ExportConfig, build_export, read_pulled, report, write_pulled, write_versioned
from annotation.unify import Answer, PulledRecord, UnifyConfig, agreement, annotator_counts, unify
from pipelines.cli import UserError
from pipelines.runner.config import merge_config

REPO = Path(__file__).resolve().parents[1]


def ranking(*order: int) -> list[dict[str, Any]]:
    """Argilla's ranking value: ranks given per candidate, response_1 first."""
    return [{"value": f"response_{i}", "rank": rank} for i, rank in enumerate(order, start=1)]


def answer(user: str, time: int, status: str = "submitted", **values: Any) -> Answer:
    return Answer(user=user, status=status, values=values, updated_at=f"2026-01-01T00:00:{time:02d}")


def comparison(rid: str, answers: list[Answer]) -> PulledRecord:
    fields = {"prompt": f"prompt {rid}", "response_1": f"{rid} one", "response_2": f"{rid} two"}
    return PulledRecord(id=rid, fields=fields, answers=answers)


# Three annotators a, b, c; 2 candidates per record.
#   r1: all rank [1, 2]; c also writes a better response       -> [1, 2] + correction
#   r2: a, b rank [2, 1], c ranks [1, 2]                       -> [2, 1] (2 votes to 1)
#   r3: a ranks [1, 2] (first), b ranks [2, 1], c absent       -> tie: aside, or a's with tie_rule=first
#   r4: a alone ranks [1, 2]                                   -> [1, 2]
#   r5: c only left a draft                                    -> unanswered
COMPARISONS = [
    comparison(
        "r1",
        [
            answer("a", 1, ranking=ranking(1, 2)),
            answer("b", 2, ranking=ranking(1, 2)),
            answer("c", 3, ranking=ranking(1, 2), corrected_best="r1 better"),
        ],
    ),
    comparison(
        "r2",
        [
            answer("a", 4, ranking=ranking(2, 1)),
            answer("b", 5, ranking=ranking(2, 1)),
            answer("c", 6, ranking=ranking(1, 2)),
        ],
    ),
    comparison("r3", [answer("b", 8, ranking=ranking(2, 1)), answer("a", 7, ranking=ranking(1, 2))]),
    comparison("r4", [answer("a", 9, ranking=ranking(1, 2))]),
    comparison("r5", [answer("c", 10, status="draft", ranking=ranking(2, 1))]),
]


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(row["id"], row["chosen"], row["rejected"]) for row in rows]


def test_rankings_unify_by_majority_and_ties_go_aside() -> None:
    unified = {u.record.id: u for u in unify("comparison", COMPARISONS, UnifyConfig())}
    assert unified["r1"].ranks == [1, 2] and unified["r1"].correction == "r1 better"
    assert unified["r2"].ranks == [2, 1]
    assert unified["r3"].outcome == "disagreement" and "tie on rankings" in unified["r3"].reason
    assert unified["r4"].ranks == [1, 2]
    assert unified["r5"].outcome == "unanswered"
    first = {u.record.id: u for u in unify("comparison", COMPARISONS, UnifyConfig(tie_rule="first"))}
    assert first["r3"].outcome == "accepted" and first["r3"].ranks == [1, 2]  # a answered first


def test_comparison_export_pairs_with_the_correction_ranked_first() -> None:
    rows = build_export("comparison", COMPARISONS, ExportConfig()).rows
    assert pairs(rows) == [
        ("r1", "r1 better", "r1 one"),
        ("r1", "r1 better", "r1 two"),
        ("r1", "r1 one", "r1 two"),
        ("r2", "r2 two", "r2 one"),
        ("r4", "r4 one", "r4 two"),
    ]
    assert rows[0]["prompt"] == "prompt r1"
    best = build_export("comparison", COMPARISONS, ExportConfig(pair_rule="best_vs_rest")).rows
    assert pairs(best)[:2] == [("r1", "r1 better", "r1 one"), ("r1", "r1 better", "r1 two")] and len(best) == 4
    original = build_export("comparison", COMPARISONS, ExportConfig(export_rule="original")).rows
    assert ("r1", "r1 one", "r1 two") in pairs(original) and len(original) == 3


def test_tied_candidates_never_pair() -> None:
    record = comparison("t", [answer("a", 1, ranking=ranking(1, 1))])
    result = build_export("comparison", [record], ExportConfig())
    assert result.rows == [] and result.left_out["ranking all ties"] == 1


def test_ranking_agreement_is_krippendorffs_alpha_by_hand() -> None:
    # Units are (record, candidate) ranks; r4 (one answer) and r5 (a draft) are not pairable.
    # Values by unit: r1c1 {1,1,1} r1c2 {2,2,2} r2c1 {2,2,1} r2c2 {1,1,2} r3c1 {1,2} r3c2 {2,1}.
    # Coincidences (pairs / (m_u - 1)): o11 = 3 + 1 = 4, o22 = 3 + 1 = 4, o12 = o21 = 1 + 1 + 1 + 1 = 4;
    # n1 = n2 = 8, n = 16. With two values ordinal = nominal:
    # alpha = 1 - (n - 1) * (o12 + o21) / (2 * n1 * n2) = 1 - 15 * 8 / 128 = 0.0625.
    figures = agreement("comparison", COMPARISONS)
    assert figures["ranking"]["alpha"] == pytest.approx(0.0625, abs=1e-12)
    assert figures["ranking"]["units"] == 6
    # Pairs of annotators per unit: r1 3+3 agree, r2 1 agree + 2 differ (x2 units), r3 1 differ (x2): 8/14.
    assert figures["ranking"]["pairwise_agreement"] == pytest.approx(8 / 14)
    assert figures["status"]["alpha"] is None  # everyone submitted: a single value, alpha undefined


def test_per_annotator_counts() -> None:
    assert annotator_counts(COMPARISONS) == {
        "a": {"submitted": 4, "discarded": 0, "draft": 0},
        "b": {"submitted": 3, "discarded": 0, "draft": 0},
        "c": {"submitted": 2, "discarded": 0, "draft": 1},
    }


def instruction(rid: str, answers: list[Answer], context: str = "") -> PulledRecord:
    fields = {"instruction": f"do {rid}", "response": f"{rid} as written"} | ({"context": context} if context else {})
    return PulledRecord(id=rid, fields=fields, answers=answers)


#   i1: ratings 4, 5, 3, no correction       -> kept as written, mean 4, median 4
#   i2: ratings 2, 1, 3; a and b write "Fixed." -> the correction, mean 2
#   i3: a, b discard, c submits               -> discarded (2 to 1), left out
#   i4: no answer                             -> unanswered, exported as written (min_submitted 0)
#   i5: a writes "X" first, b writes "Y"      -> tie on corrections: aside, or "X" with tie_rule=first
INSTRUCTIONS = [
    instruction(
        "i1",
        [answer("a", 1, rating=4), answer("b", 2, rating=5), answer("c", 3, rating=3)],
        context="some context",
    ),
    instruction(
        "i2",
        [
            answer("a", 4, rating=2, corrected_response="Fixed."),
            answer("b", 5, rating=1, corrected_response=" Fixed. "),
            answer("c", 6, rating=3, corrected_response=""),
        ],
    ),
    instruction(
        "i3",
        [answer("a", 7, status="discarded"), answer("b", 8, status="discarded"), answer("c", 9, rating=5)],
    ),
    instruction("i4", []),
    instruction(
        "i5",
        [answer("a", 10, rating=4, corrected_response="X"), answer("b", 11, rating=4, corrected_response="Y")],
    ),
]


def test_instruction_export_rule() -> None:
    result = build_export("instruction", INSTRUCTIONS, ExportConfig())
    by_id = {row["id"]: row for row in result.rows}
    assert sorted(by_id) == ["i1", "i2", "i4"]
    assert by_id["i1"] == {"id": "i1", "prompt": "do i1\n\nContext:\nsome context", "completion": "i1 as written"}
    assert by_id["i2"]["completion"] == "Fixed."  # corrected text wins over the original
    assert by_id["i4"]["completion"] == "i4 as written"
    assert result.left_out == {"discarded": 1, "disagreement": 1}
    unified = {u.record.id: u for u in result.unified}
    assert unified["i1"].rating == 4.0 and unified["i2"].rating == 2.0

    first = {r["id"]: r for r in build_export("instruction", INSTRUCTIONS, ExportConfig(tie_rule="first")).rows}
    assert first["i5"]["completion"] == "X"
    assert [r["id"] for r in build_export("instruction", INSTRUCTIONS, ExportConfig(min_submitted=1)).rows] == [
        "i1",
        "i2",
    ]
    only = build_export("instruction", INSTRUCTIONS, ExportConfig(export_rule="corrected_only"))
    assert [r["id"] for r in only.rows] == ["i2"]
    original = build_export("instruction", INSTRUCTIONS, ExportConfig(export_rule="original", tie_rule="first"))
    assert {r["id"]: r["completion"] for r in original.rows}["i2"] == "i2 as written"
    rated = build_export("instruction", INSTRUCTIONS, ExportConfig(min_rating=3.5, tie_rule="first"))
    assert [r["id"] for r in rated.rows] == ["i1", "i5"]  # i2 has 2.0, i4 is unrated


def test_corrections_become_corrected_over_original_pairs() -> None:
    rewritten = instruction("i6", [answer("a", 12, rating=2, corrected_response="i6 fixed")], context="ctx")
    same = instruction("i7", [answer("a", 13, rating=5, corrected_response="i7 as written")])  # not a rewrite
    result = build_export("instruction", [*INSTRUCTIONS, rewritten, same], ExportConfig(correction_pairs=True))
    assert result.rows == [
        {"id": "i2", "prompt": "do i2", "chosen": "Fixed.", "rejected": "i2 as written"},
        {"id": "i6", "prompt": "do i6\n\nContext:\nctx", "chosen": "i6 fixed", "rejected": "i6 as written"},
    ]
    assert result.left_out == {"no correction": 3, "discarded": 1, "disagreement": 1}  # i1, i4, i7
    first = build_export("instruction", INSTRUCTIONS, ExportConfig(correction_pairs=True, tie_rule="first"))
    assert [(r["id"], r["chosen"]) for r in first.rows] == [("i2", "Fixed."), ("i5", "X")]


def test_messages_format_is_a_user_assistant_chat() -> None:
    rows = build_export("instruction", INSTRUCTIONS[:1], ExportConfig(format="messages")).rows
    assert rows[0]["messages"] == [
        {"role": "user", "content": "do i1\n\nContext:\nsome context"},
        {"role": "assistant", "content": "i1 as written"},
    ]


def test_rating_median_and_discard_agreement_by_hand() -> None:
    records = [instruction("m", [answer("a", 1, rating=1), answer("b", 2, rating=2), answer("c", 3, rating=5)])]
    assert unify("instruction", records, UnifyConfig(rating="median"))[0].rating == 2.0
    assert unify("instruction", records, UnifyConfig(rating="mean"))[0].rating == pytest.approx(8 / 3)
    # Submit (s) / discard (d) per record: i1 s,s,s  i2 s,s,s  i3 d,d,s  i5 s,s  (i4: nobody).
    # o_ss = 3 + 3 + 0 + 2 = 8, o_dd = 1, o_sd = o_ds = 1 (from i3); n_s = 9, n_d = 2, n = 11.
    # alpha = 1 - (n - 1) * (o_sd + o_ds) / (2 * n_s * n_d) = 1 - 10 * 2 / 36 = 4/9.
    assert agreement("instruction", INSTRUCTIONS)["status"]["alpha"] == pytest.approx(4 / 9, abs=1e-12)


def text(rid: str, answers: list[Answer]) -> PulledRecord:
    return PulledRecord(id=rid, fields={"content": f"text {rid}"}, metadata={"source": "web"}, answers=answers)


#   t1: keep, keep            -> exported, quality (4 + 5) / 2
#   t2: discard, keep, discard -> discarded by the label
#   t3: keep (first), discard -> tie: aside, or keep with tie_rule=first
TEXTS = [
    text("t1", [answer("a", 1, decision="keep", quality=4), answer("b", 2, decision="keep", quality=5)]),
    text(
        "t2",
        [
            answer("a", 3, decision="discard", quality=1),
            answer("b", 4, decision="keep", quality=3),
            answer("c", 5, decision="discard", quality=2),
        ],
    ),
    text("t3", [answer("a", 6, decision="keep", quality=3), answer("b", 7, decision="discard", quality=3)]),
]


def test_text_keep_discard_vote_and_its_alpha() -> None:
    result = build_export("text", TEXTS, ExportConfig())
    assert result.rows == [{"id": "t1", "text": "text t1"}]
    assert result.unified[0].rating == 4.5
    assert [r["id"] for r in build_export("text", TEXTS, ExportConfig(tie_rule="first")).rows] == ["t1", "t3"]
    # keep (k) / discard (d): t1 k,k  t2 d,k,d  t3 k,d. o_kk = 2, o_dd = 1, o_kd = o_dk = 1 + 1 = 2;
    # n_k = 4, n_d = 3, n = 7: alpha = 1 - 6 * 4 / (2 * 4 * 3) = 0.
    assert agreement("text", TEXTS)["decision"]["alpha"] == pytest.approx(0.0, abs=1e-12)


def test_unknown_rule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="tie_rule: 'coin' is not one of aside, first in test"):
        merge_config(ExportConfig, [({"tie_rule": "coin"}, "in test")])
    with pytest.raises(UserError, match="unknown config key 'pair_rul' in test; did you mean 'pair_rule'"):
        merge_config(ExportConfig, [({"pair_rul": "all_pairs"}, "in test")])


def test_versions_are_written_whole_and_latest_follows(tmp_path: Path) -> None:
    from datasets import load_from_disk

    result = build_export("comparison", COMPARISONS, ExportConfig())
    summary = report("test", "comparison", COMPARISONS, result, ExportConfig())
    aside = [u.disagreement_row() for u in result.unified if u.outcome == "disagreement"]
    first = write_versioned(tmp_path, "prefs", result.rows, summary, aside)
    second = write_versioned(tmp_path, "prefs", result.rows, summary, aside)
    assert (first.name, second.name) == ("v1", "v2")
    assert (tmp_path / "latest").resolve() == second.resolve()
    assert load_from_disk(str(second)).to_list() == result.rows
    assert len((second / "prefs.jsonl").read_text().splitlines()) == 5
    assert (second / "prefs.csv").read_text().splitlines()[0] == "id,prompt,chosen,rejected"
    saved = json.loads((second / "report.json").read_text())
    assert saved["version"] == "v2" and saved["agreement"]["ranking"]["alpha"] == pytest.approx(0.0625)
    card = (second / "README.md").read_text()
    assert card.startswith("# prefs (v2)\n") and "5 rows from 5 records" in card
    assert '- `pair_rule: "all_pairs"`: comparisons: all_pairs | best_vs_rest (ties never pair)' in card
    assert "- `correction_pairs: false`: instruction records: one (corrected ≻ original) preference pair" in card
    assert "| ranking | 0.062 | 0.571 | 6 |" in card and "| c | 2 | 0 | 1 |" in card
    assert [json.loads(line)["id"] for line in (second / "disagreements.jsonl").read_text().splitlines()] == ["r3"]
    with pytest.raises(UserError, match="nothing to export"):
        write_versioned(tmp_path, "prefs", [], summary, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v1", "v2"]  # no staging dir left


def test_export_cli_from_a_pulled_file(tmp_path: Path, run_cli) -> None:
    pulled = tmp_path / "pulled.jsonl"
    write_pulled(pulled, "ws/prefs", "comparison", COMPARISONS)
    assert read_pulled(pulled)[1][0] == COMPARISONS[0]
    out = tmp_path / "out"
    result = run_cli("annotation", "export", "ws/prefs", "--input", pulled, "--output_dir", out, "--tie_rule", "first")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["rows"] == 6  # r3 joins with a's ranking
    shipped = REPO / "configs" / "annotation" / "export.yaml"  # the shipped rules run as is: r3 goes aside
    result = run_cli("annotation", "export", "ws/prefs", "--input", pulled, "--output_dir", out, "--config", shipped)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["rows"] == 5
    bad = run_cli("annotation", "export", "ws/prefs", "--input", pulled, "--output_dir", out, "--pair_rule", "x")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: pair_rule: 'x' is not one of all_pairs, best_vs_rest on the command line"
    ]
    config = tmp_path / "c.yaml"
    config.write_text("export:\n  pairs: all\n")
    bad = run_cli("annotation", "export", "ws/prefs", "--input", pulled, "--output_dir", out, "--config", config)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: unknown config key 'pairs' in {config}; see --help for the valid keys"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["latest", "v1", "v2"]


def test_schema_names_are_what_unify_reads() -> None:
    assert schemas.kind_of_fields(["content"]) == "text"
    assert schemas.kind_of_fields(["instruction", "context", "response"]) == "instruction"
    assert schemas.kind_of_fields(["prompt", "response_1", "response_2"]) == "comparison"
    assert schemas.kind_of_fields(["text"]) is None


def test_rankings_sent_as_an_ordered_list_rank_by_position() -> None:
    from annotation.unify import rank_vector

    names = ["response_1", "response_2", "response_3"]
    assert rank_vector([{"value": "response_3"}, {"value": "response_1"}, {"value": "response_2"}], names) == (2, 3, 1)
    assert rank_vector([{"value": "response_2", "rank": 1}], names) == (2, 1, 2)  # unranked: after every ranked one
