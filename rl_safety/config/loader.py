"""Load a YAML config into a pydantic schema, apply ``key=value`` overrides, and report every
problem with the key and the file it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not silently fall
    back to a default), and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["algorithm.group_size=8", "run.name=x"]`` -> nested dict; values parse as YAML
    scalars/lists (``8`` is an int, ``[a,b]`` a list, ``null`` None)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key under the scalar {part!r}")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(schema: type[Schema], path: str | Path | None, overrides: list[str] = ()) -> Schema:
    """Read `path` (YAML), apply `overrides`, validate against `schema`.

    Raises ConfigError naming the file (or "overrides") and each offending key."""
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    override_data = parse_overrides(list(overrides))
    try:
        return schema.model_validate(_merge(data, override_data))
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            key = ".".join(str(p) for p in problem["loc"]) or "<top level>"
            origin = "overrides" if _has_key(override_data, problem["loc"]) else source
            lines.append(f"  {key}: {problem['msg']} (in {origin})")
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(lines)) from None


def _has_key(data: dict[str, Any], loc: tuple) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_from_command_line(schema: type[Schema], argv: list[str], prog: str, description: str,
                             config_help: str = "YAML config (see configs/)", add_arguments=None):
    """`--config FILE [key=value ...]` (plus whatever `add_arguments(parser)` adds) -> (config,
    parsed args). A config that does not validate prints its error and exits with status 2,
    before anything is started."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=config_help)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.name=x")
    args = parser.parse_args(argv)
    try:
        return load_config(schema, args.config, args.overrides), args
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) as YAML, to reproduce the run."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def config_differences(config: BaseModel, path: str | Path) -> list[str]:
    """Dotted keys whose values differ between `config` and a config `dump_config` wrote to `path`
    (a run made earlier): empty when the earlier run was made with the same config."""
    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    now, then = flat(config.model_dump(mode="json")), flat(yaml.safe_load(Path(path).read_text()))
    return sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
