"""PPO configuration: TrainingArguments (output, seed, optimizer, schedule, logging, checkpoints)
plus the RL knobs, each named after what it controls."""

from __future__ import annotations

import dataclasses

from transformers import TrainingArguments

from pipelines.ppo.core import KLEstimator


@dataclasses.dataclass
class PPOConfig(TrainingArguments):
    """One PPO update = one rollout batch of `rollout_batch_size` prompts per process, then
    `ppo_epochs` passes over it in minibatches of `per_device_train_batch_size *
    gradient_accumulation_steps`. `max_steps` counts updates."""

    # Models (the policy is ModelConfig.model_name_or_path)
    reward_model_path: str | None = dataclasses.field(
        default=None, metadata={"help": "A sequence-classification model with one output (pipelines.reward output)."}
    )
    reward_function: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Instead of a reward model: 'module:function' taking (prompts, responses) -> list[float]."},
    )
    value_model_path: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Value model init (default: the reward model if it shares the policy's tokenizer, "
            "else the policy with a fresh head)."
        },
    )
    shared_backbone: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Value head on the policy's trunk: one backbone for policy and value (one forward, and a "
            "model's weights, gradients and AdamW state less); the value loss then also trains the trunk. False: "
            "a value model of its own (value_model_path)."
        },
    )
    ref_model_path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Frozen reference (default: the initial policy; with LoRA, its adapter-disabled base)."},
    )
    # Optimizer: TrainingArguments' `optim` (fused AdamW by default); PPO's customary larger epsilon
    adam_epsilon: float = dataclasses.field(default=1e-5, metadata={"help": "AdamW epsilon (PPO custom: 1e-5)."})
    # Rollouts
    rollout_batch_size: int = dataclasses.field(default=16, metadata={"help": "Prompts per update, per process."})
    ppo_epochs: int = dataclasses.field(default=4, metadata={"help": "Passes over each rollout batch."})
    max_new_tokens: int = dataclasses.field(default=32, metadata={"help": "Response length limit."})
    temperature: float = dataclasses.field(default=0.7, metadata={"help": "Sampling temperature of rollouts."})
    stop_strings: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "Extra strings that end a response (eos always does)."}
    )
    missing_eos_penalty: float | None = dataclasses.field(
        default=1.0,
        metadata={"help": "Subtracted from the score of responses that hit max_new_tokens without eos (N+ #23)."},
    )
    generation_batch_size: int = dataclasses.field(
        default=64, metadata={"help": "Prompts per generate() call in rollouts and evaluation."}
    )
    draft_tokens: int = dataclasses.field(
        default=2,
        metadata={
            "help": "Speculative decoding: tokens drafted from n-grams of earlier rollouts and the prompt, checked "
            "per row in each decode forward; the samples are the same, only faster when drafts are right. 0: off."
        },
    )
    bf16_rollout_copy: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "Under bf16, sample rollouts from a bf16 copy of the policy refreshed every update (autocast "
            "over the fp32 weights casts every weight again at every decoded token). It holds 2 bytes a policy "
            "parameter; false: sample from the trained weights under autocast, for less memory."
        },
    )
    share_prompt_prefix: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "Compute the prompt tokens all rows of a micro-batch start with (a chat template's system "
            "prompt) once and broadcast their KV cache: the same values for less compute. Off: every row in full."
        },
    )
    # KL control
    kl_coef: float = dataclasses.field(default=0.05, metadata={"help": "Initial KL penalty coefficient (beta)."})
    kl_estimator: KLEstimator = dataclasses.field(
        default="k1",
        metadata={
            "help": "KL estimate in the per-token penalty: k1 (log-ratio; its gradient is KL's) or k3 (never "
            "negative, but near the reference its gradient vanishes). objective/kl logs k3 either way.",
            "choices": ["k1", "k3"],
        },
    )
    kl_target: float | None = dataclasses.field(
        default=None, metadata={"help": "Adaptive KL: steer beta so the KL per sequence approaches this value."}
    )
    kl_horizon: int = dataclasses.field(default=10000, metadata={"help": "Adaptive KL horizon (episodes)."})
    # Advantages and losses
    whiten_rewards: bool = dataclasses.field(default=False, metadata={"help": "Whiten token rewards before GAE."})
    normalize_scores: bool = dataclasses.field(
        default=False, metadata={"help": "Standardise scores with a running mean/std before the KL penalty."}
    )
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = dataclasses.field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = dataclasses.field(default=0.2, metadata={"help": "Policy ratio clip."})
    cliprange_value: float = dataclasses.field(default=0.2, metadata={"help": "Value clip around old values."})
    vf_coef: float = dataclasses.field(default=0.1, metadata={"help": "Value loss weight."})
    # Evaluation and samples
    eval_prompts: int = dataclasses.field(
        default=32, metadata={"help": "Held-out prompts answered greedily before and after training (0: skip)."}
    )
    eval_every: int = dataclasses.field(
        default=0,
        metadata={
            "help": "Also answer the held-out prompts every N updates (0: before and after only): the reward "
            "score and the verifier's accuracy along training show when the learned reward stops tracking."
        },
    )
    eval_verifier: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Judge of the held-out answers besides the reward: auto (from the data's columns) | sql | "
            "math | none.",
            "choices": ["auto", "sql", "math", "none"],
        },
    )
    eval_db: str = dataclasses.field(
        default="data/textsql/shop.sqlite",
        metadata={"help": "The database SQL answers run on, for eval_verifier sql/auto."},
    )
    sample_every: int = dataclasses.field(
        default=10, metadata={"help": "Write a few sample generations to samples.jsonl every N updates."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        minibatch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if minibatch > 0 and self.rollout_batch_size % minibatch:  # sizes below 1: the loader's bounds check says
            raise ValueError(
                f"rollout_batch_size={self.rollout_batch_size} must be a multiple of per_device_train_batch_size * "
                f"gradient_accumulation_steps = {minibatch}"
            )
        if self.draft_tokens < 0:
            raise ValueError(f"draft_tokens must be >= 0, got {self.draft_tokens}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (PPO samples its rollouts)")
        if self.max_steps <= 0:
            raise ValueError("set max_steps: the number of PPO updates")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
