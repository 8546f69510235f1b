"""A vLLM engine that generates rollouts, serves judges and receives weights. A plain class;
`rl_safety.orchestration.engines.start_engines` runs it as Ray actors for every command.

Logprobs are vLLM's *processed* logprobs (after temperature / top-k / top-p), which is what the
learner recomputes; vLLM's default raw logprobs would differ by the temperature and make the
rollout/learner comparison meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl_safety.config.engine import EngineSection, SamplingSection


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


def colocated_sleep_level(full_weight_sync: bool) -> int:
    """How a colocated engine sleeps while the learner trains. Level 1 copies the weights to host
    memory and back; level 2 discards them, which is right only when the next weight sync
    rewrites every weight (full-weight sync). A LoRA adapter sync changes only the adapter: the
    base weights must survive the sleep (level 1)."""
    return 2 if full_weight_sync else 1


class RolloutEngine:
    def __init__(self, model_path: str, engine: EngineSection, *, dtype: str, seed: int, max_model_len: int | None,
                 use_gpu: bool, trust_remote_code: bool = False, sleep_level: int | None = None,
                 weight_sync: str | None = None, max_lora_rank: int | None = None,
                 executor_env: dict[str, str] | None = None) -> None:
        """`weight_sync`: the weight-transfer backend that receives a learner's weights
        (`cluster.weight_sync_transport`), None for an engine that only generates.
        `executor_env` (TP > 1, `cluster.engine_placement`): the bundles and GPU share of
        vLLM's Ray workers; this process then holds no GPU itself. `sleep_level` (GPU only:
        vLLM's CPU worker has no sleep mode): what `sleep` does with the weights, see
        `colocated_sleep_level`; None: the engine never sleeps."""
        import os

        tp = engine.tensor_parallel_size
        if tp == 1:
            # One worker runs inside this actor, as OpenRLHF's tp=1 engines do: vLLM's default
            # would spawn an engine-core process that spawns a worker process, each importing
            # torch and vLLM again (about 25 s of every engine start on a 2-core CPU), for an
            # overlap of scheduling with the forward pass that batched offline generation hardly
            # uses. The variable is read when the LLM starts; this actor holds nothing else.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from rl_safety.rollout.weight_transfer import register

        if executor_env:
            # a GPU-less actor may inherit a device list; vLLM's workers pick their own GPUs
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            os.environ.update(executor_env)
        if weight_sync == "ipc":
            # CUDA-IPC handles hold Python objects that vLLM's engine-core channel carries only
            # pickled. Only a TP > 1 engine has that channel (its engine core is a process of its
            # own); a TP-1 engine runs in this actor and ignores the flag. Untested on GPU.
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        register()
        memory: dict[str, Any] = (
            {"gpu_memory_utilization": engine.gpu_memory_utilization} if use_gpu
            # vLLM 0.32's CPU sampler rewinds a seeded request's generator when its prefill is
            # split into chunks, which CPU generators cannot do ("CPU Generator does not use
            # offset"): with per-request seeds, a large batch crashes unless prefill is whole.
            else {"kv_cache_memory_bytes": engine.kv_cache_memory_mb << 20, "enable_chunked_prefill": False}
        )
        self.sleep_level = sleep_level if use_gpu else None
        self.llm = LLM(
            model=model_path, dtype=dtype, seed=seed, tensor_parallel_size=tp,
            max_model_len=max_model_len, enforce_eager=engine.enforce_eager, max_logprobs=engine.max_logprobs,
            trust_remote_code=trust_remote_code,
            enable_sleep_mode=self.sleep_level is not None, enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            weight_transfer_config={"backend": weight_sync} if weight_sync else None,
            distributed_executor_backend="ray" if tp > 1 else "uni",
            **({"enable_lora": True, "max_lora_rank": max_lora_rank} if max_lora_rank else {}),
            **memory,
        )
        self.asleep = False
        self.lora_request = None  # the policy's adapter, when LoRA is synced as an adapter

    def generate(self, prompt_token_ids: list[list[int]], seeds: list[int], n: int,
                 sampling: SamplingSection) -> list[list[Completion]]:
        """`n` completions per prompt. Each prompt gets its own sampling seed, so a rollout does
        not depend on how prompts were split across engines (needed for exact resume)."""
        from vllm import SamplingParams, TokensPrompt

        assert isinstance(sampling.top_k, int), "resolve top_k='family' before generating"
        params = [
            SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                           max_tokens=sampling.max_new_tokens, logprobs=0, seed=seed)
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

    def complete(self, prompts: list[Any], max_tokens: int, chat: bool = False) -> list[str]:
        """Greedy text replies to text prompts or, with `chat`, to conversations (lists of
        {"role", "content"} messages, rendered with the model's own chat template): a judge."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        outputs = (self.llm.chat(prompts, params, use_tqdm=False) if chat
                   else self.llm.generate(prompts, params, use_tqdm=False))
        return [out.outputs[0].text for out in outputs]

    def first_token_logprobs(self, prompts: list[str], words: list[str], top_logprobs: int) -> list[list[float | None]]:
        """Per text prompt, the log-probability of each of `words` as the first generated token
        (None where it is not among the `top_logprobs` most likely): a judge's soft verdict. Each
        word must be one token of the model's vocabulary: a sub-word piece would read the wrong
        probability."""
        from vllm import SamplingParams

        from rewards.judge import JudgeOutputError

        tokenizer = self.llm.get_tokenizer()
        ids = []
        for word in words:
            pieces = tokenizer.encode(word, add_special_tokens=False)
            if len(pieces) != 1:
                raise JudgeOutputError(f"verdict word {word!r} is {len(pieces)} tokens {pieces} for this judge, not one")
            ids.append(pieces[0])
        params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=top_logprobs)
        out = []
        for result in self.llm.generate(prompts, params, use_tqdm=False):
            first = result.outputs[0].logprobs[0]  # token id -> Logprob of the first position
            out.append([first[i].logprob if i in first else None for i in ids])
        return out

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
        if self.sleep_level is not None and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.sleep_level is not None and self.asleep:
            self.llm.wake_up()
            self.asleep = False
