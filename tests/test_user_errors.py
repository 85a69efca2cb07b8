"""Every kind of mistake a user can make, against every CLI it applies to: each exits 2 with one stderr line that
says what to fix, before any model loads, and leaves no output behind (issue #18).

The CLIs' `main(argv)` run in this process (the same functions `python -m ...` runs; imports are paid once);
`test_real_cli_error_is_one_line_in_the_terminal` checks the same on a real process, where warnings show.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from annotation.cli import main as annotation_main
from annotation.export import main as export_main
from pipelines.data.curate import main as data_main
from pipelines.eval.__main__ import main as eval_main
from pipelines.generate import main as generate_main
from pipelines.ppo.__main__ import main as ppo_main
from pipelines.reward.__main__ import main as reward_main
from pipelines.sft.__main__ import main as sft_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MAINS: dict[str, Callable[[list[str]], Any]] = {
    "sft": sft_main,
    "reward": reward_main,
    "ppo": ppo_main,
    "generate": generate_main,
    "eval": eval_main,
    "data": data_main,
    "export": export_main,
    "annotation": lambda argv: sys.exit(annotation_main(argv)),  # as `python -m annotation` does
}


def _unwritable_folder() -> Path:
    """A folder nobody may create files in, root included (sysfs), or else a read-only one made for the test."""
    sysfs = Path("/sys")
    try:
        handle, probe = tempfile.mkstemp(dir=sysfs)
    except OSError:
        return sysfs
    os.close(handle)
    os.unlink(probe)
    pytest.skip("no folder here refuses writes to this user")


def single_error_line(stderr: str) -> str:
    """stderr holds exactly one line, the `error:` line: no traceback, warning or progress bar before it."""
    lines = [line for chunk in stderr.splitlines() for line in chunk.split("\r") if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Callable[..., tuple[Any, str]]:
    """`run(cli, argv) -> (exit code, stderr)` of a CLI's main, in this process, from the repo root."""
    monkeypatch.chdir(REPO)

    def call(cli: str, argv: list[Any]) -> tuple[Any, str]:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            MAINS[cli]([str(a) for a in argv])
        return exited.value.code, capfd.readouterr().err

    return call


def assert_user_error(result: tuple[Any, str], fragments: tuple[str, ...], absent: list[Path]) -> str:
    code, stderr = result
    assert code == 2, stderr[-3000:]
    message = single_error_line(stderr)
    for fragment in fragments:
        assert fragment in message, message
    for path in absent:
        assert not path.exists(), f"{path} was left behind"
    return message


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


