import pytest

from rl_safety.toy.model import BuildConfig, build_base_model

# A few steps of the real build on a smaller model: exercises every part in seconds.
SMALL = BuildConfig(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128, steps=20,
                    batch_size=8, vocab_size=512)


@pytest.fixture(scope="session")
def small_config() -> BuildConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RL_SAFETY_CACHE", str(cache))
    yield build_base_model(SMALL, log=lambda msg: None)
    mp.undo()
