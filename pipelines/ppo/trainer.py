"""The PPO loop on accelerate: rollout -> rewards with KL penalty -> GAE -> clipped updates.

Each update maps to the equations in `core.py`; the tricks of "The N+ implementation details of
RLHF with PPO" used here are named where they happen. Everything needed to continue a run
(policy, value head, optimizer, scheduler, RNG, KL controller, score statistics, step) is saved
in `checkpoint-N/`; the prompt order is a function of the step, so a resumed run sees the same
prompts an uninterrupted one would, and the rollout drafter's recent answers are saved too, so it
decodes exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer, get_scheduler
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model

from pipelines.ppo import core
from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import RewardSource
from pipelines.ppo.rollout import Rollout, forward, micro_batches, sample, token_values
from pipelines.runner import Messages, NgramDrafter
from pipelines.runner.run import METRICS_FILE, append_metrics

STATE_FILE = "ppo_state.json"
DRAFTER_FILE = "drafter_state_{rank}.json"


class PolicyAndValue(torch.nn.Module):
    """One module so DDP/FSDP/DeepSpeed wrap, sync and checkpoint both with one optimizer."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module, share_prefix: bool) -> None:
        super().__init__()
        self.policy, self.value, self.share_prefix = policy, value, share_prefix

    # TRL's unwrap_model_for_generation switches gradient checkpointing off while generating.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def forward(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(response logits, log-probs of the response tokens, values); called through the DDP wrapper
        so gradients are synchronised."""
        rollout = Rollout([], query_ids, query_mask, response_ids, response_mask, [], torch.empty(0))
        logits, logprobs = forward(self.policy, rollout, temperature, self.share_prefix)
        return logits, logprobs, token_values(self.value, rollout, self.share_prefix)


class RunningMoments:
    """Running mean/std of scores (for `normalize_scores`), merged across processes."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, values: torch.Tensor) -> None:
        batch_mean, batch_var, batch_count = values.mean().item(), values.var(unbiased=False).item(), len(values)
        delta, total = batch_mean - self.mean, self.count + batch_count
        self.mean += delta * batch_count / total
        self.var = (
            self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        ) / total
        self.count = total

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / math.sqrt(self.var + 1e-8)


