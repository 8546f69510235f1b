"""Reward functions for safety and reasoning RL, usable from rl-safety's trainer and TRL alike."""

from rewards.registry import RewardError, RewardSpec, combine, get, load_module, names, register, score

__all__ = ["RewardError", "RewardSpec", "combine", "get", "load_module", "names", "register", "score"]
