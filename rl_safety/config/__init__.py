"""Typed run configurations: YAML files plus ``key=value`` overrides, validated before anything starts."""

from rl_safety.config.loader import ConfigError, load_config, parse_overrides
from rl_safety.config.grpo import GRPOConfig

__all__ = ["ConfigError", "GRPOConfig", "load_config", "parse_overrides"]
