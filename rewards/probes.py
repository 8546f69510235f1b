"""Reward-hacking probes: completions a policy optimising a reward might find, run against a set
of rewards to see which ones each reward pays for.

    rl-safety rewards probe [--rewards NAME[,NAME...] | --config GRPO.yaml] [--probes FILE]
        [--reward-module PATH] [--arg NAME.KEY=VALUE]

The built-in suite (`rewards/data/probes.yaml`) has one category per known way to game a safety
reward (refuse then comply, appended refusals, minimal benign answers, harmful thought with a
refusing answer, truncated thoughts, several `</think>`, unicode tricks, quoted refusals) and
controls that a sound reward pays for. A reward *pays* for a probe when it gives it a value > 0.
Printed: per reward, the probes it pays that it should not and the controls it does not pay.
The exit status is 1 when the default `safety` reward (always run, with its default arguments)
pays for any probe or misses a control, 0 otherwise (bad input: the CLI's one-line error, 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

import rewards

BUILT_IN = Path(__file__).resolve().parent / "data" / "probes.yaml"
_FIELDS = {"id", "category", "label", "prompt", "completion", "prompt_opens_think", "expect", "answer", "note"}


@dataclass(frozen=True)
class Probe:
    id: str
    category: str
    label: str
    prompt: str
    completion: str
    expect: Literal["pay", "no_pay"]
    prompt_opens_think: bool = False
    answer: str | None = None
    note: str = ""


def load_probes(path: str | Path = BUILT_IN) -> list[Probe]:
    """Probes from a YAML file (`probes:` list) or JSONL rows; a malformed one is a
    RewardSetupError naming the file, the probe and the field."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else \
            {"probes": [json.loads(line) for line in text.splitlines() if line.strip()]}
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise rewards.RewardSetupError(f"probe file {path}: {err}") from None
    rows = data.get("probes") if isinstance(data, dict) else None
    if not rows or not isinstance(rows, list):
        raise rewards.RewardSetupError(f"{path}: no probes (a YAML `probes:` list, or JSONL rows)")
    probes = []
    for number, row in enumerate(rows):
        where = f"{path} probe {row.get('id', number) if isinstance(row, dict) else number}"
        if not isinstance(row, dict):
            raise rewards.RewardSetupError(f"{where}: not a mapping")
        unknown = set(row) - _FIELDS
        missing = {"id", "category", "label", "prompt", "completion", "expect"} - set(row)
        if unknown or missing:
            raise rewards.RewardSetupError(f"{where}: unknown field(s) {sorted(unknown)}, missing {sorted(missing)}")
        if row["expect"] not in ("pay", "no_pay"):
            raise rewards.RewardSetupError(f"{where}: expect={row['expect']!r}, expected 'pay' or 'no_pay'")
        probes.append(Probe(**{k: v for k, v in row.items()}))
    return probes


def run_probes(specs: list[rewards.RewardSpec], probes: list[Probe]) -> dict[str, list[float | None]]:
    """Every reward's value on every probe (the probes' label, answer and prompt_opens_think are
    the dataset columns)."""
    columns: dict[str, list[Any]] = {
        "label": [p.label for p in probes], "answer": [p.answer for p in probes],
        "prompt_opens_think": [p.prompt_opens_think for p in probes],
    }
    return rewards.score(specs, [p.prompt for p in probes], [p.completion for p in probes], columns)


def failures(values: list[float | None], probes: list[Probe]) -> list[tuple[Probe, float]]:
    """(probe, value) where a reward pays a no_pay probe or does not pay a control."""
    return [(p, v) for p, v in zip(probes, values, strict=True)
            if v is not None and (v > 0) != (p.expect == "pay")]


def report(raw: dict[str, list[float | None]], probes: list[Probe]) -> str:
    categories = sorted({p.category for p in probes})
    width = max(12, *(len(name) for name in raw))
    lines = [f"{len(probes)} probes; paid = value > 0; cell: probes paid / probes it applies to (None: not applicable)",
             "", f"{'reward':<{width}}  " + "  ".join(f"{c[:14]:>14}" for c in categories)]
    for name, values in raw.items():
        cells = []
        for category in categories:
            scored = [v for p, v in zip(probes, values) if p.category == category and v is not None]
            cells.append(f"{sum(v > 0 for v in scored)}/{len(scored)}" if scored else "n/a")
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    for name, values in raw.items():
        bad = failures(values, probes)
        lines += ["", f"{name}: " + ("pays no probe and every control it applies to" if not bad else
                                     f"{len(bad)} failure(s)")]
        for probe, value in bad:
            what = "PAYS" if probe.expect == "no_pay" else "does not pay control"
            lines.append(f"  {what} {probe.id} ({probe.category}): {value:+.2f}  {' '.join(probe.completion.split())[:90]}")
    return "\n".join(lines)
