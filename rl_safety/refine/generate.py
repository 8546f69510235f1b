"""What DGR and ThinkSafe share: sampling from the target model on vLLM rollout actors, the
acceptance filter, and writing the dataset with provenance.

A generation request is one user turn per source row; `k` samples each. A sample is kept when
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
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.text import full_response, prompt_opens_think
from rl_safety.config.grpo import ClusterSection
from rl_safety.config.judge import Guard
from rl_safety.config.refine import GenerationConfig, GenerationSection, OutputSection
from rl_safety.config.sft import SFTModelSection
from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample, write_examples

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

        g = self.guard
        harmless = guard_judge(prompts, responses, model=g.model, format=g.format, target="harmless", view=g.view,
                               on_unparseable="abstain", max_response_chars=g.max_response_chars,
                               num_gpus=g.num_gpus, max_model_len=g.max_model_len, vllm_kwargs=g.vllm_kwargs)
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
                     output: OutputSection, cluster: ClusterSection, content_filter: ContentFilter,
                     method: str, fallback_original: bool = False) -> tuple[Path, dict[str, Any]]:
    """Sample, filter and write; the cost ledger (generation and filter) goes to
    `data_cost_path(output.path)`. Output rows: prompt (the *source* prompt), reasoning, answer,
    label, source, plus provenance: method, source_row, model, seed (of the sample's prompt),
    sample (its index among the k), and the request's own `provenance` fields. With
    `fallback_original`, a source row none of whose samples is accepted keeps its own trace
    (provenance `fallback: "original"`, `sample` None)."""
    import ray
    from transformers import AutoTokenizer

    from rl_safety.ledger import CostLedger
    from rl_safety.rollout.vllm_engine import RolloutEngine, checked_max_model_len

    max_model_len = checked_max_model_len(
        model.path, generation.max_model_len, generation.max_prompt_tokens, generation.max_new_tokens,
        explicit_key="generation.max_model_len", budget_keys="generation.max_prompt_tokens + generation.max_new_tokens",
        trust_remote_code=model.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    family = chat.resolve_family(tokenizer, model.family)
    top_k = family.top_k if generation.top_k is None else generation.top_k
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
    seeds = [output.seed * 1_000_003 + r.source.row for r in kept_requests]

    if not ray.is_initialized():
        if cluster.address:
            ray.init(address=cluster.address)
        else:  # "local": a fresh local Ray, never an unrelated cluster already running on the machine
            ray.init(address="local", include_dashboard=False,
                     num_cpus=cluster.num_cpus or max(os.cpu_count() or 1, generation.num_engines + 1))
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = gpus > 0 if cluster.device == "auto" else cluster.device == "gpu"
    tp = generation.tensor_parallel_size
    ledger = CostLedger(Path(output.path).parent, method, model_path=model.path,
                        filename=data_cost_path(output.path).name)
    ledger.set_devices("gpu" if use_gpu else "cpu", generation.num_engines * (tp if use_gpu else 1))
    engine_cls = ray.remote(RolloutEngine)
    engines = [
        engine_cls.options(num_cpus=1, num_gpus=(1 if use_gpu and tp == 1 else 0)).remote(
            model.path, dtype=model.dtype, seed=output.seed + i, tensor_parallel_size=tp,
            max_model_len=max_model_len, use_gpu=use_gpu, gpu_memory_utilization=generation.gpu_memory_utilization,
            kv_cache_memory_mb=generation.kv_cache_memory_mb, enforce_eager=generation.enforce_eager,
            sleep_mode=False, trust_remote_code=model.trust_remote_code)
        for i in range(generation.num_engines)
    ]
    completed = False
    try:
        try:
            with ledger.phase("generation"):
                shards = [list(range(i, len(ids), len(engines))) for i in range(len(engines))]
                futures = [engine.generate.remote(
                    [ids[j] for j in shard], generation.samples_per_prompt, temperature=generation.temperature,
                    top_p=generation.top_p, top_k=top_k, max_new_tokens=generation.max_new_tokens,
                    seeds=[seeds[j] for j in shard]) for engine, shard in zip(engines, shards) if shard]
                completions: list[Any] = [None] * len(ids)
                for shard, result in zip([s for s in shards if s], ray.get(futures)):
                    for j, samples in zip(shard, result):
                        completions[j] = samples
            # prompt tokens once per prompt: the k samples share the prefill (as GRPO and eval count)
            ledger.add_tokens(generated=sum(len(c.token_ids) for samples in completions for c in samples),
                              prefilled=sum(len(t) for t in ids))
            ledger.record_memory({f"rollout-{i}": e for i, e in enumerate(engines)})
        finally:  # free the devices before the filter's guard takes one
            for engine in engines:
                ray.kill(engine)
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
             "samples_per_prompt": generation.samples_per_prompt, **dict(counts)}
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