class PPOTrainer:
    def __init__(
        self,
        config: PPOConfig,
        policy: torch.nn.Module,
        value_model: torch.nn.Module,
        ref_policy: torch.nn.Module | None,
        reward: RewardSource,
        tokenizer: PreTrainedTokenizerBase,
        train_prompts: Sequence[Messages],
        eval_prompts: Sequence[Messages],
    ) -> None:
        self.config, self.tokenizer, self.reward = config, tokenizer, reward
        self.train_prompts, self.eval_prompts = list(train_prompts), list(eval_prompts)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            cpu=config.use_cpu or not torch.cuda.is_available(),
            log_with="tensorboard" if "tensorboard" in (config.report_to or []) else None,
            project_dir=config.output_dir,
        )
        for model in (policy, value_model, ref_policy):
            if model is not None:
                disable_dropout_in_model(model)  # N+ #5: dropout makes old and new log-probs disagree
        self.model = PolicyAndValue(policy, value_model, config.share_prompt_prefix)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(config.gradient_checkpointing_kwargs)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The optimizer a Trainer stage would build from the same arguments (`optim`: fused AdamW by default).
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
        optimizer = optimizer_cls(params, weight_decay=config.weight_decay, **optimizer_kwargs)
        scheduler = get_scheduler(config.lr_scheduler_type, optimizer, config.warmup_steps, config.max_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.ref_policy = ref_policy.to(self.accelerator.device).eval() if ref_policy is not None else None
        self.drafter = NgramDrafter()  # n-grams of earlier rollouts draft the next ones' tokens
        self.kl_ctl = core.KLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.score_moments = RunningMoments()
        self.step = 0
        self.output_dir = Path(config.output_dir)
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers("ppo")

    # -- prompts ---------------------------------------------------------------------------
    def prompts_for_step(self, step: int) -> list[Messages]:
        """This process's prompts for update `step`: a seeded shuffle per pass over the data."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_step = self.config.rollout_batch_size * world
        start = step * per_step
        chosen = []
        for position in range(
            start + rank * self.config.rollout_batch_size, start + (rank + 1) * self.config.rollout_batch_size
        ):
            epoch, offset = divmod(position, len(self.train_prompts))
            order = torch.randperm(
                len(self.train_prompts), generator=torch.Generator().manual_seed(self.config.seed + epoch)
            )
            chosen.append(self.train_prompts[order[offset]])
        return chosen

    # -- one update ------------------------------------------------------------------------
    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def _reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        temperature, share = self.config.temperature, self.config.share_prompt_prefix
        if self.ref_policy is not None:
            return forward(self.ref_policy, rollout, temperature, share)[1]
        with self._unwrapped().policy.disable_adapter():  # LoRA: the base weights are the reference
            return forward(self._unwrapped().policy, rollout, temperature, share)[1]

    def _score(self, rollout: Rollout) -> torch.Tensor:
        return self.reward(rollout.prompts, rollout.texts, rollout.sequence_ids, rollout.sequence_mask).to(
            self.accelerator.device
        )

    @torch.no_grad()
    def make_experience(self, prompts: list[Messages]) -> dict[str, Any]:
        config, share = self.config, self.config.share_prompt_prefix
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            rollout = sample(
                unwrapped.policy,
                self.tokenizer,
                prompts,
                config.max_new_tokens,
                config.temperature,
                config.generation_batch_size,
                config.stop_strings,
                self.drafter,
                config.draft_tokens,
            )
        mask = rollout.response_mask.float()
        # The old log-probs are those the tokens were sampled with, as TRL takes them from generate's
        # scores: the decode loop's logits are the policy's at the same positions and temperature.
        # After `generate` (stop strings) they take one more forward.
        from_sampling = rollout.logprobs is not None
        logprobs = rollout.logprobs.clone() if from_sampling else torch.zeros_like(mask)
        ref_logprobs, values = torch.zeros_like(mask), torch.zeros_like(mask)
        unwrapped = self._unwrapped()
        for index in micro_batches(rollout, torch.arange(len(prompts)), config.per_device_train_batch_size):
            part = rollout.select(index)
            width = part.response_ids.shape[1]
            if not from_sampling:
                logprobs[index, :width] = forward(unwrapped.policy, part, config.temperature, share)[1]
            ref_logprobs[index, :width] = self._reference_logprobs(part)
            values[index, :width] = token_values(unwrapped.value, part, share)
        raw_scores = self._score(rollout)
        scores = raw_scores.clone()
        if config.missing_eos_penalty is not None:  # N+ #23: penalise responses that never end
            scores = scores - config.missing_eos_penalty * (~rollout.ended).float()
        if config.normalize_scores:
            self.score_moments.update(self.accelerator.gather(scores))
            scores = self.score_moments.normalize(scores)
        kl = core.kl_estimate(logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards, non_score = core.token_rewards(scores, kl, self.kl_ctl.value, mask)
        if config.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae_advantages(rewards, values, mask, config.gamma, config.lam)
        advantages = core.masked_whiten(advantages, mask)
        return {
            "rollout": rollout,
            "logprobs": logprobs,
            "values": values * mask,
            "advantages": advantages,
            "returns": returns,
            "mask": mask,
            "scores": raw_scores,
            "kl": kl,
            "non_score": non_score,
        }

    def learn(self, batch: dict[str, Any]) -> dict[str, list[float]]:
        config, stats = (
            self.config,
            {
                "pg_loss": [],
                "vf_loss": [],
                "pg_clipfrac": [],
                "vf_clipfrac": [],
                "approxkl": [],
                "ratio": [],
                "entropy": [],
            },
        )
        size = len(batch["scores"])
        micro = config.per_device_train_batch_size
        minibatch = micro * config.gradient_accumulation_steps
        self.model.train()
        for _ in range(config.ppo_epochs):
            order = torch.randperm(size)
            for start in range(0, size, minibatch):
                for index in micro_batches(batch["rollout"], order[start : start + minibatch], micro):
                    part = batch["rollout"].select(index)
                    width = part.response_ids.shape[1]
                    keys = ("mask", "logprobs", "advantages", "values", "returns")
                    old = {key: batch[key][index, :width] for key in keys}
                    mask = old["mask"]
                    with self.accelerator.accumulate(self.model):
                        logits, logprobs, values = self.model(
                            part.query_ids, part.query_mask, part.response_ids, part.response_mask, config.temperature
                        )
                        pg_loss, pg_stats = core.policy_loss(
                            logprobs, old["logprobs"], old["advantages"], mask, config.cliprange
                        )
                        vf_loss, vf_stats = core.value_loss(
                            values, old["values"], old["returns"], mask, config.cliprange_value
                        )
                        loss = pg_loss + config.vf_coef * vf_loss
                        self.accelerator.backward(loss)
                        if self.accelerator.sync_gradients and config.max_grad_norm:
                            self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        entropy = core.masked_mean(core.entropy_from_logits(logits), mask)
                    for key, value in (
                        ("pg_loss", pg_loss),
                        ("vf_loss", vf_loss),
                        ("entropy", entropy),
                        ("pg_clipfrac", pg_stats["clipfrac"]),
                        ("vf_clipfrac", vf_stats["clipfrac"]),
                        ("approxkl", pg_stats["approxkl"]),
                        ("ratio", pg_stats["ratio"]),
                    ):
                        stats[key].append(float(value))
        return stats

    # -- metrics ---------------------------------------------------------------------------
    def _mean(self, value: torch.Tensor | float) -> float:
        """Mean over all processes."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(tensor).mean().item()

    def step_metrics(self, batch: dict[str, Any], stats: dict[str, list[float]], seconds: float) -> dict[str, float]:
        mask, rollout = batch["mask"], batch["rollout"]
        scores = self.accelerator.gather(batch["scores"])
        kl_per_sequence = batch["kl"].sum(1)
        episodes = len(scores)
        return {
            "objective/scores": scores.mean().item(),
            "objective/scores_std": scores.std().item() if episodes > 1 else 0.0,
            "objective/kl": self._mean(kl_per_sequence.mean()),
            "objective/non_score_reward": self._mean(batch["non_score"].sum(1).mean()),
            "objective/rlhf_reward": self._mean((batch["scores"] + batch["non_score"].sum(1)).mean()),
            "objective/entropy": self._mean(sum(stats["entropy"]) / len(stats["entropy"])),
            "loss/policy": self._mean(sum(stats["pg_loss"]) / len(stats["pg_loss"])),
            "loss/value": self._mean(sum(stats["vf_loss"]) / len(stats["vf_loss"])),
            "policy/clipfrac": self._mean(sum(stats["pg_clipfrac"]) / len(stats["pg_clipfrac"])),
            "policy/approxkl": self._mean(sum(stats["approxkl"]) / len(stats["approxkl"])),
            "val/clipfrac": self._mean(sum(stats["vf_clipfrac"]) / len(stats["vf_clipfrac"])),
            "val/ratio": self._mean(sum(stats["ratio"]) / len(stats["ratio"])),
            "val/advantages_mean": self._mean(core.masked_mean(batch["advantages"], mask)),
            "response/length_mean": self._mean(mask.sum(1).mean()),
            "response/eos_rate": self._mean(rollout.ended.float().mean()),
            "kl_coef": self.kl_ctl.value,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "episodes": (self.step + 1) * episodes,
            "episodes_per_second": episodes / seconds,
        }

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        directory = self.output_dir / f"checkpoint-{self.step}"
        self.accelerator.save_state(str(directory))
        drafter_file = directory / DRAFTER_FILE.format(rank=self.accelerator.process_index)
        drafter_file.write_text(json.dumps(self.drafter.state_dict()))  # each process drafts from its own rollouts
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "global_step": self.step,
                "kl_ctl": self.kl_ctl.state_dict(),
                "score_moments": vars(self.score_moments),
            }
            (directory / STATE_FILE).write_text(json.dumps(state))
            # written last: the runner takes a checkpoint with trainer_state.json as complete
            (directory / "trainer_state.json").write_text(json.dumps({"global_step": self.step}))
            checkpoints = sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            limit = self.config.save_total_limit
            for old in checkpoints[:-limit] if limit else []:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, directory: str) -> None:
        self.accelerator.load_state(directory)
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        self.step = int(state["global_step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        vars(self.score_moments).update(state["score_moments"])
        drafter_file = Path(directory) / DRAFTER_FILE.format(rank=self.accelerator.process_index)
        if drafter_file.is_file():
            self.drafter.load_state_dict(json.loads(drafter_file.read_text()))

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts: mean score, length and end-of-sequence rate."""
        if not self.eval_prompts:
            return {}
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            rollout = sample(
                unwrapped.policy,
                self.tokenizer,
                self.eval_prompts,
                self.config.max_new_tokens,
                None,
                self.config.generation_batch_size,
                self.config.stop_strings,
                self.drafter,
                self.config.draft_tokens,
            )
        scores = self._score(rollout)
        return {
            "score_mean": scores.mean().item(),
            "length_mean": rollout.response_mask.sum(1).float().mean().item(),
            "eos_rate": rollout.ended.float().mean().item(),
        }

    # -- the loop --------------------------------------------------------------------------
    def train(self, resume_from: str | None = None) -> dict[str, Any]:
        config = self.config
        if resume_from:
            self.load_checkpoint(resume_from)
        else:
            set_seed(config.seed)
        summary: dict[str, Any] = {"eval_before": self.evaluate() if not resume_from else None}
        metrics_path = self.output_dir / METRICS_FILE
        start = time.perf_counter()
        with tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="PPO updates",
            unit="update",
            disable=not self.accelerator.is_main_process,
        ) as bar:
            while self.step < config.max_steps:
                tick = time.perf_counter()
                batch = self.make_experience(self.prompts_for_step(self.step))
                stats = self.learn(batch)
                self.scheduler.step()
                metrics = self.step_metrics(batch, stats, time.perf_counter() - tick)
                self.kl_ctl.update(metrics["objective/kl"], config.rollout_batch_size * self.accelerator.num_processes)
                self.step += 1
                if self.step % config.logging_steps == 0 or self.step == config.max_steps:
                    if self.accelerator.is_main_process:
                        append_metrics(metrics_path, {"step": self.step, **metrics})
                    self.accelerator.log(metrics, step=self.step)
                if config.sample_every and self.step % config.sample_every == 0 and self.accelerator.is_main_process:
                    self._write_samples(batch)
                if config.save_strategy != "no" and self.step % config.save_steps == 0:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
        summary["train_runtime"] = time.perf_counter() - start
        summary["eval_after"] = self.evaluate()
        return summary

    def _write_samples(self, batch: dict[str, Any], count: int = 4) -> None:
        rollout = batch["rollout"]
        with (self.output_dir / "samples.jsonl").open("a", encoding="utf-8") as handle:
            for i in range(min(count, len(rollout.texts))):
                row = {
                    "step": self.step,
                    "prompt": rollout.prompts[i][-1]["content"],
                    "response": rollout.texts[i],
                    "score": float(batch["scores"][i]),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def save(self) -> None:
        """The policy (LoRA: adapter) in output_dir and the value model in output_dir/value_model, once."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            unwrapped = self._unwrapped()
            unwrapped.policy.save_pretrained(self.output_dir)
            unwrapped.value.save_pretrained(self.output_dir / "value_model")
            self.tokenizer.save_pretrained(self.output_dir)
            self.tokenizer.save_pretrained(self.output_dir / "value_model")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()  # closes the trackers and the process group: nothing collective after this
