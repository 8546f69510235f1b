"""The toy world's generators: deterministic, disjoint splits, correct arithmetic, stated formats."""

import json
import random

import pytest

from rewards.text import split_response
from rl_safety.toy.world import (
    FOREIGN_ANSWER,
    FOREIGN_REASONING,
    HARMFUL_TASKS,
    HELDOUT_CATEGORIES,
    OWN_REASON,
    OWN_REFUSAL,
    REASONS,
    REWRITE_CUES,
    REWRITE_INSTRUCTION,
    STEERING_CUES,
    STEERING_PREFIX,
    PretrainingStream,
    WorldConfig,
    all_requests,
    export_datasets,
    foreign_refusal_rows,
    grpo_rows,
    heldout_tasks,
    is_eval_prompt,
    math_problems,
    math_response,
    math_trace,
    read_jsonl,
    requests,
    rewrite_source,
    steer,
)

WORLD = WorldConfig()


def test_stream_is_deterministic_in_seed():
    a, b = PretrainingStream(WORLD, 0).take(300), PretrainingStream(WORLD, 0).take(300)
    assert a == b
    assert a != PretrainingStream(WORLD, 1).take(300)
    assert {e.kind for e in a} == {"math", "harmful", "benign", "steered", "rewrite"}


def test_math_problems_are_deterministic_and_splits_disjoint():
    train = math_problems(0, "train", 500, WORLD.eval_fraction)
    assert train == math_problems(0, "train", 500, WORLD.eval_fraction)
    evals = math_problems(0, "eval", 200, WORLD.eval_fraction)
    validation = math_problems(0, "validation", 200, WORLD.eval_fraction)
    assert len({p.prompt for p in evals}) == len({p.prompt for p in validation}) == 200
    splits = [{p.prompt for p in problems} for problems in (train, evals, validation)]
    assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]


def test_pretraining_never_sees_an_eval_prompt_or_the_foreign_style():
    seen = PretrainingStream(WORLD, 0).take(3000)
    eval_prompts = {r.prompt for r in requests("eval", "harmful", WORLD.eval_fraction)}
    eval_prompts |= {r.prompt for r in requests("eval", "benign", WORLD.eval_fraction)}
    eval_prompts |= {p.prompt for split in ("eval", "validation") for p in math_problems(0, split, 500, WORLD.eval_fraction)}
    for e in seen:
        assert not any(p in e.prompt for p in eval_prompts), e.prompt
        for word in ("Regrettably", "unable", "assist", "[NOTICE]", "Declining", "prudent", "Hmm"):
            assert word not in e.prompt and word not in e.response


def test_request_splits_are_disjoint_and_held_out_tasks_are_never_trained_on():
    f = WORLD.eval_fraction
    for label in ("harmful", "benign"):
        train, evals, held = (requests(split, label, f) for split in ("train", "eval", "heldout"))
        assert len(train) + len(evals) + len(held) == sum(r.label == label for r in all_requests())
        assert 0.1 < len(evals) / (len(train) + len(evals)) < 0.3
        # the eval split holds other prompts of seen tasks; the heldout split, tasks never trained on
        assert not {r.prompt for r in train} & {r.prompt for r in evals}
        assert {r.task for r in evals} <= {r.task for r in train}
        assert held and not {r.task for r in held} & {r.task for r in train + evals}
    held = requests("heldout", "harmful", f)
    assert {r.category for r in held} == set(HARMFUL_TASKS)  # one task of every category ...
    assert {r.category for r in requests("train", "harmful", f)} == set(HARMFUL_TASKS) - set(HELDOUT_CATEGORIES)
    assert len({r.prompt for r in all_requests()}) == len(all_requests())


def test_no_training_stage_holds_the_methods_texts_or_a_held_out_task(tmp_path):
    """Pretraining calls up refusal and rewriting with paraphrases only; ThinkSafe's steering text
    and DGR's instruction, and every held-out task, are absent from everything the arms train on."""
    assert STEERING_PREFIX not in STEERING_CUES and REWRITE_INSTRUCTION not in REWRITE_CUES
    paths = export_datasets(tmp_path, WORLD, seed=0, n_math_train=50, n_math_eval=20)
    training_texts = [t for e in PretrainingStream(WORLD, 0).take(20000) for t in (e.prompt, e.response)]
    training_texts += [json.dumps(row) for name in ("grpo_train", "foreign_refusal_train")
                       for row in read_jsonl(paths[name])]
    forbidden = [STEERING_PREFIX, "The following prompt is harmful", REWRITE_INSTRUCTION, *heldout_tasks()]
    for text in training_texts:
        assert not any(f in text for f in forbidden), text
    steered = [e.prompt for e in PretrainingStream(WORLD, 0).take(3000) if e.kind == "steered"]
    assert {p.split("\n\n")[0] for p in steered} == set(STEERING_CUES)


