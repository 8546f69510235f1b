"""`rl-safety thinksafe`: self-generated safety data (arXiv 2601.23143, seanie12/ThinkSafe).

Harmful prompts are sent with refusal steering (the authors' text, a blank line, the prompt);
benign prompts as they are. k samples per prompt; kept are those with a complete thought that
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
from rl_safety.refine.generate import GuardFilter, RefusalRegexFilter, Request, run_generation


def steer(steering_text: str, prompt: str) -> str:
    return f"{steering_text}\n\n{prompt}"


def steered_requests(cfg: ThinkSafeConfig) -> list[Request]:
    from rl_safety.data.safety import load_safety_dataset

    examples, _ = load_safety_dataset(cfg.data.dataset, cfg.data.train, split=cfg.data.split,
                                      on_bad_row=cfg.data.on_bad_row, columns=cfg.data.columns,
                                      limit=cfg.data.limit, prompts_only=True)
    return [Request(e, steer(cfg.thinksafe.steering_text, e.prompt), {"steered": True}) if e.label == "harmful"
            else Request(e, e.prompt, {"steered": False}) for e in examples]


def run_thinksafe(cfg: ThinkSafeConfig) -> tuple[Path, dict]:
    content_filter = GuardFilter(cfg.thinksafe.guard) if cfg.thinksafe.filter == "guard" else RefusalRegexFilter()
    return run_generation(cfg, steered_requests(cfg), content_filter=content_filter, method="thinksafe")


def main(argv: list[str]) -> int:
    from rl_safety.config.loader import config_from_command_line

    from rl_safety.preflight import check_generation
    from rl_safety.refine.generate import add_overwrite_argument

    cfg, args = config_from_command_line(ThinkSafeConfig, argv, "rl-safety thinksafe", __doc__.split("\n\n")[0],
                                         config_help="YAML config (see configs/thinksafe_*.yaml)",
                                         add_arguments=add_overwrite_argument)
    check_generation(cfg, args.overwrite)
    path, stats = run_thinksafe(cfg)
    print(f"done: {stats.get('kept', 0)} rows in {path} (filter counts in {path}.stats.json)")
    return 0
