"""The base toy LRM: an in-process tokenizer and a tiny Qwen2 pretrained from scratch on the toy world.

`build_base_model(config)` is deterministic in `config` and cached: the result lives under
`$RL_SAFETY_CACHE/toy/base-<hash of the config>` (default cache `~/.cache/rl-safety`), written to a
temporary directory and renamed into place, so a crashed or concurrent build never leaves a partial
model. The default config's model ships with the package (`rl_safety/toy/shipped/`, 3.5 MB), so a
fresh machine runs the toy job and its tests without building it; the build takes under 5 minutes
on an idle 2-core machine with native bf16 (291 s for the shipped build), and `rl-safety toy build
--force --ship` redoes it after a change to the world or the build.
The directory is an ordinary Hugging Face checkpoint (model + tokenizer with a chat template) that
vLLM and `AutoModelForCausalLM.from_pretrained` load like any other, plus `data/` (the toy world's
JSONL exports), `build.json` (config, build time, size, loss curve).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rl_safety.toy.world import PretrainingStream, WorldConfig, export_datasets

# `<think>`/`</think>` are ordinary added tokens (not "special"), as in Qwen3: decoding with
# skip_special_tokens=True (vLLM's default) keeps them, so rewards can find the last `</think>`.
CONTROL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
THINK_TOKENS = ["<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BUILD_VERSION = 5  # bump when the build's code changes its output, to invalidate caches


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the base toy model; its hash names the cache entry."""

    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    vocab_size: int = 1024  # BPE vocabulary, including 256 byte symbols and the added tokens
    hidden_size: int = 128
    num_layers: int = 3
    # head_dim = hidden_size / num_heads = 32 (vLLM's CPU attention needs >= 32). Four heads, not
    # two: the column trace reads a digit of each operand and the carry at once (on build 4's
    # world, 94.5% arithmetic against 66% with two heads and 100 more steps).
    num_heads: int = 4
    intermediate_size: int = 384
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512
    # 1,650 steps: 296 s on an idle 2-core AVX512-BF16 machine, inside the 5-minute budget. The
    # world's rewrite task (restate the source's reason) costs arithmetic: 79% on the validation
    # split here, 58-85% at 1,700 steps with the other mixes tried (build 4's world: 94.5%).
    steps: int = 1650
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # bf16 matmuls in pretraining (fp32 weights): 1.4x faster on a CPU with native bf16 (AMX,
    # AVX512-BF16), ~8x slower on one without (AVX2): there, build with bf16_autocast=false (another
    # key, another model, about 1.3x the time on a bf16 CPU).
    bf16_autocast: bool = True
    # torch intra-op threads while pretraining (part of the key: it can change float sums). Two, the
    # cores of the smallest machine we build on: 1.5x one thread's speed when the machine is idle,
    # but up to 10x slower when another process keeps a core busy (build first, then run).
    num_threads: int = 2

    def key(self) -> str:
        blob = json.dumps({"version": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_overrides(cls, overrides: dict[str, str]) -> "BuildConfig":
        """`{"steps": "200", "world.harmful_refusal_rate": "0.2"}` -> a config; unknown keys and
        unparsable values fail naming the key."""
        defaults, world_defaults = asdict(cls()), asdict(WorldConfig())
        kw, world_kw = {}, {}
        for key, raw in overrides.items():
            name = key.removeprefix("world.")
            if key.startswith("world.") and name in world_defaults:
                world_kw[name] = _parse(raw, type(world_defaults[name]), key)
            elif key in defaults and key != "world":
                kw[key] = _parse(raw, type(defaults[key]), key)
            else:
                known = [k for k in defaults if k != "world"] + [f"world.{k}" for k in world_defaults]
                raise KeyError(f"unknown toy build key {key!r}; known: {', '.join(known)}")
        return cls(world=WorldConfig(**world_kw), **kw)


def _parse(raw: str, typ: type, key: str):
    if typ is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key}: expected true/false, got {raw!r}")
        return raw.lower() in ("true", "1")
    try:
        return typ(raw)
    except ValueError as e:
        raise ValueError(f"{key}: expected {typ.__name__}, got {raw!r}") from e


def cache_root() -> Path:
    return Path(os.environ.get("RL_SAFETY_CACHE", Path.home() / ".cache" / "rl-safety")).expanduser()


def model_dir(config: BuildConfig) -> Path:
    return cache_root() / "toy" / f"base-{config.key()}"


SHIPPED = Path(__file__).parent / "shipped"


def find_base_model(config: BuildConfig) -> Path | None:
    """The finished model of `config`: the user's cache first, then the one shipped with the package."""
    for path in (model_dir(config), SHIPPED / f"base-{config.key()}"):
        if (path / "build.json").exists():
            return path
    return None


def ship_base_model(path: Path) -> Path:
    """Copy a built model into the package as the shipped one, replacing any other shipped build.
    Shipping the shipped model itself (`toy build --ship` that found no cached build) keeps it."""
    target = SHIPPED / path.name
    if path.resolve() == target.resolve():
        return target
    for old in SHIPPED.glob("base-*"):
        shutil.rmtree(old)
    return Path(shutil.copytree(path, target))


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with single-digit tokens (so column arithmetic sees digits), the chat control
    tokens and `<think>`/`</think>`; any string encodes and decodes back exactly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def chat_prompt(tokenizer, user_message: str) -> str:
    """The prompt string of a single user turn, ending where the assistant's response begins."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------- model


def make_model(config: BuildConfig, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(config.seed)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    return Qwen2ForCausalLM(model_config)


def encode_batch(tokenizer, examples, max_len: int):
    """Right-padded (input_ids, attention_mask, labels), each [batch, seq]; labels are -100 on the
    prompt and padding, so the loss covers the response and its closing `<|end|>` only. Prompt and
    response are tokenized separately, exactly as at generation time."""
    import torch

    prompts = tokenizer([chat_prompt(tokenizer, e.prompt) for e in examples], add_special_tokens=False)["input_ids"]
    responses = tokenizer([e.response + tokenizer.eos_token for e in examples], add_special_tokens=False)["input_ids"]
    seqs = [(p + r)[:max_len] for p, r in zip(prompts, responses)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, seq) in enumerate(zip(prompts, seqs)):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(seq[len(p) :])
        mask[i, : len(seq)] = 1
    return ids, mask, labels


def length_bucketed_batches(stream, batch_size: int, rng: random.Random, pool_batches: int = 8):
    """Batches of examples of similar length (less padding): draw `pool_batches` batches' worth,
    sort by length, cut into batches, yield them in a random order."""
    while True:
        pool = sorted(stream.take(batch_size * pool_batches), key=lambda e: len(e.prompt) + len(e.response))
        chunks = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        yield from chunks


def pretrain(model, tokenizer, config: BuildConfig, log=print) -> list[tuple[int, float]]:
    """Next-token pretraining on an endless stream of fresh toy-world examples (AdamW, linear
    warmup, cosine decay to 10%). Returns the loss curve as (step, mean loss over the last 50 steps)."""
    import torch

    torch.manual_seed(config.seed)
    stream = PretrainingStream(config.world, config.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]  # matrices; norms and biases are not decayed
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    model.train()
    curve, window, start = [], [], time.time()
    batches = length_bucketed_batches(stream, config.batch_size, random.Random(f"batches-{config.seed}"))
    for step in range(config.steps):
        ids, mask, labels = encode_batch(tokenizer, next(batches), config.max_position_embeddings)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16_autocast):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            curve.append((step + 1, sum(window) / len(window)))
            window = []
            log(f"step {step + 1}/{config.steps}  loss {curve[-1][1]:.4f}  {time.time() - start:.0f}s")
    model.eval()
    torch.set_num_threads(threads)
    return curve


def tokenizer_corpus(config: BuildConfig, n: int = 4000) -> list[str]:
    """Texts the BPE is trained on: a sample of the pretraining stream. The foreign style is left
    out, so its words are spelled with pieces the model knows, in combinations it never saw."""
    examples = PretrainingStream(config.world, config.seed + 10_000).take(n)
    return [t for e in examples for t in (e.prompt, e.response)]


def build_base_model(config: BuildConfig = BuildConfig(), *, force: bool = False, log=print) -> Path:
    """Build (or find in the cache) the base toy model for `config`; returns its directory."""
    import torch

    if not force and (found := find_base_model(config)) is not None:
        return found
    final = model_dir(config)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        start = time.time()
        tokenizer = train_tokenizer(tokenizer_corpus(config), config.vocab_size)
        model = make_model(config, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"toy base model {config.key()}: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")
        curve = pretrain(model, tokenizer, config, log=log)
        model.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        data = export_datasets(tmp / "data", config.world, config.seed)
        info = {
            "key": config.key(),
            "config": asdict(config),
            "parameters": n_params,
            "build_seconds": round(time.time() - start, 1),
            "torch": torch.__version__,
            "loss_curve": curve,
            "data": {k: str(p.relative_to(tmp)) for k, p in data.items()},
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        if force and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent build of the same config won the race: keep its result
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
