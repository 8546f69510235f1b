"""Load a YAML config into a pydantic schema, apply ``key=value`` overrides, and report every
problem with the key and the file it came from.

Bounds idiom, for every section (`Section` below): numbers are *strict* and *finite* -- a YAML
`true` is not 1, `.inf` / `.nan` are refused everywhere -- and each numeric field states its range
where it is declared: `Field(default, ge=..., gt=..., le=..., lt=..., description=...)`. A count is
`ge=1`, a size or budget `gt=0`, a share of something `gt=0, le=1`, a seed `ge=0`. A rule that
involves two fields goes in a `model_validator` that raises `Conflict(message, *keys)` naming the
dotted keys it read, so the error points at the file or the overrides, whichever set them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from rl_safety.errors import ArgumentParser, UserError

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message names the file and the key."""


class Conflict(ValueError):
    """A cross-field rule broken; `keys` are the dotted config keys involved (e.g.
    "algorithm.group_size"), so the error can say whether the file or the overrides set them."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not silently fall
    back to a default), numbers are strict and finite, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    # Keys that were renamed or moved: old dotted key ("*" matches any list index) -> where the
    # setting is now. A config that still uses one fails naming both (top-level schemas only).
    renamed: ClassVar[dict[str, str]] = {}


def _inside_parent(name: str) -> str:
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts or name.startswith("~"):
        raise ValueError(f"{name!r} must be a relative name inside its parent directory (no '..', not absolute)")
    return name


# A directory name under a parent the config also gives (run.name under run.output_dir): it
# cannot point outside that parent.
NameInParent = Annotated[str, AfterValidator(_inside_parent)]


# ------------------------------------------------------------------------------------ YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: YAML would
    silently keep the second (a whole section written twice would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string, and a config's
# `learning_rate: 1e-5` would then be refused by the strict float fields.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error or a repeated key is a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists() else f"config {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}{_yaml_where(err)}: not valid YAML: {_yaml_problem(err)}") from None


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    return " ".join(str(getattr(err, "problem", None) or err).split())


_HASH = "\ue000"  # a private-use character stands in for '#' while an override value is parsed


def parse_override_value(raw: str) -> Any:
    """An override's value, read as YAML: `8` is an int, `0.5` a float, `[a, b]` a list, `null`
    None, `'...'` / `"..."` a string. On the command line `#` never starts a comment: it is part
    of the value (`model.system_prompt=Be safe #1` keeps its `#1`)."""
    if not raw:
        return ""
    try:
        value = yaml.load(raw.replace("#", _HASH), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"the value is not valid YAML: {_yaml_problem(err)}") from None
    return _restore_hash(value)


def _restore_hash(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_HASH, "#")
    if isinstance(value, list):
        return [_restore_hash(v) for v in value]
    if isinstance(value, dict):
        return {_restore_hash(k): _restore_hash(v) for k, v in value.items()}
    return value


_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


SectionT = TypeVar("SectionT", bound=Section)


def with_defaults(name: str, bases: type[SectionT] | tuple[type[Section], ...], **defaults: Any) -> type[SectionT]:
    """A section class made of `bases` with other defaults for some fields: the same names,
    meanings and bounds (declared once, in the base), a command's own defaults."""
    bases = bases if isinstance(bases, tuple) else (bases,)
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        info = next(b.model_fields[key] for b in bases if key in b.model_fields)
        fields[key] = (info.annotation, FieldInfo.merge_field_infos(info, default=value))
    return create_model(name, __base__=bases, __module__=bases[0].__module__, **fields)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["algorithm.group_size=8", "run.name=x"]`` -> nested dict; values as `parse_override_value`."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"override {item!r} is not of the form key=value (key: section.field, e.g. run.name=x)")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key under the value {part!r}")
        if leaf in node:
            raise ConfigError(f"override {item!r}: {key} is set twice on the command line")
        try:
            node[leaf] = parse_override_value(raw)
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {err}") from None
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

    Raises ConfigError naming the file (or "overrides") and each offending key: the first
    problem on the first line, any others on the lines after it."""
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        data = read_yaml(path)
        if data is None:
            raise ConfigError(f"{path} is empty: a config needs at least its required sections")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}")
    override_data = parse_overrides(list(overrides))
    moved = [f"{key}: no longer a key; now {where} (in {'overrides' if _gives(override_data, key.split('.')) else source})"
             for old, where in schema.renamed.items()
             for key in _paths(_merge(data, override_data), old.split("."))]
    if moved:
        more = f" (and {len(moved) - 1} more such key(s), below)" if len(moved) > 1 else ""
        raise ConfigError(moved[0] + more + "".join(f"\n  {m}" for m in moved[1:]))
    try:
        return schema.model_validate(_merge(data, override_data))
    except ValidationError as err:
        problems = [_describe(problem, data, override_data, source) for problem in err.errors()]
        more = f" (and {len(problems) - 1} more problem(s), below)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more + "".join(f"\n  {p}" for p in problems[1:])) from None


def _describe(problem: dict[str, Any], data: dict[str, Any], overrides: dict[str, Any], source: str) -> str:
    """One validation problem as `key: what (in FILE | overrides)`."""
    message = problem["msg"].removeprefix("Value error, ")
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, Conflict):  # a cross-field rule: the keys it names tell where they came from
        locs = [tuple(k.split(".")) for k in cause.keys]
        set_by = {"overrides" if _gives(overrides, loc) else source for loc in locs
                  if _gives(overrides, loc) or _gives(data, loc)}  # a default is set by neither
        origins = [where for where in (source, "overrides") if where in set_by] or [source]
        return f"{message} (in {' and '.join(origins)})"
    loc = problem["loc"]
    origin = "overrides" if loc and _gives(overrides, loc) else source
    if not loc:
        return f"{message} (in {origin})"
    key = ".".join(str(p) for p in loc)
    if problem["type"] == "missing":
        message = "required, but not set"
    elif problem["type"] == "extra_forbidden":
        message = "unknown key (a typo?)"
    return f"{key}: {message} (in {origin})"


def _paths(node: Any, parts: list[str], prefix: str = "") -> list[str]:
    """The dotted paths in `node` that match `parts` ("*": any list index or key)."""
    if not parts:
        return [prefix.rstrip(".")]
    head, rest = parts[0], parts[1:]
    if isinstance(node, list) and head == "*":
        return [p for i, item in enumerate(node) for p in _paths(item, rest, f"{prefix}{i}.")]
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [head] if head in node else []
        return [p for key in keys for p in _paths(node[key], rest, f"{prefix}{key}.")]
    return []


def _gives(data: dict[str, Any], loc: tuple) -> bool:
    """Whether `data` sets the value at `loc` (a path of keys), itself or as part of a list or
    value it sets higher up (`learner.adam_betas=[0.9]` sets learner.adam_betas.1 too)."""
    node: Any = data
    for part in loc:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def config_from_command_line(schema: type[Schema], argv: list[str], prog: str, description: str,
                             config_help: str = "YAML config (see configs/)", add_arguments=None):
    """`--config FILE [key=value ...]` (plus whatever `add_arguments(parser)` adds) -> (config,
    parsed args). A config that does not validate raises ConfigError before anything starts."""
    parser = ArgumentParser(prog=prog, description=description,
                            epilog="Override values are YAML (8, 0.5, [a, b], null, 'text'); '#' is kept as text.")
    parser.add_argument("--config", required=True, help=config_help)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.name=x")
    args = parser.parse_intermixed_args(argv)  # overrides before and after flags (the launch scripts add some)
    return load_config(schema, args.config, args.overrides), args


def dump_config(config: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config (defaults included) as YAML, to reproduce the run."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def config_differences(config: BaseModel, path: str | Path) -> list[str]:
    """Dotted keys whose values differ between `config` and a config `dump_config` wrote to `path`
    (a run made earlier): empty when the earlier run was made with the same config."""
    now, then = _flat(config.model_dump(mode="json")), _flat(read_yaml(path))
    return sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))


def config_values(config: BaseModel, path: str | Path, keys: list[str]) -> dict[str, tuple[Any, Any]]:
    """{key: (value in `config`, value recorded at `path`)} for dotted `keys`."""
    now, then = _flat(config.model_dump(mode="json")), _flat(read_yaml(path))
    return {k: (now.get(k), then.get(k)) for k in keys}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}
