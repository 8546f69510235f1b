"""Rewards scored in a pool of Ray actors, so a slow reward (a judge model) never stalls the driver."""

from __future__ import annotations

from typing import Any

import rewards


def load_reward_specs(reward_sections: list[Any], reward_modules: list[str]) -> list[rewards.RewardSpec]:
    """Import the user's reward files, then resolve every configured name (fails before any
    actor starts if a name is unknown)."""
    for path in reward_modules:
        rewards.load_module(path)
    specs = []
    for section in reward_sections:
        rewards.get(section.name)  # KeyError listing the registered names
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
    """Splits a batch over the workers and merges their raw per-reward scores in order."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

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

    @staticmethod
    def collect(futures) -> dict[str, list[float | None]]:
        import ray

        merged: dict[str, list[float | None]] = {}
        for part in ray.get(futures):
            for name, values in part.items():
                merged.setdefault(name, []).extend(values)
        return merged
