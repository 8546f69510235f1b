"""Rewards scored by a group of Ray actors, so a slow reward (a judge model) never stalls the
driver, and a reward that hangs ends the step with an error naming the timeout instead of
stalling it (`cluster.reward_timeout_s`)."""

from __future__ import annotations

from typing import Any

import rewards
from rl_safety.config.grpo import GRPOConfig
from rl_safety.orchestration.actor_group import ActorGroup, ActorTimeout


def load_reward_specs(reward_sections: list[Any], reward_modules: list[str]) -> list[rewards.RewardSpec]:
    """Import the user's reward files, then resolve and check every configured reward
    (`rewards.check_args`: an unknown name or argument fails before any actor starts)."""
    for path in reward_modules:
        rewards.load_module(path)
    specs = []
    for section in reward_sections:
        rewards.check_args(section.name, section.args)
        specs.append(rewards.RewardSpec(name=section.name, weight=section.weight, args=dict(section.args),
                                        normalize=section.normalize))
    return specs


class RewardWorker:
    """Scores a slice of the batch with every configured reward. Plain class; Ray wraps it."""

    def __init__(self, reward_sections: list[dict[str, Any]], reward_modules: list[str]) -> None:
        from rl_safety.config.grpo import RewardSection

        self.specs = load_reward_specs([RewardSection(**s) for s in reward_sections], reward_modules)

    def score(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> dict[str, list[float | None]]:
        return rewards.score(self.specs, prompts, completions, columns)


def start_reward_workers(cfg: GRPOConfig, tag: str) -> ActorGroup:
    """`cluster.reward_workers` actors (no CPU reserved: they wait on the driver most of the
    time); a RewardError raised inside one reaches the driver as it is, naming the reward. A
    call waits at most `cluster.reward_timeout_s`."""
    return ActorGroup("reward", RewardWorker, cfg.cluster.reward_workers, what="reward workers",
                      options=lambda rank: {"num_cpus": 0}, tag=tag, passthrough=(rewards.RewardError,),
                      kwargs={"reward_sections": [r.model_dump() for r in cfg.rewards],
                              "reward_modules": cfg.reward_modules},
                      start_timeout_s=cfg.cluster.start_timeout_s, call_timeout_s=cfg.cluster.reward_timeout_s,
                      call_timeout_key="cluster.reward_timeout_s")


def score(workers: ActorGroup, prompts: list[str], completions: list[str],
          columns: dict[str, list[Any]]) -> dict[str, list[float | None]]:
    """Each reward's raw values in batch order, the batch split over the workers. A reward that
    does not finish in time is a RewardError (the run ends; its shutdown kills the workers)."""
    try:
        return workers.shard("score", {"prompts": prompts, "completions": completions, **columns},
                             what="scoring rewards")
    except ActorTimeout as err:
        raise rewards.RewardError(f"the reward workers did not finish: {err}") from None
