"""Config handling: YAML + flags on TRL's parser and on the light CLIs' loader, the errors users make, and the
saved run_config.yaml."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from trl import ModelConfig, SFTConfig

from pipelines.data.formats import detect_mapping
from pipelines.data.sources import DataArguments
from pipelines.runner import UserError, stage_defaults
from pipelines.runner.config import (
    RunArguments,
    add_config_flags,
    config_layers,
    merge_config,
    parse_config,
    save_resolved_config,
)
from pipelines.sft.__main__ import GenerationEvalArguments
from tests.conftest import PYTHON, REPO_ROOT

SFT_ARGUMENTS = [DataArguments, GenerationEvalArguments, RunArguments, SFTConfig, ModelConfig]


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def parse_sft(*argv: str, defaults: dict | None = None):
    """The SFT stage's dataclasses parsed from argv as the stage does: (data, generation, run, training, model)."""
    return parse_config(SFT_ARGUMENTS, list(argv), defaults=stage_defaults() | (defaults or {}))


def error_line(stderr: str) -> str:
    """The single `error:` line a user error prints (it must be the last thing on stderr)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert lines[-1] == errors[0], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def test_flag_beats_yaml_beats_stage_default_beats_dataclass_default(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "c.yaml",
        "model_name_or_path: from-yaml\nlearning_rate: 1.0e-3\nmax_steps: 7\ndataset: yaml.jsonl\n",
    )
    stage_defaults = {"learning_rate": 5.0e-5, "max_steps": 11, "logging_steps": 3}
    data, _, _, training, model = parse_sft(
        "--config", str(config), "--max_steps", "3", "--dataset", "flag.jsonl", defaults=stage_defaults
    )
    _, _, _, baseline, _ = parse_sft()

    assert training.max_steps == 3  # flag over YAML over stage default
    assert data.dataset == "flag.jsonl"  # flag over YAML, in another dataclass
    assert training.learning_rate == pytest.approx(1e-3)  # YAML over stage default
    assert model.model_name_or_path == "from-yaml"  # YAML over dataclass default
    assert training.logging_steps == 3  # stage default over dataclass default
    assert training.seed == baseline.seed  # untouched: the dataclass default


def test_flags_work_without_a_config_file() -> None:
    _, gen, run, training, _ = parse_sft("--max_new_tokens", "5", "--resume", "true", "--learning_rate", "0.01")
    assert gen.max_new_tokens == 5
    assert run.resume is True
    assert training.learning_rate == pytest.approx(0.01)


@pytest.fixture(scope="module")
def cli_config_errors(tmp_path_factory: pytest.TempPathFactory, run_cli_many) -> dict[str, Any]:
    """The real CLI on three config mistakes, run concurrently (each process spends ~7 s importing)."""
    root = tmp_path_factory.mktemp("config-errors")
    typo = write_yaml(root / "typo.yaml", "model_name_or_path: tiny-llama\nlearnin_rate: 1.0e-3\n")
    broken = write_yaml(root / "bad.yaml", "model_name_or_path: tiny-llama\nmax_steps: 3\ncolumns: {prompt: q\n")
    cases = {
        "yaml_key": ("pipelines.sft", "--config", typo, "--output_dir", root / "out-typo"),
        "flag": ("pipelines.sft", "--model_name_or_path", "tiny-llama", "--lerning_rate", "0.1"),
        "yaml_syntax": ("pipelines.sft", "--config", broken, "--output_dir", root / "out-bad"),
    }
    results = dict(zip(cases, run_cli_many(*cases.values()), strict=True))
    return {"root": root, **results}


def test_unknown_yaml_key_exits_2_and_suggests_the_closest_key(cli_config_errors) -> None:
    result = cli_config_errors["yaml_key"]
    assert result.returncode == 2, result.stderr[-3000:]
    message = error_line(result.stderr)
    assert "learnin_rate" in message
    assert "did you mean 'learning_rate'" in message
    assert not (cli_config_errors["root"] / "out-typo").exists()


def test_unknown_flag_exits_2_and_suggests_the_closest_flag(cli_config_errors) -> None:
    result = cli_config_errors["flag"]
    assert result.returncode == 2, result.stderr[-3000:]
    message = error_line(result.stderr)
    assert "lerning_rate" in message
    assert "did you mean 'learning_rate'" in message


def test_invalid_yaml_exits_2_with_its_line_number(cli_config_errors) -> None:
    result = cli_config_errors["yaml_syntax"]
    assert result.returncode == 2, result.stderr[-3000:]
    message = error_line(result.stderr)
    assert "bad.yaml" in message
    assert "not valid YAML" in message
    assert "line 3" in message or "line 4" in message  # the unclosed mapping opened on line 3
    assert not (cli_config_errors["root"] / "out-bad").exists()


def test_invalid_yaml_error_names_the_line_in_process(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "bad.yaml", "max_steps: 3\nlearning_rate: [1, 2\nseed: 1\n")
    with pytest.raises(UserError, match=r"not valid YAML \(line \d+, column \d+\)"):
        parse_sft("--config", str(config))


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- max_steps: 3\n- seed: 1\n", "list"), ("just a string\n", "str"), ("42\n", "int")],
)
def test_config_that_is_not_a_mapping_is_rejected(tmp_path: Path, text: str, kind: str) -> None:
    config = write_yaml(tmp_path / "c.yaml", text)
    with pytest.raises(UserError, match=f"must be a YAML mapping.*got {kind}"):
        parse_sft("--config", str(config))


def test_empty_config_file_means_all_defaults(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "empty.yaml", "# nothing set yet\n")
    _, _, _, training, _ = parse_sft("--config", str(config))
    _, _, _, baseline, _ = parse_sft()
    assert training.max_steps == baseline.max_steps


def test_missing_config_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        parse_sft("--config", str(tmp_path / "nope.yaml"))


def test_config_flag_without_a_path_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--config needs a path"):
        parse_sft("--config")


def test_wrongly_typed_yaml_value_names_the_key(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", "max_steps: ten\n")
    with pytest.raises(UserError, match="max_steps") as err:
        parse_sft("--config", str(config))
    assert "\n" not in str(err.value)


def test_columns_are_accepted_as_a_yaml_mapping(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", "columns: {prompt: question, completion: answer}\n")
    data, *_ = parse_sft("--config", str(config))
    mapping = detect_mapping(["id", "question", "answer"], data.columns)
    assert mapping == {"prompt": "question", "completion": "answer"}


def test_columns_are_accepted_as_a_flag() -> None:
    data, *_ = parse_sft("--columns", "prompt=question,completion=answer")
    mapping = detect_mapping(["id", "question", "answer"], data.columns)
    assert mapping == {"prompt": "question", "completion": "answer"}


def test_columns_flag_overrides_yaml_mapping(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", "columns: {prompt: question, completion: answer}\n")
    data, *_ = parse_sft("--config", str(config), "--columns", "instruction=q, response=a")
    assert detect_mapping(["q", "a"], data.columns) == {"instruction": "q", "response": "a"}


def test_malformed_columns_flag_says_how_to_write_it() -> None:
    data, *_ = parse_sft("--columns", "prompt:question")
    with pytest.raises(UserError, match="role=column"):
        detect_mapping(["question", "answer"], data.columns)


def test_saved_run_config_redacts_secrets(tmp_path: Path) -> None:
    configs = parse_sft("--hub_token", "hf_TOPSECRET123", "--model_name_or_path", "tiny-llama")
    path = tmp_path / "run_config.yaml"
    save_resolved_config(path, *configs)
    text = path.read_text(encoding="utf-8")
    saved = yaml.safe_load(text)
    assert "hf_TOPSECRET123" not in text
    assert saved["hub_token"] == "<redacted>"
    assert saved["model_name_or_path"] == "tiny-llama"


def test_saved_run_config_keeps_settings_whose_names_merely_contain_token(tmp_path: Path) -> None:
    # max_new_tokens, eos_token... are settings, not secrets: the saved config must say what the run used.
    configs = parse_sft(
        "--max_new_tokens", "17", "--eos_token", "<|im_end|>", "--average_tokens_across_devices", "false"
    )
    path = tmp_path / "run_config.yaml"
    save_resolved_config(path, *configs)
    saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert saved["max_new_tokens"] == 17
    assert saved["eos_token"] == "<|im_end|>"
    assert saved["average_tokens_across_devices"] is False


def test_saved_run_config_can_be_passed_back_as_config(tmp_path: Path) -> None:
    """run_config.yaml is the resolved config of a run: feeding it back must give the same settings."""
    config = write_yaml(
        tmp_path / "c.yaml",
        "model_name_or_path: tiny-llama\ncolumns: {prompt: question, completion: answer}\n"
        "max_steps: 9\nlearning_rate: 3.0e-3\nmax_length: 96\nmax_new_tokens: 12\n",
    )
    first = parse_sft("--config", str(config))
    saved = tmp_path / "run_config.yaml"
    save_resolved_config(saved, *first)

    second = parse_sft("--config", str(saved))
    for before, after in zip(first, second, strict=True):
        for name in ("columns", "max_steps", "learning_rate", "max_length", "max_new_tokens", "model_name_or_path"):
            if hasattr(before, name):
                assert getattr(after, name) == getattr(before, name), name


# ---------------------------------------------------------------------------- the loader of the light CLIs


@dataclasses.dataclass
class LightConfig:
    """A plain config dataclass, as curation, the annotation export and the loop declare theirs."""

    rule: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
    count: int = 1
    ratio: float | None = None
    names: list[str] | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    enabled: bool = True


def light(argv: list[str], yaml_text: str | None = None, tmp_path: Path | None = None) -> LightConfig:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser, LightConfig)
    if yaml_text is not None and tmp_path is not None:
        argv = ["--config", str(write_yaml(tmp_path / "light.yaml", yaml_text)), *argv]
    return merge_config(LightConfig, config_layers(parser.parse_args(argv), LightConfig))


def test_light_loader_types_values_and_flags_beat_yaml(tmp_path: Path) -> None:
    text = "rule: b\ncount: 3\nratio: 0.5\nnames: [x, y]\noverrides: {max_steps: 2}\nenabled: false\n"
    assert light([], text, tmp_path) == LightConfig("b", 3, 0.5, ["x", "y"], {"max_steps": 2}, False)
    flags = ["--count", "7", "--names", "p,q", "--overrides", "{seed: 1}", "--enabled", "yes", "--rule", "a"]
    assert light(flags, text, tmp_path) == LightConfig("a", 7, 0.5, ["p", "q"], {"seed": 1}, True)


@pytest.mark.parametrize("word", ["null", "none", "NULL"])
def test_light_loader_null_on_the_command_line_unsets_a_yaml_key(tmp_path: Path, word: str) -> None:
    config = light(["--ratio", word, "--names", word], "ratio: 0.5\nnames: [x]\n", tmp_path)
    assert (config.ratio, config.names) == (None, None)
    assert light([], "ratio: null\n", tmp_path).ratio is None


@pytest.mark.parametrize(
    ("argv", "yaml_text", "message"),
    [
        ([], "cuont: 2\n", "unknown config key 'cuont' in {path}; did you mean 'count'?"),
        (["--count", "two"], "", "count: 'two' is not a valid int on the command line"),
        (["--count", "2.5"], "", "count: '2.5' is not a valid int on the command line"),
        ([], "count: 2.5\n", "count: 2.5 is not a valid int in {path}"),
        (["--rule", "c"], "", "rule: 'c' is not one of a, b on the command line"),
        ([], "count: null\n", "count cannot be null in {path}: it needs a value"),
        (["--enabled", "maybe"], "", "enabled: 'maybe' is not a valid bool on the command line"),
        ([], "rule: [a]\n", "rule: ['a'] is not a valid str in {path}"),
    ],
)
def test_light_loader_errors_name_the_key_and_where(
    tmp_path: Path, argv: list[str], yaml_text: str, message: str
) -> None:
    with pytest.raises(UserError) as caught:
        light(argv, yaml_text, tmp_path)
    assert str(caught.value) == message.format(path=tmp_path / "light.yaml")


def test_stage_flag_null_unsets_an_optional_yaml_key_but_report_to_none_stays_a_word(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", "eval_dataset: held-out.jsonl\nsystem_prompt: Be brief.\n")
    data, *_ = parse_sft("--config", str(config), "--eval_dataset", "null", "--system_prompt=none")
    assert (data.eval_dataset, data.system_prompt) == (None, None)
    data, *_ = parse_sft("--config", str(config))
    assert data.eval_dataset == "held-out.jsonl"
    *_, training, _ = parse_sft("--report_to", "none")
    assert training.report_to == []  # transformers' own meaning of the word: no integrations


def test_light_clis_import_no_torch_transformers_or_trl() -> None:
    """`python -m annotation --help`, `export` and the config loader must start in a fraction of a second."""
    code = (
        "import sys, annotation.cli, annotation.export, annotation.pull, annotation.loop, pipelines.runner.config;"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'argilla') if m in sys.modules))"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
