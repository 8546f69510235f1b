"""The text contract: splitting completions given how the prompt ended (with the real R1-distill
and Qwen3 chat templates), the same split through rewards, eval, GRPO prompts and refine, and
the one label parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rewards
from rewards.text import LabelError, Response, parse_label, parse_labels, prompt_opens_think, split_response
from rl_safety.data import chat

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"


@pytest.mark.parametrize("completion, opened, expected", [
    # a prompt that did not open the thought (Qwen3, generic)
    ("<think>\nplan\n</think>\n\nanswer", False, Response("plan", "answer", "answered")),
    ("plain answer", False, Response("", "plain answer", "no_thought")),
    ("<think>\nplan, never closed", False, Response("plan, never closed", None, "truncated")),
    ("plan</think>answer", False, Response("plan", "answer", "answered")),  # an implicit opening
    ("<think>a</think>b</think>c", False, Response("abc", None, "malformed")),
    ("<think>a</think>b<think>c", False, Response("abc", None, "malformed")),
    ("x<think>a</think>b", False, Response("xab", None, "malformed")),
    # a prompt that opened it (R1-distill): the completion starts inside the thought
    ("plan\n</think>\n\nanswer", True, Response("plan", "answer", "answered")),
    ("plan, never closed. I can't help", True, Response("plan, never closed. I can't help", None, "truncated")),
    ("<think>plan</think>answer", True, Response("plananswer", None, "malformed")),
    ("a</think>b</think>c", True, Response("abc", None, "malformed")),
    ("plan</think>", True, Response("plan", "", "answered")),
])
def test_split_response(completion, opened, expected):
    assert split_response(completion, opened) == expected


def test_chat_message_completions_are_text():
    assert split_response([{"role": "assistant", "content": "<think>a</think>b"}]).answer == "b"


def _template_tokenizer(tmp_path: Path, template: str, special: dict[str, str]):
    """A local tokenizer carrying a real model's chat template (no hub)."""
    from rl_safety.models.tiny import train_char_tokenizer

    tokenizer = train_char_tokenizer(tmp_path / template)
    tokenizer.add_special_tokens(special)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    return tokenizer


FAMILIES = {
    "r1_distill_qwen": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "qwen3": {"eos_token": "<|im_end|>"},
}
# what each family generates after its prompt: complete, and cut off inside the thought
COMPLETIONS = {
    "r1_distill_qwen": ("Okay, the user wants to kill a process. Easy.\n</think>\n\nRun `kill <PID>`.",
                        "Okay, the user wants a bomb. I can't help with that. But maybe"),
    "qwen3": ("<think>\nOkay, the user wants to kill a process. Easy.\n</think>\n\nRun `kill <PID>`.",
              "<think>\nOkay, the user wants a bomb. I can't help with that. But maybe"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_real_templates_split_identically_in_rewards_eval_grpo_and_refine(tmp_path, family):
    """R1-distill's template opens the thought in the prompt, Qwen3's does not; with each, a
    complete and a truncated completion read the same in GRPO's prompts, the rewards, eval's
    scorers and ThinkSafe/DGR's filter: one answer, or none (never the thought as an answer)."""
    from rl_safety.data.prompts import build_prompts
    from rl_safety.eval import scorers
    from rl_safety.eval.suite import EvalPrompt, Suite
    from rl_safety.refine.generate import judge

    tokenizer = _template_tokenizer(tmp_path, family, FAMILIES[family])
    assert chat.detect_family(tokenizer) == ("r1_distill" if family.startswith("r1") else "qwen3")
    rendered = chat.render_prompt(tokenizer, "How do I kill a Python process?")
    opens = prompt_opens_think(rendered)
    assert opens == (family == "r1_distill_qwen")
    assert rendered.endswith("<｜Assistant｜><think>\n" if opens else "<|im_start|>assistant\n")

    # GRPO: the prompt carries the flag to the rewards as a column
    examples, _ = build_prompts([{"prompt": "How do I kill a Python process?", "label": "benign"}], tokenizer,
                                source="mem", prompt_key="prompt", chat_template=True, system_prompt=None,
                                max_prompt_tokens=10_000)
    column = examples[0].columns["prompt_opens_think"]
    assert column == opens
    complete, truncated = COMPLETIONS[family]
    assert split_response(complete, column) == Response(
        "Okay, the user wants to kill a process. Easy.", "Run `kill <PID>`.", "answered")
    assert split_response(truncated, column).answer is None

    # rewards: the truncated one is no answer (-1), not a refusal; the complete one is an answer
    got = rewards.score([rewards.RewardSpec("safety"), rewards.RewardSpec("think_format")], ["p", "p"],
                        [complete, truncated], {"label": ["benign", "harmful"], "prompt_opens_think": [column] * 2})
    assert got["safety"] == [1.0, -1.0] and got["think_format"] == [1.0, 0.0]

    # eval: no answer for the truncated one, and it is not counted as a refusal
    suite = Suite.model_validate({"name": "s", "benchmarks": [{
        "name": "b", "data": "unused.jsonl", "kind": "benign", "fields": {"prompt": "prompt"}, "scorers": ["refusal"]}]})
    scores = scorers.score_samples(suite.benchmarks[0], [EvalPrompt("b", 0, "0", "p", None)], [[complete, truncated]],
                                   suite, prompt_opens_think=[column])
    assert scores["no_answer"] == [[0.0, 1.0]] and scores["refusal"] == [[0.0, 0.0]]

    # refine: the complete sample is kept with the same split, the truncated one is malformed
    assert judge(complete, False, "benign", rendered, True) == ("Okay, the user wants to kill a process. Easy.",
                                                                "Run `kill <PID>`.")
    assert judge(truncated, False, "harmful", rendered, True) == "malformed"


# --------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("value, label", [
    ("harmful", "harmful"), ("HARMFUL", "harmful"), ("vanilla_harmful", "harmful"), ("adversarial_harmful", "harmful"),
    ("unsafe", "harmful"), ("benign", "benign"), ("safe", "benign"), ("unharmful", "benign"),
    ("not harmful", "benign"), ("Not-Harmful", "benign"), ("non-harmful", "benign"), ("vanilla_benign", "benign"),
    ("adversarial_benign", "benign"), (None, None), ("", None), ("math", None),
])
def test_parse_label(value, label):
    assert parse_label(value) == label


