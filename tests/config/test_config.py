"""Config loading and validation: every mistake names the key and where it came from."""

from __future__ import annotations

import re

import pytest
import yaml

from rl_safety.config import ConfigError, GRPOConfig, load_config, parse_overrides

BASE = {
    "model": {"path": "some/model"},
    "data": {"train": "prompts.jsonl"},
    "rewards": [{"name": "safety"}],
}


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(GRPOConfig, write(tmp_path, BASE),
                      ["algorithm.group_size=4", "run.name=x", "learner.adam_betas=[0.9,0.95]", "model.dtype=float32"])
    assert cfg.algorithm.group_size == 4 and isinstance(cfg.algorithm.group_size, int)
    assert cfg.run.name == "x"
    assert cfg.learner.adam_betas == (0.9, 0.95)
    assert cfg.learner.zero_stage == 2  # default kept


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {**BASE, "algorithm": {"group_sise": 4}})
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, path)
    assert "algorithm.group_sise" in str(err.value) and path in str(err.value)


def test_wrong_type_from_override_says_overrides(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, write(tmp_path, BASE), ["learner.num_ranks=two"])
    assert "learner.num_ranks" in str(err.value) and "overrides" in str(err.value)


@pytest.mark.parametrize("overrides,needle", [
    (["algorithm.group_size=1"], "group_size"),
    (["learner.num_ranks=3"], "learner.num_ranks=3"),
    (["learner.micro_batch_size=5"], "micro_batch_size"),
    (["cluster.placement=colocated", "learner.num_ranks=2"], "colocated"),
    (["algorithm.clip_high=0.1"], "clip_high"),
    (["learner.zero_stage=5"], "learner.zero_stage"),
    # refused at load, each with the reason (see the validators' messages)
    (["rollout.top_p=0.95"], "rollout.top_p=0.95 / rollout.top_k=0 truncate sampling"),
    (["rollout.top_k=20"], "rollout.top_p=1.0 / rollout.top_k=20 truncate sampling"),
    (["algorithm.kl_coef=0.1", "algorithm.kl_estimator=k1"], "k1's expected gradient is E[grad log pi] = 0"),
    (["algorithm.kl_coef=0.1", "algorithm.kl_placement=reward", "algorithm.kl_estimator=k3+"], "'+' changes only"),
    (["algorithm.policy_loss=gspo"], "gspo needs loss_aggregation=seq_mean_token_mean"),
    (["algorithm.dual_clip=1.0"], "algorithm.dual_clip"),
    (["algorithm.dynamic_sampling_oversample=0.5"], "algorithm.dynamic_sampling_oversample"),
    (["algorithm.dynamic_sampling_shortfall=skip"], "algorithm.dynamic_sampling_shortfall"),
    (["algorithm.advantage_estimator=ppo"], "algorithm.advantage_estimator: unknown advantage "
                                            "estimator 'ppo'; registered: dr_grpo, "),
    (["algorithm.policy_loss=cispo"], "unknown policy loss 'cispo'; registered: gspo, ppo_clip"),
    (["algorithm.loss_aggregation=token_sum"], "algorithm.loss_aggregation: unknown loss aggregation"),
    (["algorithm.modules=[no/such/file.py]"], "algorithm.modules: algorithm module"),
])
def test_impossible_combinations_fail(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, write(tmp_path, BASE), overrides)
    assert needle in str(err.value)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GRPOConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["algorithm.group_size"])


def test_batch_plan_states_the_arithmetic(tmp_path):
    cfg = load_config(GRPOConfig, write(tmp_path, BASE),
                      ["algorithm.prompts_per_step=4", "algorithm.group_size=8", "algorithm.mini_batches_per_step=2",
                       "learner.num_ranks=2", "learner.micro_batch_size=4"])
    plan = cfg.batch_plan()
    assert "32 sequences per step" in plan and "8 sequences per rank" in plan and "(2 accumulation" in plan


