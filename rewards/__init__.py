"""Reward functions for safety and reasoning RL, usable from rl-safety's trainer and TRL alike.

`import rewards` registers the built-in rewards (`rewards.names()` lists them) and stays cheap:
math-verify, transformers, vLLM and Ray are imported only by the rewards that use them.
"""

from rewards.registry import (JudgeDemand, RewardError, RewardSetupError, RewardSpec, Scores, check_args, combine,
                              get, judge_demands, load_module, names, register, score)
from rewards import helpfulness, judge, moderation, reasoning, safety, shaping, strongreject  # the built-in rewards

__all__ = ["JudgeDemand", "RewardError", "RewardSetupError", "RewardSpec", "Scores", "check_args", "combine", "get",
           "helpfulness", "judge", "judge_demands", "load_module", "moderation", "names", "reasoning", "register",
           "safety", "score", "shaping", "strongreject"]
