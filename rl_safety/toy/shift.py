"""The foreign refusal set at a chosen distance from the base toy model, in nats per token.

The distance is `rl-safety shift`'s measure (`rl_safety.eval.shift.measure_shift`): the base
model's mean NLL per response token (thought and answer) of the set, the loss SFT starts from.
Whole style levels of `world.styled_refusal` (0: the model's own refusal, up to
`world.TOP_STYLE_LEVEL`: the canned refusal) are measured on the training split until one reaches
the target, then the fractional level between the last two is bisected, and the set at the level
nearest the target is written. The real gap this stands for is a few nats per token (an R1 model
on DirectRefusal-style traces), so the toy table defaults to 2.

    rl-safety toy shift [--target NATS] [--output-dir DIR]     the curve and the level chosen
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rl_safety.toy.world import TOP_STYLE_LEVEL, foreign_refusal_rows, write_jsonl


@dataclass(frozen=True)
class ForeignSet:
    path: Path
    target: float  # nats per token asked for
    level: float  # the style level written
    nll: float  # its measured NLL per response token under the base model


class ShiftMeter:
    """`rl-safety shift`'s NLL per response token, under one loaded base model, of the training
    split's foreign set at a style level."""

    def __init__(self, base: Path, eval_fraction: float) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        self.eval_fraction = eval_fraction

    def __call__(self, level: float) -> float:
        from rl_safety.data.safety import SafetyExample
        from rl_safety.eval.shift import measure_shift

        rows = foreign_refusal_rows("train", self.eval_fraction, level)
        examples = [SafetyExample(r["prompt"], r["reasoning"], r["answer"], r["label"], r["source"], i)
                    for i, r in enumerate(rows)]
        return measure_shift(self.model, self.tokenizer, examples, family="generic", batch_size=64).response_nll


def calibrate(meter, target: float, curve: list[float], iterations: int = 12) -> tuple[float, float]:
    """(level, NLL) nearest `target`: `curve`, the NLL of whole levels 0, 1, ... up to the first
    at or past the target, brackets it, then bisection on the fraction of rows at the upper level
    (the NLL is monotone in it: more rows of the costlier style). A target beyond the curve's ends
    gets the end."""
    if target <= curve[0]:
        return 0.0, curve[0]
    if target >= max(curve):
        top = max(range(len(curve)), key=curve.__getitem__)
        return float(top), curve[top]
    low = next(k for k in range(len(curve) - 1) if curve[k] <= target <= curve[k + 1])
    lo, hi, best = float(low), float(low + 1), (float(low), curve[low])
    for _ in range(iterations):
        mid = (lo + hi) / 2
        nll = meter(mid)
        if abs(nll - target) < abs(best[1] - target):
            best = (mid, nll)
        lo, hi = (mid, hi) if nll < target else (lo, mid)
    return best


def check_shift(target: float) -> None:
    from rl_safety.config.loader import ConfigError

    if not target > 0:
        raise ConfigError(f"shift {target}: must be a positive number of nats per token")


def write_foreign_set(base: Path, target: float, out_dir: Path) -> ForeignSet:
    """`out_dir/foreign_refusal_train.jsonl` at the style level whose NLL is nearest `target` nats
    per token (and `foreign.json`: what was asked, the NLL of the whole levels measured, what was
    written);
    reused when already written for `base` and `target`."""
    check_shift(target)
    meta = out_dir / "foreign.json"
    if meta.exists():
        done = json.loads(meta.read_text())
        if done["base"] == str(base) and done["target"] == target:
            return ForeignSet(Path(done["path"]), target, done["level"], done["nll"])
    eval_fraction = json.loads((base / "data" / "world.json").read_text())["eval_fraction"]
    meter = ShiftMeter(base, eval_fraction)
    curve = []
    for level in range(TOP_STYLE_LEVEL + 1):  # up to the first whole level at or past the target
        curve.append(meter(level))
        if curve[-1] >= target:
            break
    level, nll = calibrate(meter, target, curve)
    path = write_jsonl(out_dir / "foreign_refusal_train.jsonl", foreign_refusal_rows("train", eval_fraction, level))
    result = ForeignSet(path, target, level, nll)
    meta.write_text(json.dumps({**asdict(result), "path": str(path), "base": str(base), "curve": curve}, indent=1))
    return result
