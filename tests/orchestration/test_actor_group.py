"""ActorGroup: balanced sharding and reassembly, the seeding rule, and every way a call can go
wrong (an actor that raises, dies, hangs or fails to start) turned into one error that names it.
The pure parts run without Ray; the rest on a small local Ray with trivial actors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rl_safety.orchestration.actor_group import (ActorFailure, ActorGroup, ActorTimeout, StartTimeout, actor_seed,
                                                 balanced_ranges, concat, sample_seed)
from tests.conftest import REPO
from tests.orchestration.echo_actor import Echo  # by a module path Ray's workers import too


@pytest.mark.parametrize("total,parts", [(10, 3), (3, 5), (0, 2), (64, 8), (7, 1)])
def test_balanced_ranges_match_numpys_array_split(total, parts):
    ranges = balanced_ranges(total, parts)
    expected = [(int(c[0]), int(c[-1]) + 1) if len(c) else None for c in np.array_split(np.arange(total), parts)]
    assert [(a, b) if b > a else None for a, b in ranges] == expected
    assert [a for a, _ in ranges[1:]] == [b for _, b in ranges[:-1]]  # contiguous, in order


def test_concat_joins_lists_tensors_and_dicts_in_order():
    assert concat([[1, 2], [3], []]) == [1, 2, 3]
    assert torch.equal(concat([torch.tensor([[1]]), torch.tensor([[2], [3]])]), torch.tensor([[1], [2], [3]]))
    assert concat([{"a": [1], "b": [None]}, {"a": [2], "b": [0.5]}]) == {"a": [1, 2], "b": [None, 0.5]}


def test_sample_seeds_are_stable_across_processes_and_distinct_per_request():
    code = "from rl_safety.orchestration.actor_group import sample_seed; print(sample_seed(7, 3, 0, 'gsm8k', 12))"
    seeds = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(h), "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, check=True).stdout.strip() for h in (1, 2)}
    assert seeds == {str(sample_seed(7, 3, 0, "gsm8k", 12))}
    many = {sample_seed(0, step, 0, i) for step in range(20) for i in range(50)}
    assert len(many) == 1000 and all(0 <= s < 2**31 for s in many)
    assert [actor_seed(5, r) for r in range(3)] == [5, 6, 7]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def group(count: int, tag: str = "t", **kw) -> ActorGroup:
    options = {"start_timeout_s": 60, "call_timeout_s": 60, **kw}
    return ActorGroup("echo", Echo, count, what="echo actors", tag=tag, options=lambda r: {"num_cpus": 0},
                      rank_kwargs=lambda r: {"rank": r}, **options)


@pytest.mark.integration
def test_calls_shards_and_failures(ray_session):
    echo = group(3).wait_started()
    assert list(echo.actors) == ["echo-0-t", "echo-1-t", "echo-2-t"] and set(echo.placement) == set(echo.actors)
    assert echo.call_all("rank_of", what="ranks") == [0, 1, 2]
    assert echo.call_each("tag", [{"items": [r]} for r in range(3)], what="each") == [[(0, 0)], [(1, 1)], [(2, 2)]]
    # 7 items over 3 actors: 3, 2, 2, contiguous; the results come back in batch order
    assert echo.shard("tag", {"items": list(range(7))}, what="sharding", factor=10) == [
        (0, 0), (0, 10), (0, 20), (1, 30), (1, 40), (2, 50), (2, 60)]
    # 2 items: the third actor gets nothing and is not called (unless every actor must be)
    assert echo.result(echo.submit_shards("tag", {"items": [1, 2]}, what="few")) == [(0, 1), (1, 2)]
    assert len(echo.submit_shards("tag", {"items": [1, 2]}, what="all", every_actor=True).futures) == 3

    with pytest.raises(ActorFailure, match=r"(?s)failing on purpose failed in echo-1-t: .*ValueError: on purpose"):
        echo.call_each("fail", [{"error": e} for e in ("none", "value", "none")], what="failing on purpose")
    passing = group(1, tag="p", passthrough=(KeyError,)).wait_started()
    with pytest.raises(KeyError, match="on purpose"):  # a type the caller handles itself reaches it as it is
        passing.call_all("fail", "key", what="failing")

    slow = group(2, tag="s", call_timeout_s=1).wait_started()
    with pytest.raises(ActorTimeout, match=r"sleeping: no answer from echo-0-s within 1 s \(cluster.call_timeout_s\)"):
        slow.call_each("sleep", [{"seconds": 30}, {"seconds": 0}], what="sleeping")
    slow.kill()

    victim = echo.placement["echo-1-t"]
    os.kill(victim["pid"], 9)
    with pytest.raises(ActorFailure) as err:
        echo.call_all("rank_of", what="asking the ranks")
    assert (f"asking the ranks: actor echo-1-t died on node {victim['node_id'][:12]} ({victim['ip']}, "
            f"pid {victim['pid']})") in str(err.value)
    echo.kill()
    passing.kill()


@pytest.mark.integration
def test_a_constructor_that_raises_fails_the_start_naming_the_group(ray_session):
    broken = ActorGroup("echo", Echo, 2, what="echo actors", tag="b", start_timeout_s=60, call_timeout_s=60,
                        options=lambda r: {"num_cpus": 0}, rank_kwargs=lambda r: {"rank": r, "fail_at_start": r == 1})
    with pytest.raises(ActorFailure, match=r"(?s)starting the echo actors: actor echo-1-b died.*rank 1 cannot start"):
        broken.wait_started()
    broken.kill()
    unplaceable = ActorGroup("echo", Echo, 1, what="echo actors", tag="u", start_timeout_s=2, call_timeout_s=60,
                             options=lambda r: {"num_cpus": 64}, rank_kwargs=lambda r: {"rank": r})
    with pytest.raises(StartTimeout, match=r"starting the echo actors: echo-0-u not started after 2 s "
                                           r"\(cluster.start_timeout_s\)"):
        unplaceable.wait_started()
    unplaceable.kill()
