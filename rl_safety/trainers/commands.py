"""`rl-safety grpo` and `rl-safety sft`: `--config FILE [key=value ...] [--resume
[--allow-config-change KEY ...]]`, the batch plan printed, the run, where its final policy is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _train(argv: list[str], schema: type, prog: str, description: str, run: Callable[..., Path], done: str) -> int:
    from rl_safety.config.loader import config_from_command_line
    from rl_safety.preflight import add_resume_arguments

    cfg, args = config_from_command_line(
        schema, argv, prog, description, config_help=f"YAML config (see configs/{prog.split()[-1]}_*.yaml)",
        add_arguments=add_resume_arguments)
    print(f"batch plan: {cfg.batch_plan()}")
    final = run(cfg, source=args.config, resume=args.resume, allow_config_change=args.allow_config_change)
    print(done.format(final=final))
    return 0


def grpo(argv: list[str]) -> int:
    from rl_safety.config import GRPOConfig
    from rl_safety.trainers.grpo import run_grpo

    return _train(argv, GRPOConfig, "rl-safety grpo", "GRPO with verifiable rewards", run_grpo,
                  "done: final policy in {final}")


def sft(argv: list[str]) -> int:
    from rl_safety.config import SFTConfig
    from rl_safety.trainers.sft import run_sft

    return _train(argv, SFTConfig, "rl-safety sft", "SFT on safety traces (DeepSpeed, LoRA)", run_sft,
                  "done: checkpoint in {final} (use it as model.path of rl-safety grpo)")