QA = [{"question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(8)]
PAIRS = [{"prompt": f"What is {i} plus 1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(8)]


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-output classifier on the tiny model's config and tokenizer (scoring CLIs accept it; untrained)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("classifier")
    config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture
def cli_args(tmp_path: Path, tiny_model: Path, tiny_classifier: Path) -> Callable[..., list[Any]]:
    """`cli_args(cli, out, data=None)`: a runnable command line of `cli` writing to `out`, on its own small data
    (or on `data`); a test appends the one flag it gets wrong."""
    qa, pairs = jsonl(tmp_path / "qa.jsonl", QA), jsonl(tmp_path / "pairs.jsonl", PAIRS)

    def args(cli: str, out: Path, data: Path | None = None) -> list[Any]:
        stage = ["--model_name_or_path", tiny_model, "--output_dir", out, "--max_steps", 2]
        return {
            "sft": ["--config", CONFIGS / "sft/tiny.yaml", *stage, "--dataset", data or qa, "--eval_dataset", qa],
            "reward": ["--config", CONFIGS / "reward/tiny.yaml", *stage, "--dataset", data or pairs],
            "ppo": ["--config", CONFIGS / "ppo/tiny.yaml", *stage, "--dataset", data or qa, "--eval_dataset", qa],
            "generate": ["--model", tiny_model, "--input", data or qa, "--output", out],
            "eval": ["compare", "--models", tiny_model, "--data", data or qa, "--samples", 2, "--output_dir", out],
            "score": ["score", "--model", tiny_classifier, "--input", data or pairs, "--output", out],
            "data": ["stats", "--dataset", data or qa, "--tokenizer", tiny_model, "--output_dir", out],
        }[cli]

    return args


def main_of(cli: str) -> str:
    return "reward" if cli == "score" else cli


STAGES = ("sft", "reward", "ppo")
FILE_OUTPUTS = ("generate", "score")
ALL = (*STAGES, "generate", "eval", "score", "data")


# ---------------------------------------------------------------------------- numbers in range

OUT_OF_RANGE = [
    ("sft", "--per_device_train_batch_size", "-1", "per_device_train_batch_size must be > 0"),
    ("sft", "--max_steps", "0", "max_steps must be > 0 (or -1"),
    ("sft", "--max_length", "0", "max_length must be > 0"),
    ("sft", "--eval_generation_samples", "-1", "eval_generation_samples must be >= 0"),
    ("sft", "--learning_rate", "-0.1", "learning_rate must be >= 0"),
    ("reward", "--max_steps", "0", "max_steps must be > 0"),
    ("reward", "--per_device_eval_batch_size", "0", "per_device_eval_batch_size must be > 0"),
    ("ppo", "--rollout_batch_size", "0", "rollout_batch_size must be > 0"),
    ("ppo", "--per_device_train_batch_size", "0", "per_device_train_batch_size must be > 0"),
    ("ppo", "--ppo_epochs", "0", "ppo_epochs must be > 0"),
    ("ppo", "--gamma", "1.5", "gamma must be between 0 and 1"),
    ("generate", "--max_new_tokens", "0", "--max_new_tokens must be > 0"),
    ("generate", "--batch_size", "-4", "--batch_size must be > 0"),
    ("eval", "--samples", "0", "--samples must be > 0"),
    ("eval", "--batch_size", "0", "--batch_size must be > 0"),
    ("score", "--max_length", "0", "--max_length must be > 0"),
    ("score", "--batch_size", "0", "--batch_size must be > 0"),
    ("data", "--num_proc", "0", "num_proc must be > 0"),
    ("data", "--max_length", "-5", "max_length must be > 0"),
]


@pytest.mark.parametrize(
    ("cli", "flag", "value", "says"), OUT_OF_RANGE, ids=[f"{c}{f}={v}" for c, f, v, _ in OUT_OF_RANGE]
)
def test_a_number_out_of_range_is_refused(run, cli_args, tmp_path: Path, cli: str, flag: str, value: str, says: str):
    out = tmp_path / "out"
    assert_user_error(run(main_of(cli), [*cli_args(cli, out), flag, value]), (says, value), [out])


# ---------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("cli", ALL)
def test_an_output_that_is_a_file_is_refused(run, cli_args, tmp_path: Path, cli: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("keep me\n", encoding="utf-8")
    if cli in FILE_OUTPUTS:  # their output is a file: a folder is the wrong kind there
        taken.unlink()
        taken.mkdir()
    message = assert_user_error(run(main_of(cli), cli_args(cli, taken)), (str(taken),), [])
    assert "is a folder" in message if cli in FILE_OUTPUTS else "is a file, not a folder" in message
    assert taken.is_dir() if cli in FILE_OUTPUTS else taken.read_text(encoding="utf-8") == "keep me\n"


@pytest.mark.parametrize("cli", ALL)
def test_an_output_under_a_file_is_refused(run, cli_args, tmp_path: Path, cli: str) -> None:
    (tmp_path / "a_file").write_text("x\n", encoding="utf-8")
    out = tmp_path / "a_file" / "out"
    assert_user_error(run(main_of(cli), cli_args(cli, out)), ("a_file", "is a file"), [])


@pytest.mark.parametrize("cli", ALL)
def test_an_output_where_nothing_may_be_written_is_refused(run, cli_args, cli: str) -> None:
    out = _unwritable_folder() / f"out-{uuid.uuid4().hex[:8]}"
    assert_user_error(run(main_of(cli), cli_args(cli, out)), ("cannot write in", "choose another"), [out])


@pytest.mark.parametrize("cli", FILE_OUTPUTS)
def test_an_output_file_in_a_missing_folder_is_refused(run, cli_args, tmp_path: Path, cli: str) -> None:
    out = tmp_path / "missing" / "answers.jsonl"
    says = ("does not exist", "create the folder")
    assert_user_error(run(main_of(cli), cli_args(cli, out)), says, [out.parent])


def test_an_output_file_whose_folder_the_writer_makes_is_accepted_where_it_can_be_made(tmp_path: Path) -> None:
    from pipelines.cli import UserError, check_output_file

    out = tmp_path / "a" / "b" / "pulled.jsonl"
    assert check_output_file(out, make_folder=True) == out
    assert not (tmp_path / "a").exists()  # checked, not made: nothing written before the work
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output_file(tmp_path / "file" / "b" / "pulled.jsonl", make_folder=True)


# ---------------------------------------------------------------------------- model kinds


MODEL_KINDS = [
    ("score", ["--model", "tiny-llama"]),
    ("ppo", ["--reward_model_path", "tiny-llama", "--reward_function", "null"]),
    ("eval", ["--reward_model", "tiny-llama"]),
]


@pytest.mark.parametrize(("cli", "flags"), MODEL_KINDS, ids=[c for c, _ in MODEL_KINDS])
def test_a_causal_lm_as_a_scoring_model_is_refused(run, cli_args, tmp_path: Path, cli: str, flags: list[str]):
    out = tmp_path / "out"
    says = ("LlamaForCausalLM", "not a trained one-output classifier", "python -m pipelines.reward")
    assert_user_error(run(main_of(cli), [*cli_args(cli, out), *flags]), says, [out])


# ---------------------------------------------------------------------------- rows without text

QA_NULL = [QA[0], {"question": None, "answer": "2"}, *QA[2:]]
QA_BLANK = [*QA[:2], {"question": "What is 2 plus 1?", "answer": "  "}, *QA[3:]]
QA_NUMBER = [{"question": q["question"], "answer": int(q["answer"])} for q in QA]
PAIRS_NULL = [*PAIRS[:3], {"prompt": "p", "chosen": None, "rejected": "x"}, *PAIRS[4:]]
NO_TEXT = [
    ("sft", QA_NULL, ("'question'", "row 2", "fill them in")),
    ("sft", QA_BLANK, ("'answer'", "row 3")),
    ("sft", QA_NUMBER, ("'answer'", "holds int64 values, not text", "write them as strings")),
    ("ppo", QA_NULL, ("'question'", "row 2")),
    ("eval", QA_NULL, ("'question'", "row 2")),
    ("eval", QA_NUMBER, ("'answer'", "not text")),
    ("generate", QA_NULL, ("'question'", "row 2")),
    ("reward", PAIRS_NULL, ("'chosen'", "row 4")),
    ("score", [{"prompt": "q", "response": None}, {"prompt": "q", "response": "a"}], ("'response'", "row 1")),
]


@pytest.mark.parametrize(("cli", "rows", "says"), NO_TEXT, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(NO_TEXT)])
def test_rows_without_text_are_refused_with_their_numbers(run, cli_args, tmp_path: Path, cli, rows, says) -> None:
    data, out = jsonl(tmp_path / "rows.jsonl", rows), tmp_path / "out"
    assert_user_error(run(main_of(cli), cli_args(cli, out, data)), (str(data), *says), [out])


# ---------------------------------------------------------------------------- JSONL a user wrote


def broken_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, '{"question": "What is 9 plus 1?", "answer": ')  # line 4: cut short
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("cli", ALL)
def test_a_broken_jsonl_line_is_named(run, cli_args, tmp_path: Path, cli: str) -> None:
    data = broken_jsonl(tmp_path / "rows.jsonl", PAIRS if cli in ("reward", "score") else QA)
    out = tmp_path / "out"
    says = (f"{data}:4 is not JSON", "fix or delete that line")
    assert_user_error(run(main_of(cli), cli_args(cli, out, data)), says, [out])


def test_a_ranking_with_a_rank_missing_is_refused(run, cli_args, tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "responses": ["a", "b", "c"], "ranks": [1, 2, 3] if i else [1, 2]} for i in range(8)]
    data, out = jsonl(tmp_path / "rankings.jsonl", rows), tmp_path / "out"
    says = ("3 responses but 2 ranks", "one rank per response")
    assert_user_error(run("reward", cli_args("reward", out, data)), says, [out])


def test_a_broken_line_of_a_pulled_file_is_named(run, tmp_path: Path) -> None:
    pulled = tmp_path / "pulled.jsonl"
    pulled.write_text('{"dataset": "w/d", "kind": "text", "records": 1}\n{"id": "1", "fields": \n', encoding="utf-8")
    out = tmp_path / "out"
    says = (f"{pulled}:2 is not JSON",)
    assert_user_error(run("export", ["w/d", "--input", pulled, "--output_dir", out]), says, [out])


@pytest.mark.parametrize("cli", ALL)
def test_a_jsonl_of_blank_lines_says_it_has_no_rows(run, cli_args, tmp_path: Path, cli: str) -> None:
    data, out = tmp_path / "blank.jsonl", tmp_path / "out"
    data.write_text("  \n\n\t\n", encoding="utf-8")
    assert_user_error(run(main_of(cli), cli_args(cli, out, data)), (str(data), "has no rows"), [out])


@pytest.mark.parametrize("cli", ("sft", "generate", "eval"))
def test_a_field_of_two_types_is_named_by_line(run, cli_args, tmp_path: Path, cli: str) -> None:
    data = jsonl(tmp_path / "mixed.jsonl", [*QA[:2], {"question": 7, "answer": "8"}, *QA[3:]])
    out = tmp_path / "out"
    says = (f"{data}:3", "'question' is a number here but a string on line 1")
    assert_user_error(run(main_of(cli), cli_args(cli, out, data)), says, [out])


def test_generate_reads_a_csv_by_its_columns_not_its_header_line(run, cli_args, tmp_path: Path) -> None:
    data, out = tmp_path / "prompts.csv", tmp_path / "answers.jsonl"
    data.write_text("prompt,topic\n,shop\nHow many?,shop\n", encoding="utf-8")
    assert_user_error(run("generate", cli_args("generate", out, data)), ("'prompt'", "row 1"), [out])


# ---------------------------------------------------------------------------- resume, verifiers, model paths


@pytest.mark.parametrize("cli", STAGES)
def test_resume_with_nothing_to_resume_is_an_error(run, cli_args, tmp_path: Path, cli: str) -> None:
    out = tmp_path / "out"
    says = ("--resume", "no complete checkpoint", "run without --resume")
    assert_user_error(run(cli, [*cli_args(cli, out), "--resume", "true"]), says, [out])


@pytest.mark.parametrize("cli", STAGES)
def test_a_finished_run_is_not_appended_to(run, cli_args, tmp_path: Path, cli: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n', encoding="utf-8")
    assert_user_error(run(cli, cli_args(cli, out)), ("already holds a run", "choose another --output_dir"), [])
    assert (out / "metrics.jsonl").read_text(encoding="utf-8") == '{"step": 2, "loss": 1.0}\n'


def test_sql_verifier_on_math_data_is_refused_before_generating(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*cli_args("eval", out, REPO / "data" / "mathqa" / "test.jsonl"), "--verifier", "sql"]
    says = ("--verifier sql", "does not run on", "use --verifier auto|math|none")
    assert_user_error(run("eval", argv), says, [out])


@pytest.mark.parametrize("cli", ALL)
def test_a_model_path_typo_names_the_local_models(run, cli_args, tmp_path: Path, cli: str) -> None:
    out, wrong = tmp_path / "out", tmp_path / "tiny-lama"
    argv = [str(wrong) if str(a).endswith(("tiny-llama", "classifier0")) else a for a in cli_args(cli, out)]
    assert_user_error(run(main_of(cli), argv), (str(wrong),), [out])


def test_a_null_for_a_key_that_needs_a_value_is_refused(run, cli_args, tmp_path: Path) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "out"
    config.write_text((CONFIGS / "sft/tiny.yaml").read_text(encoding="utf-8") + "learning_rate: null\n")
    argv = [config if a == CONFIGS / "sft/tiny.yaml" else a for a in cli_args("sft", out)]
    assert_user_error(run("sft", argv), ("learning_rate cannot be null", str(config)), [out])


def test_a_db_that_does_not_exist_is_refused(run, cli_args, tmp_path: Path) -> None:
    db, out = tmp_path / "missing.sqlite", tmp_path / "out"
    assert_user_error(run("eval", [*cli_args("eval", out), "--db", db]), (f"--db {db} is not a file",), [out])


@pytest.mark.parametrize(
    ("bounds", "says"),
    [(["--min_tokens", "-1"], "min_tokens must be >= 0"), (["--min_tokens", "100", "--max_tokens", "10"], "above")],
    ids=["negative", "min-above-max"],
)
def test_token_bounds_of_the_filter_step_are_checked(run, cli_args, tmp_path: Path, bounds, says) -> None:
    out = tmp_path / "out"
    argv = ["filter", *cli_args("data", out)[1:], *bounds]
    assert_user_error(run("data", argv), (says,), [out])


def test_a_model_folder_without_weights_says_so(run, cli_args, tiny_model: Path, tmp_path: Path) -> None:
    bare, out = tmp_path / "bare", tmp_path / "out"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
    for cli in ("generate", "sft"):
        argv = [bare if a == tiny_model else a for a in cli_args(cli, out)]
        assert_user_error(run(cli, argv), (str(bare), "no weights"), [out])


def test_a_lora_adapter_whose_base_is_missing_says_so(run, cli_args, tiny_model: Path, tmp_path: Path) -> None:
    adapter, out = tmp_path / "adapter", tmp_path / "out"
    adapter.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "gone")}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    for cli in ("generate", "sft"):
        argv = [adapter if a == tiny_model else a for a in cli_args(cli, out)]
        assert_user_error(run(cli, argv), (str(adapter), "its base model cannot be loaded", "gone"), [out])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="QLoRA runs where there is a GPU")
