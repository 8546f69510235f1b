"""The reward workers on real Ray actors: a reward that hangs ends the step with an error naming
the timeout instead of stalling it, and math verification works inside a Ray worker (its
deadline is a child process, not a signal)."""

from __future__ import annotations

import time

import pytest

import rewards
from rl_safety.config import GRPOConfig, load_config
from rl_safety.orchestration import cluster, reward_pool
from tests.conftest import USER_REWARDS

pytestmark = pytest.mark.integration


def test_a_hanging_reward_times_out_and_math_verifies_in_a_worker(tmp_path):
    import ray

    module = tmp_path / "slow.py"
    module.write_text("import time, rewards\n\n@rewards.register('t_sleepy')\n"
                      "def sleepy(prompts, completions, **kw):\n    time.sleep(600)\n    return [0.0] * len(prompts)\n")

    def workers(rewards_yaml: str, modules: list[str], timeout_s: float, tag: str):
        cfg = load_config(GRPOConfig, None, ["model.path=m", "data.train=d", f"rewards={rewards_yaml}",
                                             f"reward_modules={modules}", f"cluster.reward_timeout_s={timeout_s}",
                                             "cluster.num_cpus=2"])
        cluster.connect(cfg.cluster)
        return reward_pool.start_reward_workers(cfg, tag).wait_started()

    try:
        math_pool = workers("[{name: math_accuracy}]", [str(USER_REWARDS)], 300, "math")
        raw = reward_pool.score(math_pool, ["q", "q", "q"], ["\\boxed{1/2}", "\\boxed{9^{9^{9}}}", "<think>x"],
                                {"answer": ["0.5", "1", "0.5"]})
        assert raw == {"math_accuracy": [1.0, 0.0, 0.0]}

        slow_pool = workers("[{name: t_sleepy}]", [str(module)], 3, "slow")
        started = time.perf_counter()
        with pytest.raises(rewards.RewardError, match=r"no answer from reward-0-slow within 3 s "
                                                      r"\(cluster.reward_timeout_s\)"):
            reward_pool.score(slow_pool, ["q"], ["c"], {})
        assert time.perf_counter() - started < 60
    finally:
        ray.shutdown()
