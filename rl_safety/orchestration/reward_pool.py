"""Rewards scored in a pool of Ray actors, so a slow reward (a judge model) never stalls the driver."""

from __future__ import annotations

from typing import Any

import rewards


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

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list[Any]]) -> dict[str, list[float | None]]:
        return rewards.score(self.specs, prompts, completions, columns)


class RewardPool:
    """Splits a batch over the workers and merges their raw per-reward scores in order; waits at
    most `timeout_s` for them (a reward that hangs ends the step with an error, not a stall)."""

    def __init__(self, workers: list[Any], timeout_s: float | None = None) -> None:
        self.workers = workers
        self.timeout_s = timeout_s

    def submit(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]):
        """Start scoring; returns futures for `collect` (the driver can work meanwhile)."""
        size = -(-len(prompts) // len(self.workers))
        futures = []
        for i, worker in enumerate(self.workers):
            part = slice(i * size, (i + 1) * size)
            if part.start >= len(prompts):
                break
            futures.append(worker.score.remote(
                prompts[part], completions[part], {k: v[part] for k, v in columns.items()}
            ))
        return futures

    def collect(self, futures) -> dict[str, list[float | None]]:
        import ray

        try:
            parts = ray.get(futures, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:  # the run ends; its shutdown kills the reward actors
            raise rewards.RewardError(f"the reward workers did not finish within {self.timeout_s} s "
                                      "(cluster.reward_timeout_s)") from None
        merged: dict[str, list[float | None]] = {}
        for part in parts:
            for name, values in part.items():
                merged.setdefault(name, []).extend(values)
        return merged
