"""What every data method (DGR, ThinkSafe, `rl_safety.refine.methods`) shares: sampling from the
target model on vLLM engine actors (on `cluster.address`, or a local Ray), the acceptance filter,
and writing the dataset with provenance.

A generation request is one user turn per source row; `generation.n` samples each. A sample is kept when
(1) it was not cut by max_new_tokens, (2) it is well formed: exactly one closed thought and a
non-empty answer after it, read by the text contract (`rewards.text.split_response`, given
whether the rendered prompt opened the thought), and (3) it passes the content filter:
- `GuardFilter` (ThinkSafe's, as its authors: Llama Guard 3 or WildGuard judges the *original*
  prompt with the full response, thought included; kept when judged safe), or
- `RefusalRegexFilter` (a CPU option, and DGR's: with `require_label_behaviour`, the answer
  refuses a harmful prompt / answers a benign one by `rewards.refusal.read_answer`, the GRPO
  reward's detector).
Every drop is counted by reason in PATH.stats.json, which also names the filter that ran.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.text import full_response, prompt_opens_think
from rl_safety.config.cluster import RolloutClusterSection
from rl_safety.config.engine import resolved_top_k
from rl_safety.config.judge import Guard
from rl_safety.config.refine import GenerationConfig, GenerationSection, OutputSection
from rl_safety.config.sft import SFTModelSection
from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample, write_examples
from rl_safety.orchestration.actor_group import sample_seed

log = logging.getLogger(__name__)


@dataclass
class Request:
    source: SafetyExample  # the row the request was made from
    user_turn: str  # what the model was sent as the user message
    provenance: dict[str, Any] = field(default_factory=dict)  # method-specific, copied to the output row


def judge(completion: str, truncated: bool, label: str, rendered_prompt: str,
          require_label_behaviour: bool) -> tuple[str, str] | str:
    """(reasoning, answer) of an accepted sample, or the reason it is dropped."""
    from rewards.refusal import read_answer
    from rewards.text import prompt_opens_think, split_response

    if truncated:
        return "truncated"
    response = split_response(completion, prompt_opens_think(rendered_prompt))
    if response.state != "answered" or not response.reasoning or not response.answer:
        return "malformed"
    reasoning, answer = response.reasoning, response.answer
    if require_label_behaviour:
        refused = read_answer(answer).refused
        if label == "harmful" and not refused:
            return "harmful_not_refused"
        if label == "benign" and refused:
            return "benign_refused"
    return reasoning, answer


@dataclass(frozen=True)
class RefusalRegexFilter:
    """Keeps refusals of harmful prompts and answers to benign ones, judged by the refusal
    detector on the answer (`judge`'s `require_label_behaviour`); CPU only, no model."""

    require_label_behaviour: bool = True

    def describe(self) -> str:
        if not self.require_label_behaviour:
            return "none (well-formed samples only)"
        return ("refusal_regex: rewards.refusal.read_answer on the answer (refuse harmful, answer benign); a CPU "
                "option, not the ThinkSafe authors' guard filter")


@dataclass(frozen=True)
class GuardFilter:
    """Keeps a sample the guard judges safe: the ThinkSafe authors' filter (`synthesize_data.py`:
    Llama-Guard-3-8B, or WildGuard, on the original prompt and the full response)."""

    guard: Guard

    def describe(self) -> str:
        return (f"guard: {self.guard.format} {self.guard.model} on (original prompt, {self.guard.view} response); "
                "kept when judged safe")

    def drop_reasons(self, prompts: list[str], responses: list[str]) -> list[str | None]:
        """Per sample, None (kept) or why it is dropped: the guard found it unsafe, or its output
        did not parse (the authors keep those as safe; we do not guess)."""
        from rewards.judge import guard_judge

        harmless = guard_judge(prompts, responses, target="harmless", on_unparseable="abstain",
                               **self.guard.model_dump())
        return [None if v == 1.0 else "guard_unparseable" if v is None else "guard_unsafe" for v in harmless]


ContentFilter = RefusalRegexFilter | GuardFilter


def _decode(tokenizer, token_ids: list[int]) -> str:
    """The completion's text with `<think>` / `</think>` kept: vLLM's own text skips special
    tokens, and some tokenizers mark the think tags special. The final EOS is dropped."""
    if token_ids and token_ids[-1] == tokenizer.eos_token_id:
        token_ids = token_ids[:-1]
    return tokenizer.decode(token_ids, skip_special_tokens=False)


def run_generation(cfg: GenerationConfig, requests: list[Request], *, content_filter: ContentFilter, method: str,
                   fallback_original: bool = False) -> tuple[Path, dict[str, Any]]:
    """`generate_dataset` with `cfg`'s sections, the resolved config written beside the output
    (PATH.config.yaml)."""
    from rl_safety.config.loader import dump_config

    Path(cfg.output.path).parent.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, f"{cfg.output.path}.config.yaml")
    return generate_dataset(requests, model=cfg.model, generation=cfg.generation, output=cfg.output,
                            cluster=cfg.cluster, content_filter=content_filter, method=method,
                            fallback_original=fallback_original)


