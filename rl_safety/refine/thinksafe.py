"""`rl-safety thinksafe`: self-generated safety data (arXiv 2601.23143, seanie12/ThinkSafe).

Harmful prompts are sent with refusal steering (the authors' text, a blank line, the prompt);
benign prompts as they are. `generation.n` samples per prompt; kept are those with a complete thought that
the guard judges safe, as the authors filter (`synthesize_data.py`: Llama-Guard-3-8B, or
WildGuard, on the original prompt and the full response, thought included; `thinksafe.filter:
guard`). `thinksafe.filter: refusal_regex` is a CPU option that is not the authors': refusals of
harmful prompts and answers to benign ones by the refusal detector. The dataset pairs the *original*
prompt with the kept response: the steering text appears nowhere in it, so the model learns to do
unprompted what it did when steered. Provenance records whether a row was steered, not the
steered text (the text itself is in PATH.config.yaml).
"""

from __future__ import annotations

from pathlib import Path

from rl_safety.config.refine import ThinkSafeConfig
from rl_safety.refine.generate import GuardFilter, RefusalRegexFilter, Request
from rl_safety.refine.methods import DataMethod, register_data_method, source_examples


def steer(steering_text: str, prompt: str) -> str:
    return f"{steering_text}\n\n{prompt}"


def steered_requests(cfg: ThinkSafeConfig) -> list[Request]:
    return [Request(e, steer(cfg.thinksafe.steering_text, e.prompt), {"steered": True}) if e.label == "harmful"
            else Request(e, e.prompt, {"steered": False}) for e in source_examples(cfg, prompts_only=True)]


THINKSAFE = register_data_method(DataMethod(
    name="thinksafe", summary=__doc__.split("\n\n")[0].split(": ", 1)[1], config=ThinkSafeConfig,
    requests=steered_requests,
    content_filter=lambda cfg: GuardFilter(cfg.thinksafe.guard) if cfg.thinksafe.filter == "guard" else RefusalRegexFilter(),
    toy_config=Path(__file__).parents[1] / "toy" / "configs" / "thinksafe.yaml", toy_source="grpo_train.jsonl"))
