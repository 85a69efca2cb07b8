"""Mistakes users make with `python -m pipelines.sft`: each one exits 2 with one line saying what to fix,
no traceback, and no output dir left behind.

The cases call the stage's `main` in-process (the same function `python -m pipelines.sft` runs; one import
instead of ~7 s of imports per case); `test_real_cli_*` checks the same contract on a real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipelines.sft.__main__ import main as sft_main

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "sft" / "tiny.yaml"


def error_line(stderr: str) -> str:
    """The one `error:` line, which must be the last thing printed; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def run_sft(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]):
    """`run_sft(argv) -> (exit code, stderr)` from the SFT entry point, run from the repo root."""
    monkeypatch.chdir(REPO_ROOT)

    def run(argv: list[str]) -> tuple[int | str | None, str]:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exited:
            sft_main(argv)
        return exited.value.code, capfd.readouterr().err

    return run


def assert_user_error(result: tuple[int | str | None, str], out: Path, *fragments: str) -> str:
    code, stderr = result
    assert code == 2, stderr[-3000:]
    message = error_line(stderr)
    for fragment in fragments:
        assert fragment in message
    assert not out.exists(), f"{out} was left behind: {sorted(p.name for p in out.iterdir())}"
    return message


def test_missing_data_file(run_sft, tiny_sft_args, out: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train.jsonl"
    result = run_sft(tiny_sft_args(out, "--dataset", missing))
    assert_user_error(result, out, "data file not found", str(missing))


def test_empty_data_file(run_sft, tiny_sft_args, out: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    result = run_sft(tiny_sft_args(out, "--dataset", empty))
    assert_user_error(result, out, "empty", str(empty))


def test_data_without_the_mapped_columns(run_sft, tiny_sft_args, write_qa_jsonl, out: Path, tmp_path: Path) -> None:
    data = write_qa_jsonl(tmp_path / "qa.jsonl", rows=[{"q": "What is 1 plus 1?", "a": "2"}] * 4)
    result = run_sft(tiny_sft_args(out, "--dataset", data, "--eval_dataset", data))
    message = assert_user_error(result, out, "missing column(s) question, answer")
    assert "the data has q, a" in message


def test_unknown_config_key(run_sft, out: Path, tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(TINY_CONFIG.read_text(encoding="utf-8") + "learnin_rate: 1.0e-3\n", encoding="utf-8")
    result = run_sft(["--config", str(config), "--output_dir", str(out)])
    assert_user_error(result, out, "unknown config key 'learnin_rate'", "did you mean 'learning_rate'")


def test_bad_yaml(run_sft, out: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model_name_or_path: tiny-llama\nmax_steps: 5\n  seed: 1\n", encoding="utf-8")
    result = run_sft(["--config", str(config), "--output_dir", str(out)])
    assert_user_error(result, out, "not valid YAML", "line 3", "bad.yaml")


def test_model_path_typo_lists_the_local_models(run_sft, tiny_sft_args, out: Path) -> None:
    result = run_sft(tiny_sft_args(out, "--model_name_or_path", "models/tiny-lama"))
    message = assert_user_error(result, out, "'models/tiny-lama'", "not found")
    assert "tiny-llama" in message.split("'models/tiny-lama'", 1)[1]  # the hint names the right folder


def test_hub_model_id_while_offline(run_sft, tiny_sft_args, out: Path) -> None:
    result = run_sft(tiny_sft_args(out, "--model_name_or_path", "Qwen/Qwen2.5-0.5B"))
    assert_user_error(result, out, "'Qwen/Qwen2.5-0.5B'", "offline", "HF_HUB_OFFLINE", "tiny-llama")


def test_max_length_shorter_than_every_prompt(run_sft, tiny_sft_args, out: Path) -> None:
    result = run_sft(tiny_sft_args(out, "--max_length", "4"))
    assert_user_error(result, out, "max_length=4", "raise max_length above")


def test_non_utf8_data_file(run_sft, tiny_sft_args, out: Path, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "Où habite-t-il ?", "answer": "Lyon"}\n'.encode("latin-1"))
    result = run_sft(tiny_sft_args(out, "--dataset", latin1))
    assert_user_error(result, out, "not UTF-8", str(latin1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message under test is the CPU-only one")
def test_qlora_on_cpu_says_it_needs_a_gpu(run_sft, tiny_sft_args, out: Path) -> None:
    result = run_sft(tiny_sft_args(out, "--use_peft", "true", "--load_in_4bit", "true"))
    message = assert_user_error(result, out, "QLoRA", "CUDA GPU")
    assert "use_peft" in message  # says what to use instead on a CPU


def test_output_dir_with_checkpoints_needs_resume_and_is_kept(run_sft, tiny_sft_args, out: Path) -> None:
    (out / "checkpoint-5").mkdir(parents=True)
    (out / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}', encoding="utf-8")
    code, stderr = run_sft(tiny_sft_args(out))
    assert code == 2, stderr[-3000:]
    message = error_line(stderr)
    assert "checkpoint-5" in message
    assert "--resume" in message
    assert (out / "checkpoint-5" / "trainer_state.json").is_file()  # an earlier run's work is never removed


def test_non_positive_max_new_tokens(run_sft, tiny_sft_args, out: Path) -> None:
    result = run_sft(tiny_sft_args(out, "--max_new_tokens", "0"))
    assert_user_error(result, out, "max_new_tokens", "> 0")


def test_real_cli_reports_a_data_error_in_one_line_with_exit_code_2(
    run_cli, tiny_sft_args, write_qa_jsonl, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    data = write_qa_jsonl(tmp_path / "qa.jsonl", rows=[{"prompt_text": "What is 1 plus 1?", "reply": "2"}] * 4)
    result = run_cli("pipelines.sft", *tiny_sft_args(out, "--dataset", data, "--eval_dataset", data))
    assert result.returncode == 2, result.stderr[-3000:]
    message = error_line(result.stderr)
    assert "missing column(s) question, answer" in message
    assert "prompt_text, reply" in message
    assert not out.exists()
