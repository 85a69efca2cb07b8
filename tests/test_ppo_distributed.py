"""PPO on two processes equals PPO on one: the same global rollout, split over 2 DDP or FSDP ranks, gives the
1-process run's losses and weights over two optimizer steps (accumulated micro-batches, clipping,
cross-rank whitening and token normalisation included); and the CLI runs FSDP end to end: sharded
checkpoints, a gathered model `from_pretrained` loads, resume after a kill to the uninterrupted weights.

This file is also the worker the equality test launches: `python -m tests.test_ppo_distributed OUT [--shared]`
(under `accelerate launch` for 2 processes) writes OUT/result.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_distributed import LAUNCH, free_port, kill_run

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny-llama"
PPO_TINY = REPO / "configs" / "ppo" / "tiny.yaml"
ROWS, MICRO = 8, 4  # the global rollout and mini-batch; micro-batches of 4 rows overall (2 a rank on 2 ranks)
# |1-process - 2-process| measured (fp32, lr 1e-3, tiny-llama, the two steps' policy and value losses; the
# weights after them): DDP 6.7e-8 and 1.2e-7, FSDP 6.4e-7 and 2.2e-7, FSDP with a shared backbone 2.5e-7 and
# 1.0e-7; the steps moved weights by 2e-3. Per-rank whitening or token means, or a gradient left unsynced,
# move the losses by 1e-2 and the weights by 1e-4 or more.
LOSS_ATOL, WEIGHT_ATOL = 1e-5, 5e-6


def launcher(launch: str | None) -> list[str]:
    if launch is None:
        return [sys.executable]
    config = ["--config_file", str(LAUNCH[launch]), "--main_process_port", str(free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", *config]


def worker(out: Path, shared_backbone: bool) -> None:
    """One fixed rollout of ROWS answers (sampled alike on every process, each process keeping its share of the
    rows), scored into experience, then two optimizer steps on it; writes the global losses and the weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.ppo.config import PPOConfig
    from pipelines.ppo.rewards import FunctionReward
    from pipelines.ppo.rollout import sample
    from pipelines.ppo.trainer import PPOTrainer, ValueHead
    from pipelines.runner import load_scalar_model
    from tests.reward_fns import short_answers
    from tests.test_ppo_trainer import QUESTIONS, chat

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    torch.manual_seed(0)  # the same initial weights (and fresh heads) in every process and every world size
    policy = AutoModelForCausalLM.from_pretrained(TINY)
    value = (
        ValueHead(policy.config.hidden_size)
        if shared_backbone
        else load_scalar_model(str(TINY), trained_head=False, pad_token_id=tokenizer.pad_token_id)
    )
    reference = AutoModelForCausalLM.from_pretrained(TINY).requires_grad_(False)
    config = PPOConfig(
        output_dir=str(out / "run"),
        max_steps=1,
        rollout_batch_size=ROWS // world,
        per_device_train_batch_size=MICRO // world,
        gradient_accumulation_steps=ROWS // MICRO,
        max_new_tokens=12,
        temperature=1.0,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        draft_tokens=0,
        bf16=False,
    )
    prompts = [chat(q) for q in QUESTIONS[:ROWS]]
    reward = FunctionReward("tests.reward_fns:short_answers", short_answers)
    trainer = PPOTrainer(config, policy, value, reference, reward, tokenizer, prompts, [])
    with trainer._sampling_policy() as sampler:
        rollout = sample(sampler, tokenizer, prompts, 12, 1.0, ROWS, generator=torch.Generator().manual_seed(0))
    share = ROWS // world
    batch = trainer.experience(rollout.select(torch.arange(rank * share, (rank + 1) * share)))
    tokens = trainer.accelerator.reduce(batch["mask"].sum(), "sum")
    steps = []
    for _ in range(2):
        stats = trainer.learn_minibatch(batch, torch.arange(share))
        local = {key: torch.tensor(stats[key]) * batch["mask"].sum() for key in ("loss/policy", "loss/value")}
        steps.append({key: float(trainer.accelerator.reduce(value, "sum") / tokens) for key, value in local.items()})
    state = trainer.accelerator.get_state_dict(trainer.model)  # collective: every process gathers
    if trainer.accelerator.is_main_process:
        weights = {key: value.detach().float().clone() for key, value in state.items()}
        torch.save({"steps": steps, "weights": weights, "world": world}, out / "result.pt")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, dict]:
    """The worker on 1 process, 2 DDP ranks and 2 FSDP ranks, separate value model and shared backbone,
    started together."""
    from tests.conftest import cli_env

    root = tmp_path_factory.mktemp("ppo-ranks")
    runs = {
        f"{launch or 'one'}-{kind}": (launch, kind)
        for launch in (None, "ddp", "fsdp")
        for kind in ("separate", "shared")
        if not (launch == "ddp" and kind == "shared")  # DDP syncs the value head like any parameter
    }
    started = {}
    for name, (launch, kind) in runs.items():
        (root / name).mkdir()
        command = [*launcher(launch), "-m", "tests.test_ppo_distributed", str(root / name)]
        command += ["--shared"] if kind == "shared" else []
        with (root / f"{name}.log").open("wb") as log:
            started[name] = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=log, stderr=log)
    for name, process in started.items():
        assert process.wait(timeout=600) == 0, (root / f"{name}.log").read_text()[-4000:]
    return {name: torch.load(root / name / "result.pt", weights_only=False) for name in runs}


