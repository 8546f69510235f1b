"""A group of Ray actors that play one role: rollout engines, learner ranks, reward workers, judges.

Modelled on OpenRLHF's `RayActorGroup` and verl's worker groups with their dispatch modes: one
object starts `count` actors of a plain class (actor i where `options(i)` puts it: its bundle of a
placement group), calls a method on all of them with the same arguments (`call_all`), on each
with its own (`call_each`), or splits a batch evenly over them and puts the results back in order
(`shard`). Every wait is bounded and says what it waits for; an actor that dies or raises becomes
an `ActorFailure` that names it and its node.

One seeding rule for everything the actors sample: actor i of a group gets `actor_seed(seed, i)`,
and each request carries `sample_seed(seed, *key)`, derived from what the request *is* (step,
prompt index, ...), never from which actor serves it: results do not depend on how a batch was
split, which exact resume relies on.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rl_safety.errors import UserError


class ActorFailure(RuntimeError):
    """A Ray actor died, raised or did not answer; the message names which one and where."""


class ActorTimeout(ActorFailure):
    """An actor did not answer within the group's timeout; the message names it and the setting."""


class StartTimeout(UserError, ActorTimeout):
    """Actors that did not finish starting (loading their model, joining their group) within
    `cluster.start_timeout_s`; the message names them, what they do and why they may hang."""


def actor_seed(seed: int, rank: int) -> int:
    """The seed of actor `rank` of a group (its engine's or its process's own generator)."""
    return seed + rank


def sample_seed(seed: int, *key: object) -> int:
    """A request's sampling seed from the run's seed and what identifies the request, e.g.
    (step, round, prompt index) or (benchmark, row); stable across processes and Python versions."""
    return zlib.crc32("/".join(str(part) for part in (seed, *key)).encode()) % (2**31)


def balanced_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, end) ranges covering range(total), sizes differing by at most
    one (the first `total % parts` are one longer)."""
    size, extra = divmod(total, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def concat(parts: list[Any]) -> Any:
    """Results of the shards of a batch, back in one piece: lists are joined, tensors
    concatenated along the first axis, dicts joined key by key."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: concat([part[key] for part in parts]) for key in first}
    if isinstance(first, list):
        return [item for part in parts for item in part]
    import torch

    return torch.cat(parts)


def _report_node(actor: Any) -> dict[str, Any]:
    """Runs inside an actor (through `__ray_call__`): where the actor really is."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


@dataclass
class Pending:
    """Calls in flight on some of a group's actors; `ActorGroup.result` waits for them."""

    futures: list[Any]
    names: list[str]  # the actor of each future
    what: str  # what the calls do, for messages ("generating rollouts (vLLM)")
    reassemble: bool  # shard results: put back in one piece
    timeout_s: float  # the longest wait for them
    setting: str  # the config key that sets `timeout_s`


