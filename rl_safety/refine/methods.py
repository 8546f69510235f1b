"""Safety-data methods: ways of making SFT data that sounds like the model itself (DGR, ThinkSafe,
or yours). A method registered here is a command (`rl-safety NAME --config FILE`) and an arm of
the toy table (`NAME_sft`), with no other file to touch:

    name               the command, the config section of its own, the toy table's arm prefix
    summary            one line for `--help`
    config             its schema: a `GenerationConfig` subclass (model, data, generation, cluster,
                       output) with the method's own section
    requests           cfg -> one generation request (a user turn) per source row
    content_filter     cfg -> what decides which samples are kept (rl_safety.refine.generate:
                       RefusalRegexFilter by default, GuardFilter)
    fallback_original  cfg -> whether a row with no accepted sample keeps its own trace
    toy_config         the method's config for the toy world, inside the package (None: no toy arm)
    toy_source         the toy world's file its source rows come from

The target model samples `generation.n` responses per request on vLLM actors; a sample is kept
when it is complete and well formed (`rl_safety.refine.generate.judge`) and passes the method's
content filter. A user's method lives in one file, loaded with `rl-safety --plugin FILE NAME ...`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_safety.config.refine import GenerationConfig
from rl_safety.refine.generate import ContentFilter, RefusalRegexFilter, Request, add_overwrite_argument, run_generation


@dataclass(frozen=True)
class DataMethod:
    name: str
    summary: str
    config: type[GenerationConfig]
    requests: Callable[[Any], list[Request]]
    content_filter: Callable[[Any], ContentFilter] = lambda cfg: RefusalRegexFilter()
    fallback_original: Callable[[Any], bool] = lambda cfg: False
    toy_config: Path | None = None
    toy_source: str | None = None

    def run(self, cfg: GenerationConfig) -> tuple[Path, dict[str, Any]]:
        """Generate, filter and write the dataset (`cfg.output.path`, with stats, config and cost)."""
        return run_generation(cfg, self.requests(cfg), content_filter=self.content_filter(cfg), method=self.name,
                              fallback_original=self.fallback_original(cfg))

    def main(self, argv: list[str]) -> int:
        """`rl-safety NAME --config FILE [--overwrite] [key=value ...]`."""
        from rl_safety.config.loader import config_from_command_line
        from rl_safety.preflight import check_generation

        cfg, args = config_from_command_line(self.config, argv, f"rl-safety {self.name}", self.summary,
                                             config_help=f"YAML config (see configs/{self.name}_*.yaml)",
                                             add_arguments=add_overwrite_argument)
        check_generation(cfg, args.overwrite)
        path, stats = self.run(cfg)
        print(f"done: {stats.get('kept', 0)} rows in {path} (filter counts in {path}.stats.json)")
        return 0


_METHODS: dict[str, DataMethod] = {}


def register_data_method(method: DataMethod) -> DataMethod:
    """Make `method` a command and a toy-table arm. Registering a second, different method
    under a taken name is an error (re-registering the same one, as a re-import does, is not)."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"a data method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def data_methods() -> dict[str, DataMethod]:
    """Every registered method by name: the built-in ones first, then those loaded since."""
    from rl_safety.refine.dgr import DGR
    from rl_safety.refine.thinksafe import THINKSAFE

    return {DGR.name: DGR, THINKSAFE.name: THINKSAFE, **_METHODS}


def source_examples(cfg: GenerationConfig, prompts_only: bool = False) -> list[Any]:
    """The rows of `cfg.data` in our schema (rl_safety.data.safety), bad rows logged and skipped
    (or fatal with `data.on_bad_row=error`)."""
    from rl_safety.data.safety import load_safety_dataset

    d = cfg.data
    examples, _ = load_safety_dataset(d.dataset, d.train, split=d.split, on_bad_row=d.on_bad_row, columns=d.columns,
                                      limit=d.limit, prompts_only=prompts_only)
    return examples
