"""Reward-model stage (TRL RewardTrainer) and reward scoring."""