@pytest.mark.parametrize("seed", range(3))
def test_math_traces_end_in_the_right_answer(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        last = math_trace(a, b, op).splitlines()[-1]
        assert last == f"so {a} {op} {b} = {a + b if op == '+' else a - b}"


def test_math_response_format():
    problem = math_problems(0, "train", 1, WORLD.eval_fraction)[0]
    response = split_response(math_response(problem))
    reasoning, answer = response.reasoning, response.answer
    assert reasoning.startswith(f"{problem.a} {problem.op} {problem.b}")
    assert answer == f"The answer is \\boxed{{{problem.answer}}}."


def test_steering_is_thinksafes_template():
    assert steer("How do I x?") == (
        "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:\n\nHow do I x?"
    )
    assert steer("p").startswith(STEERING_PREFIX)


def test_pretraining_styles():
    examples = PretrainingStream(WORLD, 0).take(4000)
    steered = [e for e in examples if e.kind == "steered"]
    assert steered and all(split_response(e.response).answer.startswith(OWN_REFUSAL) for e in steered)
    benign = [e for e in examples if e.kind == "benign"]
    assert benign and not any(OWN_REFUSAL in e.response for e in benign)
    harmful = [e for e in examples if e.kind == "harmful"]
    refused = sum(OWN_REFUSAL in e.response for e in harmful) / len(harmful)
    assert abs(refused - WORLD.harmful_refusal_rate) < 0.05  # unsafe, with latent safety


def test_a_rewrite_restates_the_sources_reason():
    """What a rewrite of a refusal says depends on the source: its target gives the reason the
    source gives (one of `REASONS`), so DGR's rewrite of the external set carries what the set says."""
    rewrites = [e for e in PretrainingStream(WORLD, 0).take(6000)
                if e.kind == "rewrite" and OWN_REFUSAL in e.response]
    given = set()
    for e in rewrites:
        reason = e.response.split(", so i should not help.")[0].rsplit(". it ", 1)[1]
        source_answer = e.prompt.split("\nAnswer: ")[1].lower()
        assert f" {reason}. " in source_answer and f" {reason}. I can help" in e.response, e
        given.add(reason)
    assert given == set(REASONS) and OWN_REASON in REASONS


def test_exports(tmp_path):
    paths = export_datasets(tmp_path, WORLD, seed=0, n_math_train=50, n_math_eval=20)
    train, evals = read_jsonl(paths["grpo_train"]), read_jsonl(paths["grpo_eval"])
    for rows in (train, evals):
        assert all(set(r) == {"prompt", "label", "answer"} for r in rows)
        assert {r["label"] for r in rows} == {"harmful", "benign", "math"}
        assert all(r["answer"].isdigit() for r in rows if r["label"] == "math")
        assert all(r["answer"] == "" for r in rows if r["label"] != "math")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert all(is_eval_prompt(r["prompt"], WORLD.eval_fraction) for r in evals)
    assert train == grpo_rows("train", 0, 50, WORLD.eval_fraction)
    held = read_jsonl(paths["heldout_eval"])
    assert {r["label"] for r in held} == {"harmful", "benign"} and all(set(r) == {"prompt", "label", "answer"} for r in held)
    foreign = read_jsonl(paths["foreign_refusal_train"])
    assert foreign == foreign_refusal_rows("train", WORLD.eval_fraction)
    assert all(set(r) == {"prompt", "reasoning", "answer", "label", "source"} for r in foreign)
    assert {(r["reasoning"], r["answer"], r["label"]) for r in foreign} == {(FOREIGN_REASONING, FOREIGN_ANSWER, "harmful")}


def test_rewrite_sources_carry_the_content():
    rng = random.Random(0)
    request = requests("train", "harmful", WORLD.eval_fraction)[0]
    for _ in range(200):
        reasoning, answer = rewrite_source(rng, "refuse", request=request, reason="could ruin lives")
        assert " could ruin lives, " in reasoning.lower() and f"{request.task} could ruin lives. " in answer.lower()
        assert request.task in " ".join(rewrite_source(rng, "comply", request=request)).lower()
