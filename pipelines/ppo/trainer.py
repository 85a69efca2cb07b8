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
import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, Trainer, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model

from pipelines.cli import on_interrupt
from pipelines.eval.verifiers import Verifier
from pipelines.ppo import core
from pipelines.ppo.config import PPOConfig
from pipelines.ppo.rewards import RewardSource
from pipelines.ppo.rollout import Rollout, forward, forward_with_values, micro_batches, sample, token_values
from pipelines.runner import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    Messages,
    NgramDrafter,
    append_metrics,
    checkpoint_dir,
    complete_checkpoint,
    enable_cpu_fsdp,
)

STATE_FILE = "ppo_state.json"
VALUE_HEAD_FILE = "value_head.safetensors"  # the shared backbone's value head, beside the policy
ROLLOUT_STATE_FILE = "rollout_state_{rank}.pt"
# Parameters weight decay leaves alone, as the Trainer stages do (biases and norms).
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


class ValueHead(torch.nn.Module):
    """V(s) read off the policy's own last hidden state (`shared_backbone`): one trunk for policy and value.

    Computed in fp32 whatever autocast says (a value rounded to bf16 moves by ~0.4 %); weights drawn from
    N(0, 1/sqrt(hidden + 1)), bias 0, as the N+ implementation details initialise reward and value heads.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.score.weight, std=1 / math.sqrt(hidden_size + 1))
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return self.score(hidden.float()).squeeze(-1)


def configure_deepspeed(accelerator: Accelerator, config: PPOConfig) -> None:
    """Batch keys DeepSpeed would read off a prepared dataloader (PPO prepares none: left 'auto', accelerate
    refuses to start): the micro-batch, the micro-batches a mini-batch accumulates (DeepSpeed steps once a
    mini-batch, where `accumulate_gradients` marks the boundary), and PPO's gradient clipping (DeepSpeed clips
    itself; accelerate's default would be 1.0 whatever `max_grad_norm` says)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    micro, steps = config.per_device_train_batch_size, config.gradient_accumulation_steps
    plugin.deepspeed_config.update(
        {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": steps,
            "train_batch_size": micro * steps * accelerator.num_processes,
            "gradient_clipping": config.max_grad_norm or 0.0,
        }
    )


