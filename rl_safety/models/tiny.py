"""Tiny causal LMs built from a config, with a tokenizer trained in-process.

Tests, benchmarks and examples need real Hugging Face checkpoints that vLLM, DeepSpeed and PEFT
load through their ordinary `from_pretrained` paths, without a model hub. A tiny Qwen2 here is a
real Qwen2 (same code paths as Qwen2.5 / R1-distill-Qwen), only small.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
# Ordinary added tokens, as in Qwen3: decoding with skip_special_tokens=True (vLLM's default)
# keeps them, so rewards still find the closing </think>.
THINK_TOKENS = ["<think>", "</think>"]


def train_char_tokenizer(path: str | Path):
    """A byte-level tokenizer without merges (one token per byte, + chat specials), saved to `path`.

    One token per byte keeps the vocabulary tiny and every string encodable. It is a byte-level
    BPE like Qwen2's own, so `AutoTokenizer` (which picks `Qwen2Tokenizer` for a Qwen2 model and
    applies Qwen2's byte-level pre-tokenizer) encodes spaces and newlines instead of dropping them."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_tiny_model(
    path: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 256,
    tie_word_embeddings: bool = True,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny Qwen2 + tokenizer to `path` (head_dim = hidden/heads;
    keep it >= 32: vLLM's CPU attention rejects head_dim 16)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = train_char_tokenizer(path)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(path))
    model.generation_config.save_pretrained(str(path))
    return path