@pytest.mark.parametrize("name", ["ddp-separate", "fsdp-separate", "fsdp-shared"])
def test_two_processes_update_ppo_as_one_process_does(results: dict[str, dict], name: str) -> None:
    one, two = results["one-" + name.split("-")[1]], results[name]
    assert (one["world"], two["world"]) == (1, 2)
    for step, (got, want) in enumerate(zip(two["steps"], one["steps"], strict=True), 1):
        for key in ("loss/policy", "loss/value"):
            assert got[key] == pytest.approx(want[key], abs=LOSS_ATOL), (step, key)
    assert two["weights"].keys() == one["weights"].keys()
    for key, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][key], value, rtol=0, atol=WEIGHT_ATOL, msg=key)
    initial = load_file(TINY / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    moved = (one["weights"]["policy.model.layers.0.mlp.down_proj.weight"] - initial).abs().max()
    assert moved > 100 * WEIGHT_ATOL  # the steps changed the weights: their equality says something


def ppo_fsdp_command(out: Path, *flags: object) -> list[str]:
    args = ["--config", PPO_TINY, "--model_name_or_path", TINY, "--output_dir", out, "--report_to", "none"]
    args += ["--max_steps", 3, "--save_steps", 1, "--eval_prompts", 0, "--precision", "fp32", *flags]
    return [*launcher("fsdp"), "-m", "pipelines.ppo", *map(str, args)]


def test_fsdp_ppo_saves_whole_weights_and_resumes_after_a_kill(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tests.conftest import cli_env

    runs = {name: tmp_path / name for name in ("reference", "killed")}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in runs}
    started = {
        name: subprocess.Popen(ppo_fsdp_command(out), cwd=REPO, env=cli_env(), stdout=logs[name], stderr=logs[name])
        for name, out in runs.items()
    }
    killed = runs["killed"]
    deadline = time.time() + 300
    while not (killed / "checkpoint-1" / "trainer_state.json").is_file() and started["killed"].poll() is None:
        assert time.time() < deadline, "no checkpoint-1 in time"
        time.sleep(0.05)
    kill_run(started["killed"])
    assert started["reference"].wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    assert not (killed / "checkpoint-3").exists() and not (killed / "model.safetensors").exists()  # cut mid-run
    shards = sorted(p.name for p in (killed / "checkpoint-1" / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one shard per process

    resumed = subprocess.run(
        [*ppo_fsdp_command(killed), "--resume", "true"], cwd=REPO, env=cli_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert (summary["world_size"], summary["updates"]) == (2, 3)
    for folder in ("", "value_model"):
        want, have = (
            load_file(runs["reference"] / folder / "model.safetensors"),
            load_file(killed / folder / "model.safetensors"),
        )
        assert want.keys() == have.keys()
        for key in want:
            torch.testing.assert_close(have[key], want[key], rtol=1e-5, atol=1e-6, msg=f"{folder} {key}")
    model = AutoModelForCausalLM.from_pretrained(killed)  # whole tensors: the tiny model's shapes
    reference_shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_pretrained(tiny_model).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == reference_shapes


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--shared", action="store_true")
    cli = parser.parse_args()
    worker(cli.out, cli.shared)
