"""Reinforcement learning for language models: GRPO (rule rewards, no critic) and PPO (value head + GAE)."""
