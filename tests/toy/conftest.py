import pytest

from rl_safety.toy.model import SHIPPED, BuildConfig, build_base_model, find_base_model

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


@pytest.fixture(scope="session")
def base_model():
    """The real base toy model of the default config: the user's cache, else the shipped one."""
    path = find_base_model(BuildConfig())
    assert path is not None, (f"no base toy model for the default config ({BuildConfig().key()}) in the cache "
                              f"or in {SHIPPED}: `rl-safety toy build --force --ship` rebuilds the shipped one")
    return path
