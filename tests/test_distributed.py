"""Two processes on a CPU machine, data-parallel (DDP, `cpu_2proc.yaml`) and sharded (FSDP2,
`cpu_fsdp_2proc.yaml`): each must be ONE training over 2 ranks that matches the 1-process run at the same
global batch (step-1 loss and final weights), save one full model, and (FSDP) resume from its sharded
checkpoint after a SIGKILL to the weights of the uninterrupted run."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoModelForCausalLM

from tests.conftest import PYTHON, REPO_ROOT, cli_env

CONFIGS = REPO_ROOT / "configs" / "accelerate"
LAUNCH = {"ddp": CONFIGS / "cpu_2proc.yaml", "fsdp": CONFIGS / "cpu_fsdp_2proc.yaml"}
STEPS, GLOBAL_BATCH = 4, 16  # 4 steps x 16 rows: the 64 fixture rows once
# |1-process - 2-process| measured on these runs (fp32, lr 3e-3): step-1 loss 1e-6 (DDP and FSDP); final
# weights max 6.5e-7 (DDP), 4.7e-6 (FSDP: reduce-scatter sums in another order). A wrong batch split, a
# per-rank loss mean or a lost gradient sync moves them by 1e-3 or more.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 5e-5


def free_port() -> int:
    """A port for a launch's rendezvous: runs side by side (or another engineer's) would collide on 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_run(process: subprocess.Popen) -> None:
    """SIGKILL a launch and every process under it, as a machine failure would: the launcher starts each rank
    in a session of its own, so killing its process group leaves the ranks training."""
    tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
    for member in tree:
        member.kill()
    psutil.wait_procs(tree, timeout=30)
    process.wait()


def sft_command(tiny_sft_args, output_dir: Path, launch: str | None, *flags: object) -> list[str]:
    """The tiny SFT run at a global batch of 16 rows: 1 process x 16, or `launch`'s 2 processes x 8."""
    per_device = GLOBAL_BATCH if launch is None else GLOBAL_BATCH // 2
    args = tiny_sft_args(output_dir, "--max_steps", STEPS, "--logging_steps", 1, "--precision", "fp32")
    args += ["--per_device_train_batch_size", str(per_device), "--compare_base", "false", *map(str, flags)]
    launcher = ["-m", "accelerate.commands.launch", "--config_file", str(LAUNCH[launch])] if launch else []
    launcher += ["--main_process_port", str(free_port())] if launch else []  # runs side by side need their own
    return [PYTHON, *launcher, "-m", "pipelines.sft", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_sft_args) -> dict[str, dict[str, Any]]:
    """The same training on 1 process, 2 DDP ranks and 2 FSDP ranks (sharded checkpoints every 2 steps),
    started together (their start-up is mostly imports)."""
    root = tmp_path_factory.mktemp("ranks")
    flags = {
        "one": (None, "--save_strategy", "no"),
        "ddp": ("ddp", "--save_strategy", "no", "--eval_generation_samples", 2),
        "fsdp": ("fsdp", "--save_steps", 2),
    }
    started = {}
    for name, (launch, *extra) in flags.items():
        with (root / f"{name}.out").open("wb") as out, (root / f"{name}.err").open("wb") as err:
            command = sft_command(tiny_sft_args, root / name, launch, *extra)
            started[name] = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stdout=out, stderr=err)
    for name, process in started.items():
        assert process.wait(timeout=600) == 0, (root / f"{name}.err").read_text()[-4000:]
    return {name: {"dir": root / name, "stdout": (root / f"{name}.out").read_text()} for name in flags}


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [row["loss"] for row in rows if "loss" in row]


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=WEIGHT_ATOL, msg=key)


@pytest.mark.parametrize("launch", ["ddp", "fsdp"])
def test_two_ranks_train_as_the_one_process_run(runs: dict[str, dict[str, Any]], launch: str) -> None:
    one, two = runs["one"]["dir"], runs[launch]["dir"]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["train"]["epoch"] == pytest.approx(STEPS * GLOBAL_BATCH / 64)
    assert len(losses(two)) == STEPS  # logged once per step, not once per rank
    assert losses(two)[0] == pytest.approx(losses(one)[0], rel=LOSS_RTOL)
    assert_same_weights(load_file(two / "model.safetensors"), load_file(one / "model.safetensors"))


def test_ddp_saves_exactly_one_model_and_summary(runs: dict[str, dict[str, Any]]) -> None:
    output_dir: Path = runs["ddp"]["dir"]
    assert sorted(output_dir.rglob("*.safetensors")) == [output_dir / "model.safetensors"]
    assert sorted(output_dir.rglob("summary.json")) == [output_dir / "summary.json"]
    assert (output_dir / "generations.md").is_file()
    assert runs["ddp"]["stdout"].count("done: model") == 1  # only the main process reports


def test_fsdp_checkpoints_are_sharded_and_the_saved_model_is_the_gathered_weights(
    runs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    output_dir: Path = runs["fsdp"]["dir"]
    shards = output_dir / f"checkpoint-{STEPS}" / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per rank
    dcp_to_torch_save(shards, tmp_path / "gathered.pt")
    gathered = torch.load(tmp_path / "gathered.pt", weights_only=False)["model"]
    saved = load_file(output_dir / "model.safetensors")
    assert saved.keys() == gathered.keys()
    for key, value in gathered.items():
        assert torch.equal(saved[key], value), key  # whole tensors, not rank 0's half
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert torch.equal(model.model.embed_tokens.weight, gathered["model.embed_tokens.weight"])


def test_fsdp_resumes_from_its_sharded_checkpoint_after_a_kill(
    runs: dict[str, dict[str, Any]], tiny_sft_args, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    command = sft_command(tiny_sft_args, out, "fsdp", "--save_steps", 2)
    with (tmp_path / "killed.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=cli_env(), stdout=log, stderr=log)
    deadline = time.time() + 300
    while not (out / "checkpoint-2" / "trainer_state.json").is_file() and process.poll() is None:
        assert time.time() < deadline, "no checkpoint-2 in time"
        time.sleep(0.05)
    kill_run(process)
    assert not (out / f"checkpoint-{STEPS}").exists() and not (out / "model.safetensors").exists()  # cut mid-run

    resumed = subprocess.run(
        [*command, "--resume", "true"], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert losses(out)[2:] == pytest.approx(losses(runs["fsdp"]["dir"])[2:], rel=LOSS_RTOL)  # steps 3-4 resumed
    assert_same_weights(load_file(out / "model.safetensors"), load_file(runs["fsdp"]["dir"] / "model.safetensors"))
