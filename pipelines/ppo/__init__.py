"""PPO stage: the project's own PPO on the shared runner (TRL removed its PPOTrainer in 1.13)."""