def test_numbers_are_strict_finite_and_in_range(tmp_path):
    path = write(tmp_path, BASE)
    for override, needle in [("run.total_steps=true", "run.total_steps: Input should be a valid integer"),
                             ("run.logprob_diff_bound=.inf", "run.logprob_diff_bound: Input should be a finite number"),
                             ("rollout.max_model_len=-5", "rollout.max_model_len: Input should be greater than"),
                             ("rollout.gpu_memory_utilization=5", "less than or equal to 1"),
                             ("learner.adam_betas=[0.9, 1.0]", "each beta must be in [0, 1)")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config(GRPOConfig, path, [override])
    cfg = load_config(GRPOConfig, path, ["learner.learning_rate=1e-5", "rollout.temperature=1"])
    assert cfg.learner.learning_rate == 1e-5 and isinstance(cfg.rollout.temperature, float)  # YAML 1.2 floats


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("model: {path: m}\ndata: {train: d}\nrewards: [{name: r}]\nrun:\n  name: a\nrun:\n  name: b\n")
    with pytest.raises(ConfigError, match=r"dup.yaml line 6 column 1: not valid YAML: key 'run' appears twice \(first on line 4\)"):
        load_config(GRPOConfig, path)


@pytest.mark.parametrize("raw,value", [("Be safe #1", "Be safe #1"), ("'Rule #2'", "Rule #2"), ("#tag", "#tag"),
                                       ("8", 8), ("0.5", 0.5), ("[a, b#c]", ["a", "b#c"]), ("null", None), ("", "")])
def test_override_values_are_yaml_and_hash_is_text(raw, value):
    assert parse_overrides([f"model.system_prompt={raw}"]) == {"model": {"system_prompt": value}}


def test_cross_field_errors_name_where_the_keys_were_set(tmp_path):
    in_file = write(tmp_path, {**BASE, "algorithm": {"group_size": 3, "prompts_per_step": 1, "mini_batches_per_step": 2}})
    with pytest.raises(ConfigError, match=r"does not divide the 3 sequences .* \(in [^ ]*run.yaml\)$"):
        load_config(GRPOConfig, in_file, ["learner.micro_batch_size=1"])
    with pytest.raises(ConfigError, match=r"clip_high=0.1 must be >= clip_low=0.2 .*\(in overrides\)$"):
        load_config(GRPOConfig, write(tmp_path, BASE), ["algorithm.clip_high=0.1"])


def test_run_names_stay_inside_the_output_dir(tmp_path):
    for name in ("../x", "a/../../b", "/abs", ""):
        with pytest.raises(ConfigError, match="must be a relative name inside its parent"):
            load_config(GRPOConfig, write(tmp_path, BASE), [f"run.name={name}"])
    assert load_config(GRPOConfig, write(tmp_path, BASE), ["run.name=sweep/seed1"]).run.name == "sweep/seed1"


@pytest.mark.parametrize("rewards, needle", [
    ([{"name": "safety", "args": {"harmful_refusl": 5}}], "rewards[0]: reward 'safety' takes no argument 'harmful_refusl'"),
    ([{"name": "safty"}], "rewards[0]: no reward named 'safty'"),
    ([{"name": "overlong_penalty", "args": {"max_length": 8}}], "needs argument(s) cache_length"),
    ([{"name": "safety", "args": {"guard": {"model": "m", "fromat": "wildguard"}}}], "'fromat'"),
    ([{"name": "safety", "args": {"guard": {"model": "m", "format": "llamaguard"}}}], "guard: format 'llamaguard': choose from"),
])
def test_reward_mistakes_fail_before_anything_starts(tmp_path, rewards, needle):
    """A misspelt reward argument is not swallowed by the reward's **kwargs: the command's
    preflight (right after the config loads, before Ray) fails naming the reward, the argument
    and the file; reward validators check values (safety's guard settings)."""
    from rl_safety.preflight import check_rewards

    path = write(tmp_path, {**BASE, "rewards": rewards})
    cfg = load_config(GRPOConfig, path)
    with pytest.raises(ConfigError) as err:
        check_rewards(cfg.rewards, cfg.reward_modules, path)
    assert needle in str(err.value) and path in str(err.value)
    with pytest.raises(ConfigError, match="rewards.0.weight: Input should be a finite number"):
        load_config(GRPOConfig, write(tmp_path, {**BASE, "rewards": [{"name": "safety", "weight": float("nan")}]}))


def test_kl_options_that_have_a_meaning_load(tmp_path):
    """k1 is refused only where it cannot regularise (in the loss); k3+ only where '+' is moot."""
    for overrides in (["algorithm.kl_coef=0.1", "algorithm.kl_placement=reward", "algorithm.kl_estimator=k1"],
                      ["algorithm.kl_coef=0.1", "algorithm.kl_estimator=k3+"],
                      ["algorithm.kl_estimator=k1"],  # no KL at all (kl_coef 0): nothing to refuse
                      ["algorithm.policy_loss=gspo", "algorithm.loss_aggregation=seq_mean_token_mean",
                       "algorithm.dual_clip=null", "rollout.top_p=1.0", "rollout.top_k=0"]):
        load_config(GRPOConfig, write(tmp_path, BASE), overrides)


def test_the_packed_token_budget_must_hold_the_longest_sequence(tmp_path):
    path = write(tmp_path, {**BASE, "data": {**BASE["data"], "max_prompt_tokens": 100},
                            "rollout": {**BASE.get("rollout", {}), "max_new_tokens": 28}})
    with pytest.raises(ConfigError, match=r"learner.max_tokens_per_micro_batch=127 is below the longest possible "
                                          r"sequence, data.max_prompt_tokens \+ rollout.max_new_tokens = 128"):
        load_config(GRPOConfig, path, ["learner.max_tokens_per_micro_batch=127"])
    assert load_config(GRPOConfig, path, ["learner.max_tokens_per_micro_batch=128"]).learner.max_tokens_per_micro_batch == 128
    assert load_config(GRPOConfig, path).learner.max_tokens_per_micro_batch is None  # default: the padded path


def test_the_packing_layout_needs_a_token_budget_and_is_one_of_three(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(GRPOConfig, path).learner.packing_layout == "auto"  # by the model's attention
    budget = "learner.max_tokens_per_micro_batch=100000"  # above any default sequence
    for layout in ("concatenated", "length_buckets"):
        cfg = load_config(GRPOConfig, path, [budget, f"learner.packing_layout={layout}"])
        assert cfg.learner.packing_layout == layout
    with pytest.raises(ConfigError, match=r"learner.packing_layout=length_buckets lays out token-budget "
                                          r"micro-batches, but learner.max_tokens_per_micro_batch is null"):
        load_config(GRPOConfig, path, ["learner.packing_layout=length_buckets"])
    with pytest.raises(ConfigError, match=r"learner.packing_layout"):
        load_config(GRPOConfig, path, [budget, "learner.packing_layout=packed"])