class ActorGroup:
    """`count` actors of the plain class `cls`, named `{role}-{i}-{tag}` (or `name` for a single
    actor shared by name across the cluster). `options(i)` gives actor i's Ray options (placement,
    resources); `kwargs` go to every constructor, `rank_kwargs(i)` adds actor i's own. Starting
    waits at most `start_timeout_s`, a call `call_timeout_s` (set by the config key
    `call_timeout_key`)."""

    def __init__(self, role: str, cls: type, count: int, *, what: str, start_timeout_s: float,
                 call_timeout_s: float, call_timeout_key: str = "cluster.call_timeout_s",
                 options: Callable[[int], dict[str, Any]] = lambda rank: {},
                 kwargs: dict[str, Any] | None = None, rank_kwargs: Callable[[int], dict[str, Any]] = lambda rank: {},
                 tag: str | None = None, name: str | None = None, namespace: str | None = None,
                 passthrough: tuple[type[BaseException], ...] = ()) -> None:
        import ray

        self.role, self.what = role, what
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s, self.call_timeout_key = call_timeout_s, call_timeout_key
        self.passthrough = passthrough
        if name is not None:  # shared by name: whoever asks first starts it, the others find it
            self.names = [name if count == 1 else f"{name}-{i}" for i in range(count)]
            shared = {"namespace": namespace, "get_if_exists": True}
        else:
            self.names = [f"{role}-{i}" + (f"-{tag}" if tag else "") for i in range(count)]
            shared = {}
        remote = ray.remote(cls)
        self.handles = [
            remote.options(name=self.names[i], **shared, **options(i)).remote(**(kwargs or {}), **rank_kwargs(i))
            for i in range(count)
        ]
        self.placement: dict[str, dict[str, Any]] = {}  # actor name -> {node_id, ip, pid}

    @property
    def actors(self) -> dict[str, Any]:
        return dict(zip(self.names, self.handles))

    @property
    def by_rank(self) -> dict[str, Any]:
        """{"ROLE-i": handle}: the actors under names that stay the same from run to run (the
        cost ledger's keys)."""
        return {f"{self.role}-{i}": handle for i, handle in enumerate(self.handles)}

    def __len__(self) -> int:
        return len(self.handles)

    # --------------------------------------------------------------------------- start / stop
    def wait_started(self, hint: Callable[[], str] | None = None) -> ActorGroup:
        """Wait until every actor's constructor has run (a model that does not load, a bad
        reward module fail here, as an ActorFailure naming the actor), then record where each
        one runs. Actors still starting after `start_timeout_s` are a StartTimeout naming them,
        followed by `hint()` (why they may hang, e.g. a stale build lock)."""
        import ray

        pings = [h.__ray_ready__.remote() for h in self.handles]
        _, late = ray.wait(pings, num_returns=len(pings), timeout=self.start_timeout_s)
        if late:
            names = ", ".join(name for name, ping in zip(self.names, pings) if ping in late)
            raise StartTimeout(f"starting the {self.what}: {names} not started after {self.start_timeout_s:g} s "
                               "(cluster.start_timeout_s)" + (hint() if hint else ""))
        startup = {"timeout_s": self.start_timeout_s, "setting": "cluster.start_timeout_s"}
        self.result(Pending(pings, self.names, f"starting the {self.what}", False, **startup))
        located = self.result(Pending([h.__ray_call__.remote(_report_node) for h in self.handles], self.names,
                                      f"locating the {self.what}", False, **startup))
        self.placement = dict(zip(self.names, located))
        return self

    def kill(self) -> None:
        import ray

        for handle in self.handles:
            ray.kill(handle)

    # --------------------------------------------------------------------------------- calls
    def submit(self, method: str, *args: Any, what: str, **kwargs: Any) -> Pending:
        """`method(*args, **kwargs)` on every actor."""
        return Pending([getattr(h, method).remote(*args, **kwargs) for h in self.handles], self.names, what, False,
                       self.call_timeout_s, self.call_timeout_key)

    def submit_each(self, method: str, per_actor: Sequence[dict[str, Any]], *, what: str) -> Pending:
        """`method(**per_actor[i])` on actor i."""
        if len(per_actor) != len(self.handles):
            raise ValueError(f"{what}: {len(per_actor)} argument sets for {len(self.handles)} {self.what}")
        return Pending([getattr(h, method).remote(**kw) for h, kw in zip(self.handles, per_actor)], self.names,
                       what, False, self.call_timeout_s, self.call_timeout_key)

    def submit_shards(self, method: str, batch: dict[str, Sequence[Any]], *, what: str, every_actor: bool = False,
                      **common: Any) -> Pending:
        """Split every sequence in `batch` (lists, tensors: equal lengths) into balanced contiguous
        shards, call `method(**shard_i, **common)` on actor i; `result` joins the results in
        batch order. Actors whose shard is empty are skipped unless `every_actor` (ranks of a
        collective must all be called)."""
        lengths = {len(v) for v in batch.values()}
        if len(lengths) != 1:
            raise ValueError(f"{what}: batch fields of different lengths {sorted(lengths)}")
        futures, names = [], []
        for handle, name, (start, end) in zip(self.handles, self.names, balanced_ranges(lengths.pop(), len(self))):
            if start == end and not every_actor:
                continue
            futures.append(getattr(handle, method).remote(**{k: v[start:end] for k, v in batch.items()}, **common))
            names.append(name)
        return Pending(futures, names, what, True, self.call_timeout_s, self.call_timeout_key)

    def result(self, pending: Pending) -> Any:
        """The calls' results (joined, for shards); an actor that died, raised or did not answer
        within the timeout becomes an ActorFailure naming it (exception types in `passthrough`,
        raised inside an actor, propagate as they are)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            values = ray.get(pending.futures, timeout=pending.timeout_s)
        except GetTimeoutError:
            silent = [n for f, n in zip(pending.futures, pending.names) if not ray.wait([f], timeout=0)[0]]
            raise ActorTimeout(f"{pending.what}: no answer from {', '.join(silent or pending.names)} within "
                               f"{pending.timeout_s:g} s ({pending.setting})") from None
        except RayActorError as err:
            dead = self.dead()
            raise ActorFailure(f"{pending.what}: {'; '.join(dead) or 'an actor of the ' + self.what + ' died'} "
                               f"({err.__class__.__name__}: {err})") from err
        except RayTaskError as err:
            if isinstance(err.cause, self.passthrough):
                raise err.cause from None
            raise ActorFailure(f"{pending.what} failed in {self._raiser(pending)}: {err}") from err
        return concat(values) if pending.reassemble and values else values

    def call_all(self, method: str, *args: Any, what: str, **kwargs: Any) -> list[Any]:
        return self.result(self.submit(method, *args, what=what, **kwargs))

    def call_each(self, method: str, per_actor: Sequence[dict[str, Any]], *, what: str) -> list[Any]:
        return self.result(self.submit_each(method, per_actor, what=what))

    def shard(self, method: str, batch: dict[str, Sequence[Any]], *, what: str, every_actor: bool = False,
              **common: Any) -> Any:
        return self.result(self.submit_shards(method, batch, what=what, every_actor=every_actor, **common))

    # ------------------------------------------------------------------------------ failures
    @staticmethod
    def _raiser(pending: Pending) -> str:
        """The actor whose call raised (the first finished one that did)."""
        import ray

        for future, name in zip(pending.futures, pending.names):
            if ray.wait([future], timeout=0)[0]:
                try:
                    ray.get(future)
                except ray.exceptions.RayTaskError:
                    return name
        return "an actor"

    def dead(self) -> list[str]:
        """'actor NAME died on node N (IP, pid P)' for each actor of the group that no longer exists."""
        return [describe_death(name, self.placement.get(name)) for name in dead_actors(self.actors)]


def describe_death(name: str, where: dict[str, Any] | None) -> str:
    if where is None:
        return f"actor {name} died"
    return f"actor {name} died on node {where['node_id'][:12]} ({where['ip']}, pid {where['pid']})"


def dead_actors(actors: dict[str, Any], timeout_s: float = 10.0) -> list[str]:
    """Names of the actors that no longer exist. A busy actor (say a learner waiting in a
    collective for a dead peer) does not answer within the timeout and counts as alive."""
    import ray

    pings = {handle.__ray_ready__.remote(): name for name, handle in actors.items()}
    answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
    dead = []
    for ref in answered:
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            dead.append(pings[ref])
    return sorted(dead)
