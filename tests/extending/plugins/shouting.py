"""A reward added from one file (the README's "Extending" example): the share of upper-case
letters in the final answer. Loaded by path through a GRPO config's `reward_modules`."""

import rewards
from rewards.text import split_response


@rewards.register("shouting")
def shouting(prompts, completions, min_letters=1, **columns):
    values = []
    for completion in completions:
        letters = [c for c in split_response(completion).answer or "" if c.isalpha()]
        values.append(sum(c.isupper() for c in letters) / len(letters) if len(letters) >= min_letters else None)
    return values
