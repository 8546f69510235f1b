"""The reward pool on real Ray actors: a reward that hangs ends the step with an error naming
the timeout instead of stalling it, and math verification works inside a Ray worker (its
deadline is a child process, not a signal)."""

from __future__ import annotations

import time

import pytest

import rewards
from rl_safety.orchestration.reward_pool import RewardPool, RewardWorker
from tests.conftest import USER_REWARDS

pytestmark = pytest.mark.integration


def test_a_hanging_reward_times_out_and_math_verifies_in_a_worker(tmp_path):
    import ray

    module = tmp_path / "slow.py"
    module.write_text("import time, rewards\n\n@rewards.register('t_sleepy')\n"
                      "def sleepy(prompts, completions, **kw):\n    time.sleep(600)\n    return [0.0] * len(prompts)\n")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        worker = ray.remote(num_cpus=0)(RewardWorker)
        math_pool = RewardPool([worker.remote([{"name": "math_accuracy"}], [str(USER_REWARDS)])], timeout_s=300)
        raw = math_pool.collect(math_pool.submit(["q", "q", "q"], ["\\boxed{1/2}", "\\boxed{9^{9^{9}}}", "<think>x"],
                                                 {"answer": ["0.5", "1", "0.5"]}))
        assert raw == {"math_accuracy": [1.0, 0.0, 0.0]}

        slow_pool = RewardPool([worker.remote([{"name": "t_sleepy"}], [str(module)])], timeout_s=3)
        started = time.perf_counter()
        with pytest.raises(rewards.RewardError, match="did not finish within 3 s"):
            slow_pool.collect(slow_pool.submit(["q"], ["c"], {}))
        assert time.perf_counter() - started < 60
    finally:
        ray.shutdown()
