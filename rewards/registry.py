"""The reward registry, scoring with validation, and weighted composition.

A reward is a plain callable with TRL's signature, `fn(prompts, completions, **columns) ->
list[float | None]`: dataset columns arrive as keyword lists, `None` means "not applicable to
this sample" (not zero).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RewardFn = Callable[..., Sequence[float | None]]
_REGISTRY: dict[str, RewardFn] = {}


class RewardError(RuntimeError):
    """A reward misbehaved; the message names it."""


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a reward named {name!r} is already registered ({_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get(name: str) -> RewardFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no reward named {name!r}; registered: {', '.join(names()) or '(none)'}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def load_module(path: str | Path) -> None:
    """Import a user's reward file by path; its `@rewards.register` calls fill the registry.
    Importing the same file twice is a no-op (Ray workers and the driver both load it)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"reward module {path} does not exist")
    module_name = f"rewards_user_{abs(hash(str(path)))}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ImportError(f"reward module {path} failed to import: {err!r}") from err


@dataclass
class RewardSpec:
    """A configured reward: registered `name`, `weight` in the total, keyword `args`."""

    name: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


def score(specs: list[RewardSpec], prompts: list[str], completions: list[Any],
          columns: dict[str, list[Any]]) -> dict[str, list[float | None]]:
    """Every reward's raw values, validated: one finite number (or None) per sample."""
    raw: dict[str, list[float | None]] = {}
    for spec in specs:
        fn = get(spec.name)
        try:
            values = fn(prompts, completions, **columns, **spec.args)
        except Exception as err:
            raise RewardError(f"reward {spec.name!r} raised {err.__class__.__name__}: {err}") from err
        raw[spec.name] = _validated(spec.name, values, len(prompts))
    return raw


def _validated(name: str, values: Any, expected: int) -> list[float | None]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a list of {expected} floats")
    if len(values) != expected:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {expected} samples")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise RewardError(f"reward {name!r} returned {v!r} ({type(v).__name__}) for sample {i}")
        v = float(v)
        if not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned {v} for sample {i}")
        out.append(v)
    return out


def combine(raw: dict[str, list[float | None]], specs: list[RewardSpec]) -> list[float]:
    """Weighted sum per sample; a None contributes nothing (that reward does not apply there).
    A sample no reward applies to has no learning signal at all: an error, not a silent 0."""
    count = len(next(iter(raw.values())))
    totals = []
    for i in range(count):
        applicable = [(s.weight, raw[s.name][i]) for s in specs if raw[s.name][i] is not None]
        if not applicable:
            raise RewardError(f"no reward applies to sample {i} (all of {[s.name for s in specs]} returned None)")
        totals.append(sum(w * v for w, v in applicable))
    return totals
