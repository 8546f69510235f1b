"""The reward registry, scoring with validation, and weighted composition.

A reward is a plain callable with TRL's signature, `fn(prompts, completions, **columns) ->
list[float | None]`: dataset columns arrive as keyword lists, configured arguments as keywords,
and `None` means "not applicable to this sample" (not zero). Functions must accept `**kwargs`:
they receive every column of the batch, including ones they do not use.

Configured arguments must be named parameters of the function (`check_args`, run when a config
is loaded); a reward may register a validator for their values too. A reward may return
`Scores(values, diagnostics={...})`: per-sample diagnostics (e.g. how often two judges disagree)
that `score` reports as `NAME/DIAGNOSTIC` beside the reward, logged but never added to the total.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RewardFn = Callable[..., Sequence[float | None]]
_REGISTRY: dict[str, RewardFn] = {}
_VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {}
_JUDGES: dict[str, Callable[[dict[str, Any]], list["JudgeDemand"]]] = {}


@dataclass(frozen=True)
class JudgeDemand:
    """A model server a reward calls (a judge's vLLM engines, a moderation classifier): the key
    it is shared under (`rewards.judge.shared_judge`: one server per key in a Ray cluster), the
    devices it holds and what it is (for messages and the run's records)."""

    key: list[Any]
    devices: int
    what: str


class Scores(list):
    """A reward's values (a list, one per sample) with per-sample diagnostics: name -> one
    number or None per sample, reported by `score` as "REWARD/NAME" and not part of the total."""

    def __init__(self, values: Sequence[float | None], diagnostics: dict[str, list[float | None]] | None = None):
        super().__init__(values)
        self.diagnostics = dict(diagnostics or {})


class RewardError(RuntimeError):
    """A reward misbehaved (raised, or returned something that is not one finite number or None
    per sample); the message names the reward and, for a bad value, the sample."""


class RewardSetupError(ValueError):
    """A reward that cannot be set up: an unknown name, a reward module that is missing, fails to
    import or exits while importing, or an argument the reward function does not take (users'
    algorithm modules go through the same loader, so their failures are this error too)."""


def register(name: str, validate: Callable[[dict[str, Any]], None] | None = None,
             judges: Callable[[dict[str, Any]], list[JudgeDemand]] | None = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `name` in configs. A second, different function under a
    taken name is an error (re-registering the same function, as a re-import does, is not).
    `validate(args)`, if given, checks configured argument values at config load (raises
    ValueError or TypeError), beyond the names and required arguments `check_args` checks.
    `judges(args)`, if given, names the model servers the reward calls with these arguments
    (the function's defaults filled in), so that a trainer can count their devices before
    anything starts (`judge_demands`)."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            other = _REGISTRY[name]
            raise ValueError(f"a reward named {name!r} is already registered ({other.__module__}.{other.__qualname__})")
        _REGISTRY[name] = fn
        if validate is not None:
            _VALIDATORS[name] = validate
        if judges is not None:
            _JUDGES[name] = judges
        return fn

    return decorator


def get(name: str) -> RewardFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RewardSetupError(f"no reward named {name!r}; registered: {', '.join(names()) or '(none)'}") from None


def check_args(name: str, args: dict[str, Any]) -> None:
    """Refuse arguments that reward `name` does not declare, and missing keyword-only ones. Every
    reward takes `**kwargs` (the batch's dataset columns), so a misspelt argument would otherwise
    vanish into them silently."""
    fn = get(name)
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature: nothing to check
        return
    declared = [p for p, v in parameters.items()
                if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p not in ("prompts", "completions")]
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise RewardSetupError(f"reward {name!r} takes no argument {', '.join(map(repr, unknown))} "
                               f"(its arguments: {', '.join(declared) or 'none'})")
    missing = [p for p, v in parameters.items() if v.kind == v.KEYWORD_ONLY and v.default is v.empty and p not in args]
    if missing:
        raise RewardSetupError(f"reward {name!r} needs argument(s) {', '.join(missing)} in its args")
    if name in _VALIDATORS:
        try:
            _VALIDATORS[name](dict(args))
        except (TypeError, ValueError) as err:
            raise RewardSetupError(f"reward {name!r}: {err}") from None


def judge_demands(rewards: list[tuple[str, dict[str, Any]]]) -> list[JudgeDemand]:
    """The distinct model servers that the configured rewards, (name, args) pairs, call: rewards
    that share one judge (the same key) count it once."""
    found: dict[str, JudgeDemand] = {}
    for name, args in rewards:
        if name not in _JUDGES:
            continue
        defaults = {p: v.default for p, v in inspect.signature(_REGISTRY[name]).parameters.items()
                    if v.default is not v.empty}
        for demand in _JUDGES[name]({**defaults, **args}):
            found.setdefault(json.dumps(demand.key, sort_keys=True, default=str), demand)
    return list(found.values())


def names() -> list[str]:
    return sorted(_REGISTRY)


def load_module(path: str | Path, kind: str = "reward") -> None:
    """Import a user's reward file by path; its `@rewards.register` calls fill the registry.
    Importing the same file twice is a no-op (Ray workers and the driver both load it). `kind`
    names the file in errors (rl_safety's algorithm modules are loaded the same way)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise RewardSetupError(f"{kind} module {path} does not exist" if not path.exists()
                               else f"{kind} module {path} is not a file")
    module_name = f"rewards_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as err:  # a module that exits would end the whole command, with its status
        del sys.modules[module_name]
        raise RewardSetupError(f"{kind} module {path} called sys.exit({err.code!r}) while being imported") from None
    except Exception as err:
        del sys.modules[module_name]
        raise RewardSetupError(f"{kind} module {path} failed to import: {err.__class__.__name__}: {err}") from err


def require_column(column: list[Any] | None, name: str, reward: str) -> list[Any]:
    """A reward's dataset column, or a ValueError saying that `reward` needs column `name`."""
    if column is None:
        raise ValueError(f"{reward} needs a dataset column {name!r} (passed as a keyword list)")
    return column


Normalize = Literal["none", "group", "batch"]


@dataclass
class RewardSpec:
    """A configured reward.

    name: the registered name. weight: its factor in the total. args: keyword arguments passed to
    the function on every call. normalize: how `combine` rescales this reward's values before
    weighting: "none" (raw), "batch" (z-score over the batch's applicable values) or "group"
    (z-score within each group of `group_size` consecutive samples, i.e. completions of one
    prompt), so that rewards on different scales can be mixed by weight alone.
    """

    name: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    normalize: Normalize = "none"

    def __post_init__(self) -> None:
        if self.normalize not in ("none", "group", "batch"):
            raise ValueError(f"reward {self.name!r}: normalize={self.normalize!r}, expected 'none', 'group' or 'batch'")
        if not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight {self.weight} is not a finite number")


def score(specs: list[RewardSpec], prompts: list[str], completions: list[Any],
          columns: dict[str, list[Any]]) -> dict[str, list[float | None]]:
    """Every reward's raw values, validated: reward name -> one finite float (or None) per sample."""
    raw: dict[str, list[float | None]] = {}
    for spec in specs:
        fn = get(spec.name)
        try:
            values = fn(prompts, completions, **columns, **spec.args)
        except SystemExit as err:  # in a reward worker it would end the actor without a word
            raise RewardError(f"reward {spec.name!r} called sys.exit({err.code!r})") from None
        except Exception as err:
            raise RewardError(f"reward {spec.name!r} raised {err.__class__.__name__}: {err}") from err
        raw[spec.name] = _validated(spec.name, values, len(prompts))
        for diagnostic, diagnostic_values in getattr(values, "diagnostics", {}).items():
            name = f"{spec.name}/{diagnostic}"
            raw[name] = _validated(name, diagnostic_values, len(prompts))
    return raw


def _validated(name: str, values: Any, expected: int) -> list[float | None]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(f"reward {name!r} returned {type(values).__name__}, expected a list of {expected} numbers or None")
    if len(values) != expected:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {expected} samples")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
            raise RewardError(f"reward {name!r} returned {v!r} ({type(v).__name__}) for sample {i}, expected a number or None")
        try:
            v = float(v)
        except (TypeError, ValueError) as err:  # e.g. a multi-element array
            raise RewardError(f"reward {name!r} returned {v!r} for sample {i}, not a single number") from err
        if not math.isfinite(v):
            raise RewardError(f"reward {name!r} returned {v} for sample {i}")
        out.append(v)
    return out


def combine(raw: dict[str, list[float | None]], specs: list[RewardSpec],
            group_size: int | None = None) -> list[float]:
    """The total reward per sample: sum over specs of weight x (normalized) value. A None
    contributes 0 (that reward does not apply there: a math reward on a safety prompt). A sample
    no reward applies to has no learning signal at all: an error, not a silent 0. `group_size` is
    needed only by specs with normalize="group"."""
    count = len(next(iter(raw.values()), []))
    for spec in specs:
        if spec.name not in raw:
            raise RewardError(f"reward {spec.name!r} has no scores (scored: {', '.join(raw) or 'none'})")
        if len(raw[spec.name]) != count:
            raise RewardError(f"reward {spec.name!r} has {len(raw[spec.name])} scores, others have {count}")
    values = {spec.name: _normalized(spec, raw[spec.name], group_size) for spec in specs}
    totals = []
    for i in range(count):
        applicable = [(s.weight, values[s.name][i]) for s in specs if values[s.name][i] is not None]
        if not applicable:
            raise RewardError(f"no reward applies to sample {i} (all of {[s.name for s in specs]} returned None)")
        totals.append(sum(w * v for w, v in applicable))
    return totals


def _normalized(spec: RewardSpec, values: list[float | None], group_size: int | None) -> list[float | None]:
    if spec.normalize == "none":
        return values
    if spec.normalize == "batch":
        return _zscores(values)
    if not group_size or len(values) % group_size:
        raise RewardError(f"reward {spec.name!r} normalizes per group: combine() needs a group_size that divides "
                          f"the batch ({len(values)} samples, group_size={group_size})")
    return [z for start in range(0, len(values), group_size) for z in _zscores(values[start:start + group_size])]


def _zscores(values: list[float | None]) -> list[float | None]:
    """(v - mean) / std over the non-None values; a constant set gives 0s (no std to divide by)."""
    present = [v for v in values if v is not None]
    if not present:
        return list(values)
    mean = sum(present) / len(present)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present))
    return [None if v is None else (v - mean) / std if std > 1e-12 else 0.0 for v in values]