def test_qlora_on_cpu_is_refused_before_the_data_is_read(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*cli_args("sft", out), "--use_peft", "true", "--load_in_4bit", "true"]
    assert_user_error(run("sft", argv), ("QLoRA", "needs a CUDA GPU"), [out])


PPO_CONFIG_MISTAKES = [
    (["--reward_function", "nomodule:fn"], "cannot import reward function module 'nomodule'"),
    (["--reward_function", "tests.reward_fns:nope"], "no callable 'nope'"),
    (["--reward_function", "null"], "set exactly one of reward_model_path or reward_function"),
    (["--reward_model_path", "{M}"], "set exactly one of reward_model_path or reward_function"),
    (["--shared_backbone", "true", "--value_model_path", "{M}"], "drop value_model_path"),
]


@pytest.mark.parametrize(("flags", "says"), PPO_CONFIG_MISTAKES, ids=["module", "function", "none", "both", "value"])
def test_ppo_reward_and_value_mistakes_are_found_before_any_model_loads(
    run, cli_args, tiny_model: Path, tmp_path: Path, flags: list[str], says: str
) -> None:
    out = tmp_path / "out"
    argv = [*cli_args("ppo", out), *(str(tiny_model) if f == "{M}" else f for f in flags)]
    assert_user_error(run("ppo", argv), (says,), [out])


