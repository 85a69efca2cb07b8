"""Supervised fine-tuning stage (TRL SFTTrainer)."""
