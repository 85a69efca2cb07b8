"""PPO math against hand-computed examples: each equation, one small case worked out on paper."""

import math

import pytest
import torch

from pipelines.ppo import core
from pipelines.ppo.rollout import response_mask


def test_k1_kl_is_the_log_ratio_and_can_be_negative():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    assert core.kl_estimate(logp, ref, "k1")[0].tolist() == pytest.approx([0.5, -1.0])


def test_k3_kl_matches_hand_value_and_is_never_negative():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    expected = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    k3 = core.kl_estimate(logp, ref, "k3")
    assert k3[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert (core.kl_estimate(torch.randn(64, 8), torch.randn(64, 8), "k3") >= 0).all()


def test_unknown_kl_estimator_is_rejected():
    with pytest.raises(ValueError, match="k1 or k3"):
        core.kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k2")  # type: ignore[arg-type]


def test_token_rewards_put_kl_on_every_token_and_score_on_the_last():
    scores = torch.tensor([2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, non_score = core.token_rewards(scores, kl, 0.5, mask)
    assert non_score[0].tolist() == pytest.approx([-0.05, -0.1, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.05, 1.9, 0.0])


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])  # the value after the end is masked out
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = core.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.5, 0.8, 0.0])
    assert returns[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # gamma 0.9, lambda 0.5: A1 = 1 - 0.2 = 0.8; A0 = (0.9*0.2 - 0.5) + 0.45*0.8 = 0.04
    advantages, returns = core.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.04, 0.8, 0.0], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([0.54, 1.0, 0.0], abs=1e-6)


def test_policy_loss_clips_the_ratio_in_the_pessimistic_direction():
    logp, old = torch.tensor([[math.log(1.5)]]), torch.tensor([[0.0]])
    mask = torch.ones(1, 1)
    loss, stats = core.policy_loss(logp, old, torch.tensor([[1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx(-1.2)  # max(-1.5, -1.2): the ratio is clipped at 1.2
    assert stats["clipfrac"].item() == 1.0
    loss, stats = core.policy_loss(logp, old, torch.tensor([[-1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx(1.5)  # negative advantage: the unclipped loss is larger
    assert stats["clipfrac"].item() == 0.0
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_value_loss_is_clipped_around_old_values():
    loss, stats = core.value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1), clip=0.2
    )
    assert loss.item() == pytest.approx(0.5 * 0.8**2)  # the clipped value 0.2 is 0.8 from the return
    assert stats["clipfrac"].item() == 1.0


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.masked_whiten(values, mask)[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)


def test_adaptive_kl_controller_moves_toward_target_and_fixed_does_not():
    adaptive = core.KLController(0.1, target=1.0, horizon=100)
    adaptive.update(current_kl=2.0, n_steps=10)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    adaptive.update(current_kl=0.9, n_steps=10)  # error -0.1
    assert adaptive.value == pytest.approx(0.102 * (1 - 0.1 * 10 / 100))
    fixed = core.KLController(0.1)
    fixed.update(current_kl=5.0, n_steps=10)
    assert fixed.value == 0.1
    restored = core.KLController(0.0)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.state_dict() == adaptive.state_dict()


def test_response_mask_keeps_eos_and_drops_everything_after_it():
    ids = torch.tensor([[5, 2, 7, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert response_mask(ids, eos_id=2, pad_id=0).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_entropy_and_logprobs_from_logits():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert core.entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2))
    assert core.logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