def test_a_config_that_is_a_folder_names_the_files_in_it(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [CONFIGS / "sft" if a == CONFIGS / "sft/tiny.yaml" else a for a in cli_args("sft", out)]
    assert_user_error(run("sft", argv), ("is a folder", "tiny.yaml"), [out])


def test_a_folder_of_unlike_files_is_not_one_dataset(run, cli_args, tmp_path: Path) -> None:
    out, folder = tmp_path / "out", tmp_path / "mixed"
    folder.mkdir()
    jsonl(folder / "qa.jsonl", QA)
    jsonl(folder / "pairs.jsonl", PAIRS)
    says = ("holds files with different columns", "pairs.jsonl: chosen", "qa.jsonl: answer")
    assert_user_error(run("sft", cli_args("sft", out, folder)), says, [out])


def test_a_csv_with_only_a_header_has_no_rows(run, cli_args, tmp_path: Path) -> None:
    out, header = tmp_path / "out", tmp_path / "h.csv"
    header.write_text("question,answer\n", encoding="utf-8")
    assert_user_error(run("sft", cli_args("sft", out, header)), (f"{header} has no rows",), [out])


def test_prompts_longer_than_max_length_are_one_line_after_the_data_is_read(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*cli_args("sft", out), "--max_length", 2]
    assert_user_error(run("sft", argv), ("max_length=2 is not longer than any train prompt",), [out])


def test_tier_bounds_out_of_order_are_refused(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["select", *cli_args("data", out)[1:], "--tiers_by", "tokens", "--tier_bounds", "50,10"]
    assert_user_error(run("data", argv), ("tier_bounds must be two increasing numbers",), [out])


def test_a_text_column_mapped_as_messages_is_refused(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*cli_args("sft", out), "--columns", "messages=question"]
    assert_user_error(run("sft", argv), ("'question'", "messages role needs a list"), [out])


LOOP = ["--config", "configs/loop/tiny.yaml", "--reward_model", "{CLS}", "--output_dir", "{T}/loop"]
ANNOTATION_MISTAKES = [
    (["export", "w/d", "--input", "{T}/p.jsonl", "--min_submitted", "-1"], "min_submitted must be >= 0"),
    (["push", "w/d", "--data", "{T}/qa.jsonl", "--kind", "text", "--min_submitted", "0"], "--min_submitted must"),
    (["create", "w/d", "--kind", "comparison", "--candidates", "1"], "set --candidates"),
    (["puhs"], "did you mean 'push'?"),
    (["users", "add"], "required: workspace, usernames"),
    (["users", "add", "demo", "alice", "--role", "king"], "invalid choice: 'king'"),
    (["server", "restart"], "invalid choice: 'restart'"),
    (["loop", "run", *LOOP, "--output_dir", "{T}/qa.jsonl"], "is a file, not a folder"),
    (["loop", "run", *LOOP, "--reward_model", "tiny-llama"], "not a trained one-output classifier"),
    (["loop", "run", *LOOP, "--reward", "{max_step: 4}"], "unknown config key 'max_step' in reward_config"),
    (["loop", "run", *LOOP, "--ppo", "{rollout_batch_size: 0}"], "rollout_batch_size must be > 0"),
]


@pytest.mark.parametrize(("argv", "says"), ANNOTATION_MISTAKES, ids=[" ".join(a[:2]) for a, _ in ANNOTATION_MISTAKES])
def test_annotation_mistakes_are_one_line_before_any_server(
    run, cli_args, tiny_classifier: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], says: str
) -> None:
    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")  # nothing listens: found before connecting, or fail
    monkeypatch.setenv("ARGILLA_API_KEY", "unused")
    cli_args("data", tmp_path / "out")  # writes qa.jsonl
    argv = [a.replace("{T}", str(tmp_path)).replace("{CLS}", str(tiny_classifier)) for a in argv]
    # the loop's later flags win over its earlier ones (the shared prefix sets --output_dir and --reward_model)
    assert_user_error(run("annotation", argv), (says,), [tmp_path / "out", tmp_path / "loop"])


def test_validate_checks_a_stage_config_and_writes_nothing(run, cli_args, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _ = run("sft", [*cli_args("sft", out), "--validate", "true"])
    assert code == 0 and not out.exists()
    says = ("unknown config key 'learning_rat'",)
    assert_user_error(run("sft", [*cli_args("sft", out), "--validate", "true", "--learning_rat", "1"]), says, [out])


# ---------------------------------------------------------------------------- what shows in the terminal


@pytest.mark.parametrize("config", sorted(p.relative_to(CONFIGS) for p in CONFIGS.glob("[srp]*/*.yaml")), ids=str)
def test_shipped_configs_warn_about_nothing(run, tmp_path: Path, config: Path) -> None:
    """Renamed keys are fixed in the configs and TRL's defaults: a user error is the only line, no FutureWarning."""
    cli = config.parts[0]
    if cli not in STAGES:
        pytest.skip("not a stage config")
    (tmp_path / "taken").write_text("x\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(cli, ["--config", CONFIGS / config, "--output_dir", tmp_path / "taken"])
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)] == []
    assert_user_error(result, ("is a file, not a folder",), [])


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_load_reports_show_only_with_verbose(run, cli_args, tmp_path: Path) -> None:
    """A reward model's fresh score head is expected: transformers' LOAD REPORT table is not shown unless asked."""
    shown = Records()
    library = logging.getLogger("transformers")  # where transformers' own handler prints from
    library.addHandler(shown)
    try:
        quiet = run("reward", [*cli_args("reward", tmp_path / "quiet"), "--max_length", 4])
        reports_when_quiet = sum("LOAD REPORT" in message for message in shown.messages)
        verbose = run("reward", [*cli_args("reward", tmp_path / "verbose"), "--max_length", 4, "--verbose", "true"])
    finally:
        library.removeHandler(shown)
    for code, stderr in (quiet, verbose):
        assert code == 2 and "every train pair is longer than max_length=4" in stderr, stderr[-3000:]
    assert reports_when_quiet == 0
    assert sum("LOAD REPORT" in message for message in shown.messages) == 1


def test_tied_weights_stored_once_are_reported_only_with_verbose(caplog: pytest.LogCaptureFixture) -> None:
    """A PPO checkpoint of a model with tied embeddings stores them once: accelerate's note of it is expected."""
    import torch
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    from pipelines.cli import show_library_reports

    PartialState()  # accelerate's logger needs its state
    tied = torch.zeros(2)
    try:
        for verbose in (False, True):
            show_library_reports(verbose)
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                kept = clean_state_dict_for_safetensors({"embed.weight": tied, "lm_head.weight": tied})
            assert list(kept) == ["embed.weight"]
            assert ("Removed shared tensor" in caplog.text) is verbose
    finally:
        show_library_reports(False)


def test_real_cli_error_is_one_line_in_the_terminal(run_cli, tiny_sft_args, tmp_path: Path) -> None:
    """On a real process (warnings and library logging as a user sees them): one line, exit 2, nothing left."""
    out = tmp_path / "out"
    result = run_cli("pipelines.sft", *tiny_sft_args(out, "--per_device_train_batch_size", "-1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "per_device_train_batch_size must be > 0, got -1" in single_error_line(result.stderr)
    assert not out.exists()


# ---------------------------------------------------------------------------- argilla:// of the wrong kind


@pytest.fixture
def argilla_datasets(argilla_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One empty dataset of each kind in a workspace of this test's own: kind -> argilla:// address."""
    from annotation.create import main as create_main

    monkeypatch.setenv("ARGILLA_API_URL", argilla_server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    workspace = f"t{uuid.uuid4().hex[:10]}"
    for kind in ("text", "instruction", "comparison"):
        assert create_main([f"{workspace}/{kind}", "--kind", kind]) == 0
    return {kind: f"argilla://{workspace}/{kind}" for kind in ("text", "instruction", "comparison")}


WRONG_KIND = [
    ("sft", "comparison", "feeds the reward model"),
    ("reward", "instruction", "reads comparison datasets (or instruction datasets with ?correction_pairs=true)"),
    ("ppo", "text", "reads the prompts of instruction or comparison datasets"),
    ("eval", "comparison", "reads instruction datasets"),
]


@pytest.mark.parametrize(("cli", "kind", "says"), WRONG_KIND, ids=[f"{c}-{k}" for c, k, _ in WRONG_KIND])
def test_an_argilla_dataset_of_the_wrong_kind_is_named_as_such(
    run, cli_args, argilla_datasets: dict[str, str], tmp_path: Path, cli: str, kind: str, says: str
) -> None:
    out = tmp_path / "out"
    address = argilla_datasets[kind]
    assert_user_error(run(cli, cli_args(cli, out, address)), (f"{address} is a", f"{kind} dataset", says), [out])