class PolicyAndValue(torch.nn.Module):
    """One module so DDP/FSDP/DeepSpeed wrap, sync and checkpoint both with one optimizer. `value` is a model
    of its own (a backbone + `score` head) or a `ValueHead` on the policy's trunk.

    Every forward of the trained weights goes through `forward` (experience and training alike): FSDP gathers
    the root's shards in its forward hooks, and accelerate's bf16 autocast wraps it, so the old values and
    log-probs are computed the way the training forward recomputes them.
    """

    def __init__(
        self, policy: torch.nn.Module, value: torch.nn.Module, share_prefix: bool, pad_id: int, eos_id: int
    ) -> None:
        super().__init__()
        self.policy, self.value, self.share_prefix = policy, value, share_prefix
        self.pad_id, self.eos_id = pad_id, eos_id
        # FSDP's transformer auto-wrap shards the layer classes the wrapped module names (the decoder layers)
        self._no_split_modules = sorted(
            {name for model in (policy, value) for name in getattr(model, "_no_split_modules", None) or ()}
        )

    @property
    def shared_backbone(self) -> bool:
        return isinstance(self.value, ValueHead)

    # TRL's unwrap_model_for_generation reads this name to switch checkpointing off while generating;
    # transformers 5 calls it is_activation_checkpointing (the old name warns).
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_activation_checkpointing", False))

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
        with_logprobs: bool = True,
        with_values: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(response logits, log-probs of the response tokens, values), None for what is not asked (with a
        shared backbone one forward gives all three); called through the wrapper (DDP, FSDP, DeepSpeed) so
        gradients are synchronised and shards gathered."""
        rollout = Rollout([], query_ids, query_mask, response_ids, response_mask, [], torch.empty(0))
        logits = logprobs = values = None
        if with_logprobs or (with_values and self.shared_backbone):
            head = self.value if with_values and self.shared_backbone else None
            args = (rollout, temperature, self.share_prefix, self.pad_id, self.eos_id)
            logits, logprobs, values = forward_with_values(self.policy, *args, head)
        if with_values and not self.shared_backbone:
            values = token_values(self.value, rollout, self.share_prefix)
        return logits, logprobs, values


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
        # `bf16` (set from `precision`): accelerate runs the policy/value forward under bf16 autocast; the
        # weights it trains and AdamW's state stay fp32.
        enable_cpu_fsdp()  # an FSDP launch config shards on CPU processes too
        self.accelerator = Accelerator(
            cpu=config.use_cpu or not torch.cuda.is_available(),
            mixed_precision="bf16" if config.bf16 else "no",
            log_with="tensorboard" if "tensorboard" in (config.report_to or []) else None,
            project_dir=config.output_dir,
        )
        configure_deepspeed(self.accelerator, config)
        fsdp = self.accelerator.state.fsdp_plugin if self.accelerator.is_fsdp2 else None
        if fsdp is not None and fsdp.mixed_precision_policy is not None:
            # FSDP would cast the forward's outputs to bf16: the log-probs and values PPO's ratio and losses read
            fsdp.mixed_precision_policy = dataclasses.replace(fsdp.mixed_precision_policy, output_dtype=None)
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        # DeepSpeed divides each micro-batch's loss by its accumulation steps; ours are already token means
        # over the whole mini-batch.
        self._backward_kwargs: dict[str, Any] = {"scale_wrt_gas": False} if deepspeed else {}
        self._frozen_engines: list[Any] = []
        for model in (policy, value_model, ref_policy):
            if model is not None:
                disable_dropout_in_model(model)  # N+ #5: dropout makes old and new log-probs disagree
        # Under FSDP the trained module computes every row in full: a shared prefix runs each layer twice in one
        # forward, and FSDP2 frees a layer's gathered weights before the first run's backward needs them.
        share = config.share_prompt_prefix and not self.accelerator.is_fsdp2
        self.model = PolicyAndValue(policy, value_model, share, tokenizer.pad_token_id, tokenizer.eos_token_id)
        # Rollouts sample from a copy of the policy that each update refreshes: under FSDP a full one (the trained
        # module is sharded); under bf16 a bf16 one, as generation loads bf16 weights (autocast over the fp32
        # weights casts every weight again at every decoded token: 1.47x fp32's tokens/s against 1.84x for bf16
        # weights, bench.precision rollout / generation). Not with LoRA (the point is one model's memory) nor
        # DeepSpeed (ZeRO-3 gathers its partitions for sampling). The old log-probs come from the training
        # forward under bf16 either way (`experience`). `bf16_rollout_copy: false` trades the speed for memory.
        bf16_copy = config.bf16 and config.bf16_rollout_copy and not deepspeed and not hasattr(policy, "peft_config")
        self.rollout_copy = None
        if self.accelerator.is_fsdp2 or bf16_copy:
            self.rollout_copy = copy.deepcopy(policy).requires_grad_(False)
            if bf16_copy:
                self.rollout_copy.to(torch.bfloat16)
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
        # The frozen models (reference, reward) are replicated on every process (FSDP, DDP, ZeRO-2) or, under
        # ZeRO-3, sharded by an inference engine of their own.
        self.ref_policy = self._frozen(ref_policy) if ref_policy is not None else None
        if isinstance(getattr(reward, "model", None), torch.nn.Module):
            reward.model = self._frozen(reward.model)
        self.drafter = NgramDrafter()  # n-grams of earlier rollouts draft the next ones' tokens
        # Each process its own sampling stream: with one seed for all, a prompt two ranks both see would
        # get the same answer on both (half the exploration for the same compute).
        rank = self.accelerator.process_index
        self.sampling = torch.Generator(device=self.accelerator.device).manual_seed(config.seed * 1000 + rank)
        self.kl_ctl = core.KLController(config.kl_coef, config.kl_target, config.kl_horizon)
        self.score_moments = RunningMoments()
        self.step = 0
        self.output_dir = Path(config.output_dir)

    def _frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model on this process's device, in eval mode. Under DeepSpeed, an inference engine of its
        own (TRL's `prepare_deepspeed`): ZeRO-3 partitions it like the trained model, other stages replicate
        it. The module is what is called (ZeRO-3's hooks sit on its layers and gather their parameters); the
        engine is kept alive beside it."""
        model = model.to(self.accelerator.device).eval()
        if self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            return model
        engine = prepare_deepspeed(model, self.accelerator)
        self._frozen_engines.append(engine)
        return engine.module

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

    def _trained_forward(
        self, rollout: Rollout, with_logprobs: bool = True, with_values: bool = True
    ) -> tuple[Any, Any, Any]:
        """The policy/value forward through the wrapped model (see `PolicyAndValue.forward`)."""
        return self.model(
            rollout.query_ids,
            rollout.query_mask,
            rollout.response_ids,
            rollout.response_mask,
            self.config.temperature,
            with_logprobs,
            with_values,
        )

    @torch.no_grad()
    def _reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        unwrapped, config = self._unwrapped(), self.config
        if self.ref_policy is not None:
            args = (rollout, config.temperature, config.share_prompt_prefix, unwrapped.pad_id, unwrapped.eos_id)
            return forward(self.ref_policy, *args)[1]
        with unwrapped.policy.disable_adapter():  # LoRA: the base weights are the reference
            return self._trained_forward(rollout, with_values=False)[1]

    def _score(self, rollout: Rollout) -> torch.Tensor:
        return self.reward(rollout).to(self.accelerator.device)

    @contextlib.contextmanager
    def _sampling_policy(self) -> Iterator[torch.nn.Module]:
        """The policy rollouts and evaluation sample from, under the run's autocast: the trained module (ZeRO-3:
        its partitions gathered meanwhile, by TRL's `unwrap_model_for_generation`) or, under FSDP, the full
        copy, refreshed from the shards (every process gathers every parameter once an update)."""
        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped, self.accelerator.autocast():
            if self.rollout_copy is None:
                yield unwrapped.policy
                return
            with torch.no_grad():
                for target, source in zip(self.rollout_copy.parameters(), unwrapped.policy.parameters(), strict=True):
                    target.copy_(source.full_tensor() if isinstance(source, DTensor) else source)
            yield self.rollout_copy

    def _sample(self, prompts: list[Messages], temperature: float | None) -> Rollout:
        config = self.config
        with self._sampling_policy() as policy:
            return sample(
                policy,
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

    def make_experience(self, prompts: list[Messages]) -> dict[str, Any]:
        return self.experience(self._sample(prompts, self.config.temperature))

    @torch.no_grad()
    def experience(self, rollout: Rollout) -> dict[str, Any]:
        """The rollout scored: old log-probs and values, reference log-probs, rewards with the KL penalty,
        advantages and returns (GAE), whitened with every process's statistics."""
        config = self.config
        mask = rollout.response_mask.float()
        # The old log-probs are those the tokens were sampled with, as TRL takes them from generate's
        # scores: in fp32 the decode loop's logits are the training forward's (SmolLM2: to 2e-5), and a
        # forward is saved. Not under bf16, where the two round differently (SmolLM2, 24 tokens: mean |diff|
        # 0.036, max 0.33; the first epoch's ratio would start off 1), nor after `generate` (stop strings), nor
        # with a shared backbone, whose forward for the values gives them anyway.
        from_sampling = rollout.logprobs is not None and not config.bf16 and not self._unwrapped().shared_backbone
        logprobs = rollout.logprobs.clone() if from_sampling else torch.zeros_like(mask)
        ref_logprobs, values = torch.zeros_like(mask), torch.zeros_like(mask)
        for index in micro_batches(rollout, torch.arange(len(mask)), config.per_device_train_batch_size):
            part = rollout.select(index)
            width = part.response_ids.shape[1]
            _, part_logprobs, values[index, :width] = self._trained_forward(part, with_logprobs=not from_sampling)
            if not from_sampling:
                logprobs[index, :width] = part_logprobs
            ref_logprobs[index, :width] = self._reference_logprobs(part)
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
            if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
                # DeepSpeed accumulates itself and steps at the boundary accelerate tells it (see configure_deepspeed)
                self.accelerator.gradient_state._set_sync_gradients(last)
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                logits, logprobs, values = self._trained_forward(part)
                pg_loss, pg_stats = core.policy_loss(
                    logprobs, old["logprobs"], old["advantages"], micro_mask, config.cliprange, tokens
                )
                vf_loss, vf_stats = core.value_loss(
                    values, old["values"], old["returns"], micro_mask, config.cliprange_value, tokens
                )
                self.accelerator.backward(pg_loss + config.vf_coef * vf_loss, **self._backward_kwargs)
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
        if self.accelerator.is_main_process:  # one TensorBoard run: a resumed one hides the stopped run's later steps
            purge = {"tensorboard": {"purge_step": self.step + 1}} if resume_from else {}
            self.accelerator.init_trackers(TENSORBOARD_DIR, init_kwargs=purge)
            on_interrupt(self._close_trackers)  # a stopped run's buffered events reach the disk
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

    def _close_trackers(self) -> None:
        for tracker in self.accelerator.trackers:
            tracker.finish()

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
        """The policy (LoRA: adapter) in output_dir and the value model in output_dir/value_model (a shared
        backbone's value head: value_head.safetensors), once. The weights are gathered first, on every
        process (a collective): FSDP's shards and ZeRO-3's partitions become whole tensors, not a shard."""
        self.accelerator.wait_for_everyone()
        state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            unwrapped = self._unwrapped()
            policy, value = (
                {k.removeprefix(p): v for k, v in state.items() if k.startswith(p)} for p in ("policy.", "value.")
            )
            unwrapped.policy.save_pretrained(self.output_dir, state_dict=policy)
            self.tokenizer.save_pretrained(self.output_dir)
            if unwrapped.shared_backbone:
                save_file({k: v.contiguous() for k, v in value.items()}, self.output_dir / VALUE_HEAD_FILE)
            else:
                unwrapped.value.save_pretrained(self.output_dir / "value_model", state_dict=value)
                self.tokenizer.save_pretrained(self.output_dir / "value_model")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()  # closes the trackers and the process group: nothing collective after this