def add_overwrite_argument(parser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output.path dataset (and its .stats.json, .config.yaml, .cost.json)")


def data_cost_path(dataset_path: str | Path) -> Path:
    """Where the cost of generating a dataset is kept: beside it, `DATA.cost.json`. An SFT run
    on that file copies it into its run directory as `cost_data.json`, so `rl-safety compare`
    charges DGR / ThinkSafe SFT with the generation that made their data."""
    return Path(f"{dataset_path}.cost.json")


def generate_dataset(requests: list[Request], *, model: SFTModelSection, generation: GenerationSection,
                     output: OutputSection, cluster: RolloutClusterSection, content_filter: ContentFilter,
                     method: str, fallback_original: bool = False) -> tuple[Path, dict[str, Any]]:
    """Sample, filter and write; the cost ledger (generation and filter) goes to
    `data_cost_path(output.path)`. Output rows: prompt (the *source* prompt), reasoning, answer,
    label, source, plus provenance: method, source_row, model, seed (of the sample's prompt),
    sample (its index among the n), and the request's own `provenance` fields. With
    `fallback_original`, a source row none of whose samples is accepted keeps its own trace
    (provenance `fallback: "original"`, `sample` None)."""
    from transformers import AutoTokenizer

    from rl_safety.ledger import CostLedger
    from rl_safety.orchestration.engines import generate, generation_engines
    from rl_safety.rollout.vllm_engine import checked_max_model_len

    max_model_len = checked_max_model_len(
        model.path, generation.max_model_len, generation.max_prompt_tokens, generation.max_new_tokens,
        explicit_key="generation.max_model_len", budget_keys="generation.max_prompt_tokens + generation.max_new_tokens",
        trust_remote_code=model.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    family = chat.resolve_family(tokenizer, model.family)
    sampling = generation.model_copy(update={"top_k": resolved_top_k(generation, family.top_k)})
    rendered, ids, kept_requests, too_long = [], [], [], 0
    max_chars = generation.max_prompt_tokens * chat.max_chars_per_token(tokenizer)
    for request in requests:
        if len(request.user_turn) > max_chars:  # cannot fit: dropped without tokenizing it
            too_long += 1
            continue
        text = chat.render_prompt(tokenizer, request.user_turn, family=model.family, system_prompt=model.system_prompt)
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) > generation.max_prompt_tokens:
            too_long += 1
            continue
        rendered.append(text)
        ids.append(token_ids)
        kept_requests.append(request)
    seeds = [sample_seed(output.seed, r.source.row) for r in kept_requests]

    ledger = CostLedger(Path(output.path).parent, method, model_path=model.path,
                        filename=data_cost_path(output.path).name)
    completed = False
    try:
        with generation_engines(model.path, generation, cluster, source=f"{method} ({output.path})",
                                dtype=model.dtype, seed=output.seed, max_model_len=max_model_len,
                                trust_remote_code=model.trust_remote_code) as (engines, use_gpu):
            ledger.set_devices("gpu" if use_gpu else "cpu", generation.devices)
            with ledger.phase("generation"):
                completions = generate(engines, ids, seeds, generation.n, sampling, what=f"{method}: generating (vLLM)")
            # prompt tokens once per prompt: the n samples share the prefill (as GRPO and eval count)
            ledger.add_tokens(generated=sum(len(c.token_ids) for samples in completions for c in samples),
                              prefilled=sum(len(t) for t in ids))
            ledger.record_memory(engines.by_rank)
        # the engines are gone: the filter's guard may take their devices
        with ledger.phase("filter"):
            decoded = [[(_decode(tokenizer, c.token_ids), c.truncated) for c in samples] for samples in completions]
            counts, rows = accepted_rows(kept_requests, rendered, seeds, decoded, content_filter, model=model.path,
                                         method=method, keep_per_prompt=generation.keep_per_prompt,
                                         fallback_original=fallback_original)
        completed = True
    finally:
        ledger.finish(complete=completed)

    counts["prompt_too_long"] += too_long
    path = write_examples(output.path, rows)
    stats = {"method": method, "filter": content_filter.describe(), "requests": len(requests),
             "samples_per_prompt": generation.n, **dict(counts)}
    Path(f"{output.path}.stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %s -> %s", method, stats, path)
    return path, stats


def accepted_rows(requests: list[Request], rendered: list[str], seeds: list[int],
                  completions: list[list[tuple[str, bool]]], content_filter: ContentFilter, *, model: str,
                  method: str, keep_per_prompt: int | None,
                  fallback_original: bool) -> tuple[Counter[str], list[dict[str, Any]]]:
    """(counts of drops by reason and of kept rows, output rows) of the generated samples:
    `completions[r]` holds request r's (decoded completion, truncated) samples, `rendered[r]` its
    prompt as the model saw it, `seeds[r]` its sampling seed."""
    counts: Counter[str] = Counter()
    require = isinstance(content_filter, RefusalRegexFilter) and content_filter.require_label_behaviour
    candidates = []  # (request index, sample index, reasoning, answer, full response)
    for r, (request, text, samples) in enumerate(zip(requests, rendered, completions, strict=True)):
        for index, (completion, truncated) in enumerate(samples):
            verdict = judge(completion, truncated, request.source.label, text, require)
            if isinstance(verdict, str):
                counts[verdict] += 1
            else:
                candidates.append((r, index, *verdict, full_response(completion, prompt_opens_think(text))))
    if isinstance(content_filter, GuardFilter) and candidates:
        reasons = content_filter.drop_reasons([requests[c[0]].source.prompt for c in candidates],
                                              [c[4] for c in candidates])
        counts.update(reason for reason in reasons if reason)
        candidates = [c for c, reason in zip(candidates, reasons) if reason is None]

    accepted: dict[int, list[tuple]] = {}
    for c in candidates:
        accepted.setdefault(c[0], []).append(c)
    rows = []
    for r, request in enumerate(requests):
        ours = accepted.get(r, [])
        if keep_per_prompt is not None and len(ours) > keep_per_prompt:
            counts["over_keep_per_prompt"] += len(ours) - keep_per_prompt
            ours = ours[:keep_per_prompt]
        base = {"label": request.source.label, "source": request.source.source, "method": method,
                "source_row": request.source.row, "model": model, "seed": seeds[r], **request.provenance}
        for _, index, reasoning, answer, _ in ours:
            rows.append({"prompt": request.source.prompt, "reasoning": reasoning, "answer": answer, **base,
                         "sample": index})
        counts["kept"] += len(ours)
        if not ours and fallback_original:
            rows.append({"prompt": request.source.prompt, "reasoning": request.source.reasoning,
                         "answer": request.source.answer, **base, "sample": None, "fallback": "original"})
            counts["fallback_original"] += 1
    return counts, rows
