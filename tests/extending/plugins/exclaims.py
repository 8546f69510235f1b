"""An eval scorer added from one file (the README's "Extending" example): does the final answer
exclaim? A suite loads it through `scorer_modules` and lists it in a benchmark's `scorers`."""

from rewards.text import split_response
from rl_safety.eval.scorers import ScoringBatch, register_scorer


@register_scorer("exclaims", metrics={"exclaims": "exclaim_rate"})
def exclaims(batch: ScoringBatch) -> dict[str, list[float | None]]:
    return {"exclaims": [float("!" in (split_response(t).answer or "")) for t in batch.texts]}
