"""The toy world: a miniature safety lab that runs on CPU in minutes.

- `world`: seeded generators of arithmetic, harmful requests and benign look-alikes in the model's
  own style, the foreign-style external refusal set (DirectRefusal analogue), held-out prompts
  and held-out tasks, and JSONL exports.
- `model`: the in-process tokenizer and the base toy LRM (a tiny Qwen2, pretrained from scratch,
  cached in Hugging Face format): it solves the arithmetic, complies with harmful requests, refuses
  them in its own words when steered, and rewrites foreign text in its own style (steering and
  rewriting trained under paraphrases, never under the methods' own texts).
- `evaluate`: held-out metrics with vLLM.
- `shift`: the foreign refusal set at a chosen distance (nats per token) from the base model.
- `table`: the four-arm experiment (`toy table`), over seeds and sweeps.
- `cli`: `toy build`, `toy eval`, `toy run`, `toy table`, `toy shift`.
"""
