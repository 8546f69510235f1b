"""`rl-safety dgr`: Distribution-Grounded Refinement (arXiv 2602.02136).

The target model rewrites each external safety trace (reasoning and answer, e.g. DirectRefusal or
R1-ACT) in its own words under a refinement prompt, so the SFT data comes from its own
distribution. Accepted rewrites keep the source row's prompt and label; each output row records
the refinement prompt it was generated from (`user_turn`), the source row, the model and the seed.
The refinement prompt is ours (the paper's is not public). A row whose rewrites all fail the
filter is dropped, or (`dgr.on_failed_refinement: original`) kept with its original trace.
"""

from __future__ import annotations

from pathlib import Path

from rl_safety.config.refine import DGRConfig
from rl_safety.refine.generate import RefusalRegexFilter, Request, run_generation


def refinement_requests(cfg: DGRConfig):
    from rl_safety.data.safety import load_safety_dataset

    examples, _ = load_safety_dataset(cfg.data.dataset, cfg.data.train, split=cfg.data.split,
                                      on_bad_row=cfg.data.on_bad_row, columns=cfg.data.columns, limit=cfg.data.limit)
    template = cfg.dgr.refinement_prompt
    requests = []
    for e in examples:
        turn = template.format(prompt=e.prompt, reasoning=e.reasoning, answer=e.answer)
        requests.append(Request(e, turn, {"user_turn": turn}))
    return requests


def run_dgr(cfg: DGRConfig) -> tuple[Path, dict]:
    return run_generation(cfg, refinement_requests(cfg),
                          content_filter=RefusalRegexFilter(cfg.dgr.require_label_behaviour), method="dgr",
                          fallback_original=cfg.dgr.on_failed_refinement == "original")


def main(argv: list[str]) -> int:
    from rl_safety.config.loader import config_from_command_line

    from rl_safety.preflight import check_generation
    from rl_safety.refine.generate import add_overwrite_argument

    cfg, args = config_from_command_line(DGRConfig, argv, "rl-safety dgr", __doc__.split("\n\n")[0],
                                         config_help="YAML config (see configs/dgr_*.yaml)",
                                         add_arguments=add_overwrite_argument)
    _check_template(cfg.dgr.refinement_prompt)
    check_generation(cfg, args.overwrite)
    path, stats = run_dgr(cfg)
    print(f"done: {stats.get('kept', 0)} rows in {path} (filter counts in {path}.stats.json)")
    return 0


def _check_template(template: str) -> None:
    from rl_safety.config import ConfigError

    try:
        template.format(prompt="", reasoning="", answer="")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"dgr.refinement_prompt: only {{prompt}}, {{reasoning}} and {{answer}} may be filled ({err!r})") from None
