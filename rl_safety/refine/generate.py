"""What DGR and ThinkSafe share: sampling from the target model on vLLM rollout actors, the
acceptance filter, and writing the dataset with provenance.

A generation request is one user turn per source row; `k` samples each. A sample is kept when
(1) it was not cut by max_new_tokens, (2) it is well formed: exactly one closed thought and a
non-empty answer after it (the model's own `<think>` put back first for R1-style prompts), and
(3) with `require_label_behaviour`, its answer refuses a harmful prompt / answers a benign one,
judged by `rewards.safety.is_refusal` (the GRPO reward's detector, so both sides of the
comparison use one notion of refusal). Every drop is counted by reason in PATH.stats.json.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_safety.config.grpo import ClusterSection
from rl_safety.config.refine import GenerationConfig, GenerationSection, OutputSection
from rl_safety.config.sft import SFTModelSection
from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample, split_thought, write_examples

log = logging.getLogger(__name__)


@dataclass
class Request:
    source: SafetyExample  # the row the request was made from
    user_turn: str  # what the model was sent as the user message
    provenance: dict[str, Any] = field(default_factory=dict)  # method-specific, copied to the output row


def judge(completion: str, truncated: bool, label: str, rendered_prompt: str,
          require_label_behaviour: bool) -> tuple[str, str] | str:
    """(reasoning, answer) of an accepted sample, or the reason it is dropped."""
    from rewards.safety import is_refusal

    if truncated:
        return "truncated"
    parts = split_thought(chat.complete_response(completion, rendered_prompt))
    if parts is None:
        return "malformed"
    reasoning, answer = parts
    if not reasoning:
        return "malformed"
    if require_label_behaviour:
        refused = is_refusal(f"</think>{answer}")
        if label == "harmful" and not refused:
            return "harmful_not_refused"
        if label == "benign" and refused:
            return "benign_refused"
    return reasoning, answer


def _decode(tokenizer, token_ids: list[int]) -> str:
    """The completion's text with `<think>` / `</think>` kept: vLLM's own text skips special
    tokens, and some tokenizers mark the think tags special. The final EOS is dropped."""
    if token_ids and token_ids[-1] == tokenizer.eos_token_id:
        token_ids = token_ids[:-1]
    return tokenizer.decode(token_ids, skip_special_tokens=False)


def run_generation(cfg: GenerationConfig, requests: list[Request], *, require_label_behaviour: bool,
                   method: str) -> tuple[Path, dict[str, Any]]:
    """`generate_dataset` with `cfg`'s sections, the resolved config written beside the output
    (PATH.config.yaml)."""
    from rl_safety.config.loader import dump_config

    Path(cfg.output.path).parent.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, f"{cfg.output.path}.config.yaml")
    return generate_dataset(requests, model=cfg.model, generation=cfg.generation, output=cfg.output,
                            cluster=cfg.cluster, require_label_behaviour=require_label_behaviour, method=method)


def data_cost_path(dataset_path: str | Path) -> Path:
    """Where the cost of generating a dataset is kept: beside it, `DATA.cost.json`. An SFT run
    on that file copies it into its run directory as `cost_data.json`, so `rl-safety compare`
    charges DGR / ThinkSafe SFT with the generation that made their data."""
    return Path(f"{dataset_path}.cost.json")


def generate_dataset(requests: list[Request], *, model: SFTModelSection, generation: GenerationSection,
                     output: OutputSection, cluster: ClusterSection, require_label_behaviour: bool,
                     method: str) -> tuple[Path, dict[str, Any]]:
    """Sample, filter and write; the cost ledger goes to `data_cost_path(output.path)`. Output rows:
    prompt (the *source* prompt), reasoning, answer, label, source, plus provenance: method,
    source_row, model, seed (of the sample's prompt), sample (its index among the k), and the
    request's own `provenance` fields."""
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
    for request in requests:
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
        completed = True
    finally:
        ledger.finish({f"rollout-{i}": e for i, e in enumerate(engines)}, complete=completed)
        for engine in engines:
            ray.kill(engine)

    counts: Counter[str] = Counter({"prompt_too_long": too_long})
    rows = []
    for request, text, seed, samples in zip(kept_requests, rendered, seeds, completions):
        kept = 0
        for index, sample in enumerate(samples):
            verdict = judge(_decode(tokenizer, sample.token_ids), sample.truncated, request.source.label, text,
                            require_label_behaviour)
            if isinstance(verdict, str):
                counts[verdict] += 1
                continue
            if generation.keep_per_prompt is not None and kept >= generation.keep_per_prompt:
                counts["over_keep_per_prompt"] += 1
                continue
            kept += 1
            reasoning, answer = verdict
            row = {"prompt": request.source.prompt, "reasoning": reasoning, "answer": answer,
                   "label": request.source.label, "source": request.source.source, "method": method,
                   "source_row": request.source.row, "model": model.path, "seed": seed, "sample": index,
                   **request.provenance}
            rows.append(row)
        counts["kept"] += kept
    path = write_examples(output.path, rows)
    stats = {"method": method, "requests": len(requests), "samples_per_prompt": generation.samples_per_prompt,
             **dict(counts)}
    Path(f"{output.path}.stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %s -> %s", method, stats, path)
    return path, stats
