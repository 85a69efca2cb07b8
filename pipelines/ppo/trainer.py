"""The PPO loop on accelerate: rollout -> rewards with KL penalty -> GAE -> clipped updates.

Each update maps to the equations in `core.py`; the tricks of "The N+ implementation details of
RLHF with PPO" used here are named where they happen. What makes N processes give what one process
gives:

- the learning-rate schedule steps once per update (it is not handed to `accelerator.prepare`, whose
  wrapper would step it once per process);
- every process samples with its own random stream (seed and rank), so two ranks never answer a
  prompt alike, and saves that stream in checkpoints, so a resumed run samples what it would have;
- losses are token means over the whole mini-batch, on every rank alike (the token count is summed
  over processes), and advantages are whitened with every process's statistics.

Everything needed to continue a run (policy, value head, optimizer, scheduler, RNG, KL controller,
score statistics, step, each process's sampling stream and drafter) is saved in `checkpoint-N/`; the
prompt order is a function of the step, so a resumed run sees the same prompts an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model

from pipelines.eval.verifiers import Verifier
from pipelines.ppo import core
from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import RewardSource
from pipelines.ppo.rollout import Rollout, forward, micro_batches, sample, token_values
from pipelines.runner import (
    METRICS_FILE,
    Messages,
    NgramDrafter,
    append_metrics,
    checkpoint_dir,
    complete_checkpoint,
)

STATE_FILE = "ppo_state.json"
ROLLOUT_STATE_FILE = "rollout_state_{rank}.pt"
# Parameters weight decay leaves alone, as the Trainer stages do (biases and norms).
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


class PolicyAndValue(torch.nn.Module):
    """One module so DDP/FSDP/DeepSpeed wrap, sync and checkpoint both with one optimizer."""

    def __init__(
        self, policy: torch.nn.Module, value: torch.nn.Module, share_prefix: bool, pad_id: int, eos_id: int
    ) -> None:
        super().__init__()
        self.policy, self.value, self.share_prefix = policy, value, share_prefix
        self.pad_id, self.eos_id = pad_id, eos_id

    # TRL's unwrap_model_for_generation switches gradient checkpointing off while generating.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def policy_forward(self, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        return forward(self.policy, rollout, temperature, self.share_prefix, self.pad_id, self.eos_id)

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
        logits, logprobs = self.policy_forward(rollout, temperature)
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


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, weight decay on matrices only (not on biases and norms)."""
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if name in decay], "weight_decay": weight_decay},
        {"params": [p for name, p in named if name not in decay], "weight_decay": 0.0},
    ]


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
        eval_rows: Sequence[dict[str, Any]] = (),
        verifier: Verifier | None = None,
    ) -> None:
        self.config, self.tokenizer, self.reward = config, tokenizer, reward
        self.train_prompts, self.eval_prompts = list(train_prompts), list(eval_prompts)
        self.eval_rows, self.verifier = list(eval_rows)[: len(self.eval_prompts)], verifier
        # No gradient_accumulation_steps here: `learn` accumulates itself, dividing by the mini-batch's
        # token count (accelerate would divide each micro-batch's loss by the number of micro-batches).
        self.accelerator = Accelerator(
            cpu=config.use_cpu or not torch.cuda.is_available(),
            log_with="tensorboard" if "tensorboard" in (config.report_to or []) else None,
            project_dir=config.output_dir,
        )
        for model in (policy, value_model, ref_policy):
            if model is not None:
                disable_dropout_in_model(model)  # N+ #5: dropout makes old and new log-probs disagree
        self.model = PolicyAndValue(
            policy, value_model, config.share_prompt_prefix, tokenizer.pad_token_id, tokenizer.eos_token_id
        )
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(config.gradient_checkpointing_kwargs)
        # The optimizer a Trainer stage would build from the same arguments (`optim`: fused AdamW by default).
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(config)
        optimizer = optimizer_cls(parameter_groups(self.model, config.weight_decay), **optimizer_kwargs)
        # One scheduler step per update. Not through `prepare`: its wrapper steps the schedule once per
        # process at every step, so N processes would run it N times too fast.
        self.scheduler = get_scheduler(
            config.lr_scheduler_type, optimizer, config.get_warmup_steps(config.max_steps), config.max_steps
        )
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.ref_policy = ref_policy.to(self.accelerator.device).eval() if ref_policy is not None else None
        self.drafter = NgramDrafter()  # n-grams of earlier rollouts draft the next ones' tokens
        # Each process its own sampling stream: with one seed for all, a prompt two ranks both see would
        # get the same answer on both (half the exploration for the same compute).
        rank = self.accelerator.process_index
        self.sampling = torch.Generator(device=self.accelerator.device).manual_seed(config.seed * 1000 + rank)
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
        unwrapped, config = self._unwrapped(), self.config
        if self.ref_policy is not None:
            args = (rollout, config.temperature, config.share_prompt_prefix, unwrapped.pad_id, unwrapped.eos_id)
            return forward(self.ref_policy, *args)[1]
        with unwrapped.policy.disable_adapter():  # LoRA: the base weights are the reference
            return unwrapped.policy_forward(rollout, config.temperature)[1]

    def _score(self, rollout: Rollout) -> torch.Tensor:
        return self.reward(rollout).to(self.accelerator.device)

    def _sample(self, prompts: list[Messages], temperature: float | None) -> Rollout:
        config = self.config
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            return sample(
                unwrapped.policy,
                self.tokenizer,
                prompts,
                config.max_new_tokens,
                temperature,
                config.generation_batch_size,
                config.stop_strings,
                self.drafter,
                config.draft_tokens,
                self.sampling,
            )

    def _global_moments(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance over every process's masked entries (one all-reduce)."""
        return core.moments_from_sums(self.accelerator.reduce(core.masked_sums(values, mask), "sum"))

    @torch.no_grad()
    def make_experience(self, prompts: list[Messages]) -> dict[str, Any]:
        config, share = self.config, self.config.share_prompt_prefix
        rollout = self._sample(prompts, config.temperature)
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
                logprobs[index, :width] = unwrapped.policy_forward(part, config.temperature)[1]
            ref_logprobs[index, :width] = self._reference_logprobs(part)
            values[index, :width] = token_values(unwrapped.value, part, share)
        raw_scores = self._score(rollout)
        scores = raw_scores.clone()
        if config.missing_eos_penalty is not None:  # N+ #23: penalise responses that never end
            scores = scores - config.missing_eos_penalty * (~rollout.ended).float()
        if config.normalize_scores:
            self.score_moments.update(self.accelerator.gather(scores))
            scores = self.score_moments.normalize(scores)
        kl_penalised = core.kl_estimate(logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards, non_score = core.token_rewards(scores, kl_penalised, self.kl_ctl.value, mask)
        if config.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False, moments=self._global_moments(rewards, mask))
        advantages, returns = core.gae_advantages(rewards, values, mask, config.gamma, config.lam)
        advantages = core.masked_whiten(advantages, mask, moments=self._global_moments(advantages, mask))
        return {
            "rollout": rollout,
            "logprobs": logprobs,
            "values": values * mask,
            "advantages": advantages,
            "returns": returns,
            "mask": mask,
            "scores": raw_scores,
            "kl_k1": core.kl_estimate(logprobs, ref_logprobs, "k1") * mask,
            "kl_k3": core.kl_estimate(logprobs, ref_logprobs, "k3") * mask,
            "non_score": non_score,
        }

    def accumulate_gradients(self, batch: dict[str, Any], rows: torch.Tensor) -> dict[str, float]:
        """The gradient of one mini-batch (`rows` of the rollout), accumulated over its micro-batches; the same
        for any split into micro-batches. Returns its diagnostics, token-weighted over the mini-batch."""
        config = self.config
        mask = batch["mask"]
        # Token count of this mini-batch on every process, summed: each rank divides its token losses by
        # total / world, and DDP's mean over ranks makes that the token mean of the global mini-batch.
        tokens = self.accelerator.reduce(mask[rows].sum(), "sum") / self.accelerator.num_processes
        parts = micro_batches(batch["rollout"], rows, config.per_device_train_batch_size)
        totals: dict[str, float] = {}
        for number, index in enumerate(parts):
            part = batch["rollout"].select(index)
            width = part.response_ids.shape[1]
            old = {key: batch[key][index, :width] for key in ("mask", "logprobs", "advantages", "values", "returns")}
            micro_mask = old["mask"]
            # gradients are averaged across processes at the mini-batch's last micro-batch only
            last = number == len(parts) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                logits, logprobs, values = self.model(
                    part.query_ids, part.query_mask, part.response_ids, part.response_mask, config.temperature
                )
                pg_loss, pg_stats = core.policy_loss(
                    logprobs, old["logprobs"], old["advantages"], micro_mask, config.cliprange, tokens
                )
                vf_loss, vf_stats = core.value_loss(
                    values, old["values"], old["returns"], micro_mask, config.cliprange_value, tokens
                )
                self.accelerator.backward(pg_loss + config.vf_coef * vf_loss)
            with torch.no_grad():
                weight = max(float(micro_mask.sum()), 1.0)  # the micro-batch's means count by its tokens
                entropy = core.masked_mean(core.entropy_from_logits(logits), micro_mask)
                for key, value in (
                    ("loss/policy", pg_loss * tokens / weight),  # the losses are sums / tokens
                    ("loss/value", vf_loss * tokens / weight),
                    ("objective/entropy", entropy),
                    ("policy/clipfrac", pg_stats["clipfrac"]),
                    ("val/clipfrac", vf_stats["clipfrac"]),
                    ("policy/approxkl", pg_stats["approxkl"]),
                    ("val/ratio", pg_stats["ratio"]),
                ):
                    totals[key] = totals.get(key, 0.0) + float(value) * weight
        local_tokens = float(mask[rows].sum().clamp(min=1))
        return {key: value / local_tokens for key, value in totals.items()}

    def learn_minibatch(self, batch: dict[str, Any], rows: torch.Tensor) -> dict[str, float]:
        """One optimizer step on one mini-batch."""
        stats = self.accumulate_gradients(batch, rows)
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return stats

    def learn(self, batch: dict[str, Any]) -> dict[str, float]:
        """`ppo_epochs` passes over the rollout in shuffled mini-batches; the mean of their diagnostics."""
        config = self.config
        size = len(batch["scores"])
        minibatch = config.per_device_train_batch_size * config.gradient_accumulation_steps
        self.model.train()
        stats: list[dict[str, float]] = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(size)
            for start in range(0, size, minibatch):
                stats.append(self.learn_minibatch(batch, order[start : start + minibatch]))
        return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}

    # -- metrics ---------------------------------------------------------------------------
    def _mean(self, value: torch.Tensor | float) -> float:
        """Mean over all processes."""
        tensor = torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).reshape(1)
        return self.accelerator.gather(tensor).mean().item()

    def step_metrics(
        self, batch: dict[str, Any], stats: dict[str, float], learning_rate: float, seconds: float
    ) -> dict[str, float]:
        mask, rollout = batch["mask"], batch["rollout"]
        scores = self.accelerator.gather(batch["scores"])
        episodes = len(scores)
        return {
            "objective/scores": scores.mean().item(),
            "objective/scores_std": scores.std().item() if episodes > 1 else 0.0,
            # k3, never negative: what the adaptive controller steers by
            "objective/kl": self._mean(batch["kl_k3"].sum(1).mean()),
            "objective/kl_k1": self._mean(batch["kl_k1"].sum(1).mean()),
            "objective/non_score_reward": self._mean(batch["non_score"].sum(1).mean()),
            "objective/rlhf_reward": self._mean((batch["scores"] + batch["non_score"].sum(1)).mean()),
            **{key: self._mean(value) for key, value in stats.items()},
            "val/advantages_mean": self._mean(core.masked_mean(batch["advantages"], mask)),
            "response/length_mean": self._mean(mask.sum(1).mean()),
            "response/eos_rate": self._mean(rollout.ended.float().mean()),
            "kl_coef": self.kl_ctl.value,
            "learning_rate": learning_rate,
            "episodes": (self.step + 1) * episodes,
            "episodes_per_second": episodes / seconds,
        }

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        directory = checkpoint_dir(self.output_dir, self.step)
        self.accelerator.save_state(str(directory))
        # each process drafts from its own rollouts and samples from its own stream
        rollout_state = {"drafter": self.drafter.state_dict(), "sampling": self.sampling.get_state()}
        torch.save(rollout_state, directory / ROLLOUT_STATE_FILE.format(rank=self.accelerator.process_index))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            state = {
                "global_step": self.step,
                "kl_ctl": self.kl_ctl.state_dict(),
                "score_moments": vars(self.score_moments),
            }
            (directory / STATE_FILE).write_text(json.dumps(state))
        complete_checkpoint(self.output_dir, self.step, self.config.save_total_limit)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, directory: str) -> None:
        self.accelerator.load_state(directory)
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        self.step = int(state["global_step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        vars(self.score_moments).update(state["score_moments"])
        rollout_file = Path(directory) / ROLLOUT_STATE_FILE.format(rank=self.accelerator.process_index)
        rollout_state = torch.load(rollout_file, weights_only=False)
        self.drafter.load_state_dict(rollout_state["drafter"])
        self.sampling.set_state(rollout_state["sampling"])

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts: mean reward score, length, end-of-sequence rate and,
        with a verifier, the share it judges right (what the learned score should track)."""
        if not self.eval_prompts:
            return {}
        rollout = self._sample(self.eval_prompts, None)
        scores = self._score(rollout)
        result = {
            "score_mean": scores.mean().item(),
            "length_mean": rollout.response_mask.sum(1).float().mean().item(),
            "eos_rate": rollout.ended.float().mean().item(),
        }
        if self.verifier is not None and self.eval_rows:
            report = self.verifier.evaluate(self.eval_rows, rollout.texts, (~rollout.ended).tolist())
            result["verifier_accuracy"] = float(report[self.verifier.metric])
        return result

    def _log_eval(self, metrics_path: Path, figures: dict[str, float]) -> None:
        if figures and self.accelerator.is_main_process:
            append_metrics(metrics_path, {"step": self.step, **{f"eval/{k}": v for k, v in figures.items()}})

    # -- the loop --------------------------------------------------------------------------
    def train(self, resume_from: str | None = None) -> dict[str, Any]:
        config = self.config
        if resume_from:
            self.load_checkpoint(resume_from)
        else:
            set_seed(config.seed)
        metrics_path = self.output_dir / METRICS_FILE
        summary: dict[str, Any] = {"eval_before": self.evaluate() if not resume_from else None}
        if summary["eval_before"]:
            self._log_eval(metrics_path, summary["eval_before"])
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
                learning_rate = self.scheduler.get_last_lr()[0]  # the rate this update trains at
                stats = self.learn(batch)
                self.scheduler.step()
                metrics = self.step_metrics(batch, stats, learning_rate, time.perf_counter() - tick)
                self.kl_ctl.update(metrics["objective/kl"], config.rollout_batch_size * self.accelerator.num_processes)
                self.step += 1
                if self.step % config.logging_steps == 0 or self.step == config.max_steps:
                    if self.accelerator.is_main_process:
                        append_metrics(metrics_path, {"step": self.step, **metrics})
                    self.accelerator.log(metrics, step=self.step)
                if config.eval_every and self.step % config.eval_every == 0 and self.step < config.max_steps:
                    self._log_eval(metrics_path, self.evaluate())
                if config.sample_every and self.step % config.sample_every == 0 and self.accelerator.is_main_process:
                    self._write_samples(batch)
                if config.save_strategy != "no" and self.step % config.save_steps == 0:
                    self.save_checkpoint()
                bar.update(1)
                bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.3f}")
        summary["train_runtime"] = time.perf_counter() - start
        summary["eval_after"] = self.evaluate()
        self._log_eval(metrics_path, summary["eval_after"])
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
