"""The tokenizer and the base-model build: round trips, caching, determinism, and loading the result
through the ordinary Hugging Face and vLLM paths."""

import json

import pytest
import torch

from rl_safety.toy.model import BuildConfig, build_base_model, chat_prompt, model_dir, train_tokenizer
from rl_safety.toy.world import PretrainingStream, WorldConfig, foreign_refusal_response, steer


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for e in PretrainingStream(WorldConfig(), 0).take(500) for t in (e.prompt, e.response)]
    return train_tokenizer(texts, 512)


@pytest.mark.parametrize("text", [
    "What is 345 plus 278?", "<think>\n345 + 278\nones: 5 + 8 = 13\n</think>\n\nThe answer is \\boxed{623}.",
    steer("How do I kill a python process?"), foreign_refusal_response(), "  odd   spacing\t~`|{}é漢字 ",
])
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # <think> tags are not "special"


def test_tokenizer_digits_and_think_tags_are_single_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("<think>1234</think>", add_special_tokens=False)["input_ids"])
    assert tokens == ["<think>", "1", "2", "3", "4", "</think>"]


def test_chat_template(tokenizer):
    assert chat_prompt(tokenizer, "hi") == "<|user|>hi<|end|><|assistant|>"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nyo"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|user|>hi<|end|><|assistant|><think>\nx\n</think>\n\nyo<|end|>")
    assert tokenizer.eos_token == "<|end|>"
    # the trainer's path (apply_chat_template tokenizing) gives the ids generation and pretraining use
    ids = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == tokenizer(chat_prompt(tokenizer, "hi"), add_special_tokens=False)["input_ids"]


def test_config_key_and_overrides():
    assert BuildConfig().key() == BuildConfig().key() != BuildConfig(seed=1).key()
    cfg = BuildConfig.from_overrides({"steps": "7", "tie_word_embeddings": "false", "world.harmful_refusal_rate": "0.2"})
    assert (cfg.steps, cfg.tie_word_embeddings, cfg.world.harmful_refusal_rate) == (7, False, 0.2)
    with pytest.raises(KeyError, match="stepz"):
        BuildConfig.from_overrides({"stepz": "1"})
    with pytest.raises(ValueError, match="steps"):
        BuildConfig.from_overrides({"steps": "many"})


def test_build_is_cached_and_deterministic(small_model, small_config, tmp_path, monkeypatch):
    assert small_model == model_dir(small_config) and (small_model / "build.json").exists()
    assert not [p for p in small_model.parent.iterdir() if p.name.startswith(".")]  # no temp dir left
    stamp = (small_model / "model.safetensors").stat().st_mtime_ns
    assert build_base_model(small_config) == small_model  # cache hit: no rebuild
    assert (small_model / "model.safetensors").stat().st_mtime_ns == stamp

    from safetensors.torch import load_file

    monkeypatch.setenv("RL_SAFETY_CACHE", str(tmp_path))
    again = build_base_model(small_config, log=lambda msg: None)
    assert again != small_model
    a, b = load_file(small_model / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "build.json").read_text())["loss_curve"] == json.loads(
        (small_model / "build.json").read_text())["loss_curve"]


def test_build_exports_the_datasets(small_model):
    info = json.loads((small_model / "build.json").read_text())
    assert set(info["data"]) == {"grpo_train", "grpo_eval", "heldout_eval", "foreign_refusal_train", "foreign_refusal_eval"}
    assert all((small_model / rel).stat().st_size > 0 for rel in info["data"].values())


def test_transformers_loads_and_generates(small_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_model)
    model = AutoModelForCausalLM.from_pretrained(small_model)
    assert model.config.model_type == "qwen2"
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    ids = tok(chat_prompt(tok, "What is 12 plus 30?"), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.integration
def test_vllm_generates_what_transformers_generates(small_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_safety.toy.evaluate import generate

    messages = ["What is 12 plus 30?", "How do I crack an egg?", steer("How do I hurt my dog?")]
    texts = [outs[0] for outs in generate(str(small_model), messages, [{"temperature": 0.0, "max_tokens": 12}] * 3)]
    tok = AutoTokenizer.from_pretrained(small_model)
    model = AutoModelForCausalLM.from_pretrained(small_model)
    assert any(texts)
    for message, text in zip(messages, texts, strict=True):
        ids = tok(chat_prompt(tok, message), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
        assert text == tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_shipping_replaces_the_shipped_build_and_keeps_itself(small_model, tmp_path, monkeypatch):
    from rl_safety.toy import model

    monkeypatch.setattr(model, "SHIPPED", tmp_path / "shipped")
    (tmp_path / "shipped" / "base-stale").mkdir(parents=True)
    shipped = model.ship_base_model(small_model)
    assert [p.name for p in (tmp_path / "shipped").iterdir()] == [small_model.name]
    assert (shipped / "model.safetensors").read_bytes() == (small_model / "model.safetensors").read_bytes()
    assert model.ship_base_model(shipped) == shipped and (shipped / "model.safetensors").exists()
