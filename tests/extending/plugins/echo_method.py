"""A safety-data method added from one file (the README's "Extending" example): the target model
answers each prompt after a fixed preamble of the config's choosing. Its config section is
`echo`; `rl-safety --plugin THIS_FILE echo --config FILE` runs it, and the toy table gets an arm
`echo_sft` (its toy config is echo_toy.yaml beside this file)."""

from pathlib import Path

from pydantic import Field

from rl_safety.config.loader import Section
from rl_safety.config.refine import GenerationConfig
from rl_safety.refine.generate import Request
from rl_safety.refine.methods import DataMethod, register_data_method, source_examples


class EchoSection(Section):
    preamble: str = Field("Think about safety first.", description="text put before every prompt")


class EchoConfig(GenerationConfig):
    echo: EchoSection = EchoSection()


def echo_requests(cfg: EchoConfig) -> list[Request]:
    return [Request(e, f"{cfg.echo.preamble}\n\n{e.prompt}", {"preamble": True}) for e in source_examples(cfg)]


register_data_method(DataMethod(
    name="echo", summary="answers after a fixed preamble", config=EchoConfig, requests=echo_requests,
    toy_config=Path(__file__).with_name("echo_toy.yaml"), toy_source="foreign_refusal_train.jsonl"))
