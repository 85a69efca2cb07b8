"""The PPO math, one small pure function per equation (each unit-tested on a hand-computed example).

Shapes: [batch, response_len] tensors over response tokens; `mask` is 1 on real response tokens
(up to and including eos) and 0 on padding after it. References: Schulman et al. 2017 (PPO),
Schulman et al. 2016 (GAE), Ziegler et al. 2019 (per-token KL penalty, adaptive KL), and
"The N+ implementation details of RLHF with PPO" (Huang et al. 2024) for the tricks named below.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[count, sum, sum of squares] over the masked entries: what processes add up to whiten together."""
    masked = values * mask
    return torch.stack([mask.sum(), masked.sum(), (masked * values).sum()]).double()


def moments_from_sums(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) from `masked_sums` (Bessel's correction, as in the N+ details)."""
    count, total, squares = sums.unbind()
    mean = total / count.clamp(min=1)
    variance = (squares - count * mean**2).clamp(min=0) / (count - 1).clamp(min=1)
    return mean.float(), variance.float()


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries."""
    return moments_from_sums(masked_sums(values, mask))[1]


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    moments: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise to unit variance over masked entries; advantages are also centred, rewards are not.

    `moments` (mean, variance) default to this tensor's own; the trainer passes those of every
    process's rollouts, so all ranks whiten alike (as one process with the whole batch would).
    """
    mean, variance = moments if moments is not None else moments_from_sums(masked_sums(values, mask))
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    k1 = log p - log q is unbiased but negative on many tokens; k3 = (r - 1) - log r with r = q/p is
    unbiased and never negative (Schulman, "Approximating KL divergence", 2020). As a per-token
    *reward* k1 is the right one: its expected gradient is that of KL(policy || reference), while k3's
    is close to zero near the reference, so a k3 penalty barely holds the policy back. k3 is the better
    *measurement* (lower variance, never negative): the trainer logs it and steers the adaptive
    coefficient with it.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1 or k3")


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward per token: -kl_coef * KL on every response token, plus the sequence score on its last token.

    Returns (rewards, non_score_rewards). Ziegler et al. 2019, eq. 2.
    """
    non_score = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) -> (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    Values past the end of a response count as 0 (the episode ends at eos).
    """
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def token_average(values: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | float | None) -> torch.Tensor:
    """Sum over masked tokens divided by `tokens` (default: their own count).

    With gradient accumulation the trainer passes the whole mini-batch's token count, so micro-batches
    add up to the mini-batch's token mean however the rows were split (short answers grouped together
    would otherwise weigh more).
    """
    if tokens is None:
        return masked_mean(values, mask)
    return (values * mask).sum() / tokens


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (PPO eq. 7), as a loss to minimise (`token_average` over `tokens`),
    with its diagnostics (means over this micro-batch)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = token_average(torch.maximum(unclipped, clipped), mask, tokens)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old ± clip) - R)^2) (N+ details, #12),
    a `token_average` over `tokens`."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * token_average(torch.maximum(unclipped_error, clipped_error), mask, tokens)
    return loss, {"clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask)}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical distribution the logits define."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under the logits, gathered without materialising a full softmax copy per token."""
    return torch.gather(torch.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


class KLController:
    """The KL coefficient: fixed, or adapted toward a target KL (Ziegler et al. 2019, eq. 3).

    adaptive: beta <- beta * (1 + clip((KL / target) - 1, -0.2, 0.2) * n_steps / horizon).
    """

    def __init__(self, init_coef: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.value = float(state["value"])  # type: ignore[arg-type]
        self.target = state["target"]  # type: ignore[assignment]
        self.horizon = int(state["horizon"])  # type: ignore[arg-type]
