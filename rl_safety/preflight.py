"""Checks before cost: what can be checked without a model or a cluster is checked at the top
of each command, before Ray starts, so that a mistake costs seconds and not a model load.

    check_grpo / check_sft    model path, reward modules / names / arguments, the data file,
                              the run directory: free for a new run; for `--resume` a readable
                              metrics.jsonl, an intact checkpoint and the recorded config
    check_generation          model path, and an output dataset that is not silently replaced
    check_model_path          a local checkpoint directory with config and tokenizer, or a hub id

Every failure is a `UserError` naming what and where (`rl_safety.errors`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rl_safety.config.loader import ConfigError, config_values, dump_config
from rl_safety.errors import UsageError
from rl_safety.runs import RunDirectory, RunError

log = logging.getLogger(__name__)

# Keys that may change on --resume without --allow-config-change: they decide where the run
# directory is (a run moved or copied elsewhere) and where and how the run is placed and watched,
# not what it computes.
RESUME_FREE_KEYS = ("run.output_dir", "run.name", "cluster.address", "cluster.num_cpus", "run.progress_bar",
                    "run.max_restarts", "run.tensorboard", "run.wandb_project")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def add_resume_arguments(parser) -> None:
    """`--resume` and `--allow-config-change KEY...` for a training command's parser."""
    parser.add_argument("--resume", action="store_true", help="continue from the run's last intact checkpoint")
    parser.add_argument("--allow-config-change", nargs="+", default=[], metavar="KEY",
                        help="with --resume: config keys (or whole sections, e.g. run) allowed to differ from the "
                             "config the run was made with")


