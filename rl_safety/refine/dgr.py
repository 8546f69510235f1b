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
from rl_safety.refine.generate import RefusalRegexFilter, Request
from rl_safety.refine.methods import DataMethod, register_data_method, source_examples


def refinement_requests(cfg: DGRConfig) -> list[Request]:
    requests = []
    for e in source_examples(cfg):
        turn = cfg.dgr.refinement_prompt.format(prompt=e.prompt, reasoning=e.reasoning, answer=e.answer)
        requests.append(Request(e, turn, {"user_turn": turn}))
    return requests


DGR = register_data_method(DataMethod(
    name="dgr", summary=__doc__.split("\n\n")[0].split(": ", 1)[1], config=DGRConfig, requests=refinement_requests,
    content_filter=lambda cfg: RefusalRegexFilter(cfg.dgr.require_label_behaviour),
    fallback_original=lambda cfg: cfg.dgr.on_failed_refinement == "original",
    toy_config=Path(__file__).parents[1] / "toy" / "configs" / "dgr.yaml", toy_source="foreign_refusal_train.jsonl"))