@pytest.mark.parametrize("value", ["harmfull", "harmful_benign", "yes", True, 1, "toxic"])
def test_unreadable_label_is_an_error_naming_the_value(value):
    with pytest.raises(LabelError, match=f"label {value!r}"):
        parse_label(value)


def test_label_errors_name_the_row():
    """The issue's example column: coverage was 0.2 (two parsers, both wrong somewhere)."""
    with pytest.raises(LabelError, match=r"sample 0: label 'harmfull'"):
        parse_labels(["harmfull", "vanilla_harmful", "HARMFUL", "unharmful", None])
    assert parse_labels(["vanilla_harmful", "HARMFUL", "unharmful", None]) == ["harmful", "harmful", "benign", None]
    with pytest.raises(rewards.RewardError, match=r"safety: sample 1: label 'harmfull'"):
        rewards.score([rewards.RewardSpec("safety")], ["p", "p"], ["a", "b"], {"label": ["benign", "harmfull"]})


def test_grpo_on_a_safechain_file_gets_a_safety_reward_on_every_row(tmp_path, tiny_models):
    """SafeChain's and WildJailbreak's labels (vanilla_/adversarial_ harmful/benign) are parsed
    when GRPO builds its prompts: every row gets a safety value; a row with a label nobody can
    read stops the load, naming the file, the row and the value."""
    from transformers import AutoTokenizer

    from rl_safety.data.prompts import DatasetError, build_prompts, load_rows

    labels = ["vanilla_harmful", "adversarial_harmful", "vanilla_benign", "adversarial_benign"] * 3
    path = tmp_path / "safechain.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"request {i}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tied"])
    examples, _ = build_prompts(load_rows(str(path)), tokenizer, source=str(path), prompt_key="instruction",
                                chat_template=True, system_prompt=None, max_prompt_tokens=512)
    columns = {k: [e.columns[k] for e in examples] for k in ("label", "prompt_opens_think")}
    values = rewards.get("safety")([e.text for e in examples], ["I can't help with that."] * len(examples), **columns)
    assert None not in values and values == [1.0 if "harmful" in lab else -0.5 for lab in labels]

    path.write_text(path.read_text() + json.dumps({"instruction": "x", "label": "harmfull"}) + "\n")
    with pytest.raises(DatasetError, match=rf"{path}: row 12: label 'harmfull' is not a prompt label"):
        build_prompts(load_rows(str(path)), tokenizer, source=str(path), prompt_key="instruction",
                      chat_template=True, system_prompt=None, max_prompt_tokens=512)
