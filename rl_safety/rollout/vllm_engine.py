"""A vLLM engine that generates rollouts and receives weights. Plain class; `RolloutActor` wraps it.

Logprobs are vLLM's *processed* logprobs (after temperature / top-k / top-p), which is what the
learner recomputes; vLLM's default raw logprobs would differ by the temperature and make the
rollout/learner comparison meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Completion:
    """One sampled response to a prompt."""

    token_ids: list[int]
    logprobs: list[float]  # processed logprob of each sampled token
    text: str
    truncated: bool  # stopped by max_new_tokens rather than by EOS / a stop string


def checked_max_model_len(model_path: str, explicit: int | None, prompt_tokens: int, new_tokens: int, *,
                          explicit_key: str, budget_keys: str, trust_remote_code: bool = False) -> int:
    """The engines' max_model_len: `explicit` if set, else prompt + response budget. It fails
    (naming the config keys) before any engine starts when that exceeds the model's context:
    vLLM refuses it too, but only inside the engine actor, after Ray and the actor have started.
    Models with RoPE scaling are left to vLLM, which derives their longer limit."""
    from transformers import AutoConfig

    from rl_safety.config.loader import ConfigError

    max_model_len = explicit or prompt_tokens + new_tokens
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    scaled = rope.get("rope_type", rope.get("type", "default")) != "default"
    if limit is not None and not scaled and max_model_len > limit:
        raise ConfigError(f"{explicit_key if explicit else budget_keys} = {max_model_len} tokens, more than the "
                          f"context of {model_path} (max_position_embeddings={limit}): lower them")
    return max_model_len


class RolloutEngine:
    def __init__(self, model_path: str, *, dtype: str, seed: int, tensor_parallel_size: int,
                 max_model_len: int, use_gpu: bool, gpu_memory_utilization: float,
                 kv_cache_memory_mb: int, enforce_eager: bool, sleep_mode: bool,
                 trust_remote_code: bool = False, weight_transfer_backend: str = "gloo",
                 max_lora_rank: int | None = None) -> None:
        from vllm import LLM

        from rl_safety.rollout.weight_transfer import register

        register()
        memory: dict[str, Any] = (
            {"gpu_memory_utilization": gpu_memory_utilization} if use_gpu
            # vLLM 0.32's CPU sampler rewinds a seeded request's generator when its prefill is
            # split into chunks, which CPU generators cannot do ("CPU Generator does not use
            # offset"): with per-request seeds, a large batch crashes unless prefill is whole.
            else {"kv_cache_memory_bytes": kv_cache_memory_mb << 20, "enable_chunked_prefill": False}
        )
        self.sleep_mode = sleep_mode and use_gpu  # vLLM's CPU worker has no sleep mode
        self.llm = LLM(
            model=model_path, dtype=dtype, seed=seed, tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len, enforce_eager=enforce_eager, trust_remote_code=trust_remote_code,
            enable_sleep_mode=self.sleep_mode, enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            weight_transfer_config={"backend": weight_transfer_backend},
            distributed_executor_backend="ray" if tensor_parallel_size > 1 else None,
            **({"enable_lora": True, "max_lora_rank": max_lora_rank} if max_lora_rank else {}),
            **memory,
        )
        self.asleep = False
        self.lora_request = None  # the policy's adapter, when LoRA is synced as an adapter

    def generate(self, prompt_token_ids: list[list[int]], n: int, *, temperature: float,
                 top_p: float, top_k: int, max_new_tokens: int, seeds: list[int]) -> list[list[Completion]]:
        """`n` completions per prompt. Each prompt gets its own sampling seed, so a rollout does
        not depend on how prompts were split across engines (needed for exact resume)."""
        from vllm import SamplingParams, TokensPrompt

        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                           max_tokens=max_new_tokens, logprobs=0, seed=seed)
            for seed in seeds
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids], params, use_tqdm=False,
            lora_request=self.lora_request,
        )
        return [
            [
                Completion(
                    token_ids=list(c.token_ids),
                    logprobs=[entry[tok].logprob for tok, entry in zip(c.token_ids, c.logprobs)],
                    text=c.text,
                    truncated=c.finish_reason == "length",
                )
                for c in out.outputs
            ]
            for out in outputs
        ]

    # ------------------------------------------------------------ weight transfer (vLLM's API)
    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        if self.asleep:  # only the weights wake for a sync; the KV cache waits for generation
            self.llm.wake_up(tags=["weights"])
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
        # Cached prefixes hold KV computed by the old weights: reusing them would mix policies.
        self.llm.reset_prefix_cache()

    def load_adapter(self, path: str, version: int) -> None:
        """Sample from now on with the LoRA adapter saved at `path`. A new id per version: vLLM
        caches adapters by id, so reusing one would keep serving the old weights."""
        from vllm.lora.request import LoRARequest

        self.lora_request = LoRARequest(f"policy-v{version}", version, path)
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------- colocation (GPU only)
    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.sleep_mode and self.asleep:
            self.llm.wake_up()
            self.asleep = False
