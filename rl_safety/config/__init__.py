"""Typed run configurations: YAML files plus ``key=value`` overrides, validated before anything starts."""

from rl_safety.config.loader import ConfigError, load_config, parse_overrides
from rl_safety.config.grpo import GRPOConfig
from rl_safety.config.sft import SFTConfig

__all__ = ["ConfigError", "GRPOConfig", "SFTConfig", "load_config", "parse_overrides"]
