"""The shipped SFT / DGR / ThinkSafe configs validate, and their errors name the key."""

from __future__ import annotations

import pytest

from rl_safety.config import ConfigError, SFTConfig, load_config
from rl_safety.config.refine import DGRConfig, ThinkSafeConfig
from tests.conftest import REPO

SCHEMAS = {"sft": SFTConfig, "dgr": DGRConfig, "thinksafe": ThinkSafeConfig}
def _schema(path):
    return SCHEMAS.get(path.stem.split("_")[0])


TOY = REPO / "rl_safety" / "toy" / "configs"
CONFIGS = sorted(p for p in [*(REPO / "configs").glob("*.yaml"), *TOY.glob("*.yaml")] if _schema(p))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_shipped_configs_validate(path):
    load_config(_schema(path), path)


def test_errors_name_the_key():
    assert load_config(SFTConfig, None, ["model.path=m", "data.train=d", "learner.zero_stage=3"]).learner.zero_stage == 3
    with pytest.raises(ConfigError, match=r"generation.n"):
        load_config(ThinkSafeConfig, None, ["model.path=m", "data.train=d", "output.path=o", "generation.n=0"])
    with pytest.raises(ConfigError, match=r"dgr.refinement_prompt: only \{prompt\}, \{reasoning\} and \{answer\}"):
        load_config(DGRConfig, None, ["model.path=m", "data.train=d", "output.path=o", "dgr.refinement_prompt=a {trace}"])
    with pytest.raises(ConfigError, match=r"dgr.refinment_prompt: unknown key"):
        load_config(DGRConfig, None, ["model.path=m", "data.train=d", "output.path=o", "dgr.refinment_prompt=x"])


def test_toy_dgr_prompt_is_the_toy_worlds_rewrite_request():
    world = pytest.importorskip("rl_safety.toy.world")
    cfg = load_config(DGRConfig, TOY / "dgr.yaml")
    assert cfg.dgr.refinement_prompt.format(prompt="p", reasoning="r", answer="a") == world.rewrite_prompt("p", "r", "a")
    assert ThinkSafeConfig.model_fields["thinksafe"].default.steering_text == world.STEERING_PREFIX