def check_model_path(path: str, key: str, trust_remote_code: bool = False) -> None:
    """`path` is a Hugging Face checkpoint directory (config.json and tokenizer files), or a hub id
    whose config loads."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"{key}={path} is a file; it must be a Hugging Face checkpoint directory")
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}={path} has no config.json: not a Hugging Face checkpoint directory")
        if not any((local / name).is_file() for name in _TOKENIZER_FILES):
            raise ConfigError(f"{key}={path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    elif path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ConfigError(f"{key}={path} does not exist (neither a local directory nor a hub id like org/name)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # a hub id that does not resolve, a config.json that does not parse
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(f"{key}={path}: its model config cannot be loaded ({err.__class__.__name__}: {detail})") \
            from None


def check_rewards(reward_sections: list[Any], reward_modules: list[str], source: str) -> None:
    """Reward files import, reward names resolve and their arguments are ones they take."""
    import rewards

    for i, path in enumerate(reward_modules):
        try:
            rewards.load_module(path)
        except rewards.RewardSetupError as err:
            raise ConfigError(f"reward_modules[{i}]: {err} (in {source})") from None
    for i, section in enumerate(reward_sections):
        try:
            rewards.check_args(section.name, section.args)
        except rewards.RewardSetupError as err:
            raise ConfigError(f"rewards[{i}]: {err} (in {source})") from None


def check_prompt_file(source: str, prompt_key: str) -> None:
    """A local prompt file reads, and every row has text under `prompt_key` (hub datasets are
    checked when they are loaded, still before Ray starts)."""
    from rl_safety.data.files import is_local_file
    from rl_safety.data.prompts import DatasetError, load_rows

    if not is_local_file(source):
        return
    for index, row in enumerate(load_rows(source)):
        text = row.get(prompt_key)
        if not isinstance(text, str) or not text.strip():
            what = ("has no column" if prompt_key not in row else "has an empty" if isinstance(text, str)
                    else f"has {type(text).__name__}, not text, in")
            raise DatasetError(f"{source} row {index} {what} {prompt_key!r} (data.prompt_key); "
                               f"its columns: {sorted(row)}")


def check_run_directory(cfg, source: str, resume: bool, allow_config_change: list[str]) -> Path | None:
    """The run directory is free for a new run; for `--resume` it holds a readable metrics.jsonl,
    an intact checkpoint (returned) and a recorded config equal to `cfg` up to the keys in
    `allow_config_change` (and RESUME_FREE_KEYS)."""
    if allow_config_change and not resume:
        raise UsageError("--allow-config-change only applies with --resume")
    run = RunDirectory(Path(cfg.run.output_dir) / cfg.run.name)
    run.check_usable(resume)
    if not resume:
        return None
    recorded = run.root / "config.yaml"
    if not recorded.is_file():
        raise RunError(f"--resume: {recorded} is missing, so the run's config cannot be compared with {source}")
    _check_same_config(cfg, source, recorded, allow_config_change)
    run.read_metrics()
    found = run.latest_checkpoint()
    if found is None:
        why = ("; ".join(f"{p.name}: {problem}" for p, problem in run.damaged.items()) if run.damaged
               else "none was saved yet; run.save_every sets how often")
        raise RunError(f"--resume: no intact checkpoint under {run.checkpoints} ({why})")
    return found[0]


def _check_same_config(cfg, source: str, recorded: Path, allowed: list[str]) -> None:
    from rl_safety.config.loader import config_differences

    differences = [k for k in config_differences(cfg, recorded) if not _covered(k, RESUME_FREE_KEYS)]
    if not differences:
        return
    values = config_values(cfg, recorded, differences)
    shown = ", ".join(f"{k} ({values[k][1]!r} recorded, {values[k][0]!r} now)" for k in differences[:6])
    refused = [k for k in differences if not _covered(k, allowed)]
    if refused:
        raise RunError(f"--resume: {source} differs from the config the run was made with ({recorded}) in {shown}"
                       f"{' ...' if len(differences) > 6 else ''}; resume with the same config, or pass "
                       f"--allow-config-change {' '.join(refused)}")
    kept = recorded.with_name(f"config.before-resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    recorded.rename(kept)
    dump_config(cfg, recorded)
    log.warning("resuming with a changed config: %s (the earlier config is kept in %s)", shown, kept)


def _covered(key: str, patterns) -> bool:
    """`key` is one of `patterns` or lies in a section one of them names (`run` covers run.*)."""
    return any(key == p or key.startswith(p + ".") for p in patterns)


def check_grpo(cfg, source: str, resume: bool, allow_config_change: list[str]) -> None:
    """Everything `rl-safety grpo` can check before Ray starts."""
    check_model_path(cfg.model.path, "model.path", cfg.model.trust_remote_code)
    check_rewards(cfg.rewards, cfg.reward_modules, source)
    check_prompt_file(cfg.data.train, cfg.data.prompt_key)
    check_run_directory(cfg, source, resume, allow_config_change)


def check_sft(cfg, source: str, resume: bool, allow_config_change: list[str]) -> Path | None:
    """Everything `rl-safety sft` can check before loading data; returns the checkpoint to resume from."""
    check_model_path(cfg.model.path, "model.path", cfg.model.trust_remote_code)
    final = Path(cfg.run.output_dir) / cfg.run.name / "final"
    if final.exists():
        raise RunError(f"{final} exists: the run is finished; choose another run.name, or remove it")
    return check_run_directory(cfg, source, resume, allow_config_change)


def check_sft_rows(cfg, rows: int, dropped: int) -> None:
    """Some example fits in data.max_tokens (a partial last step is padded, so one row is enough)."""
    from rl_safety.data.files import DatasetError

    if rows == 0:
        raise DatasetError(f"{cfg.data.train}: no training rows: all {dropped} usable examples are longer than "
                           f"data.max_tokens={cfg.data.max_tokens}")


def check_generation(cfg, overwrite: bool) -> None:
    """Everything `rl-safety dgr` / `thinksafe` can check before loading data: the model, and an
    output dataset that exists only if `--overwrite` says to replace it."""
    check_model_path(cfg.model.path, "model.path", cfg.model.trust_remote_code)
    out = Path(cfg.output.path)
    if out.is_dir():
        raise ConfigError(f"output.path={out} is a directory; it must name the JSONL file to write")
    written = [p for p in (out, Path(f"{out}.stats.json"), Path(f"{out}.config.yaml")) if p.exists()]
    if written and not overwrite:
        raise RunError(f"output.path={out}: {written[0]} exists; pass --overwrite to replace the dataset "
                       "(its .stats.json, .config.yaml and .cost.json too), or choose another output.path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output.path={out}: {parent} is a file, not a directory")
            break
