"""The reward lab: score saved rollouts with several rewards and see how they behave before
spending a GPU on them, and probe rewards for the ways a policy could game them.

    rl-safety rewards score --rollouts FILE.jsonl --rewards NAME[,NAME...] [--reward-module PATH]
        [--arg NAME.KEY=VALUE ...] [--top K] [--plots DIR]
    rl-safety rewards probe [--rewards NAME[,NAME...] | --config GRPO.yaml] [--probes FILE] ...
        (see rewards/probes.py)
    rl-safety rewards refusal-accuracy   (the refusal detector against human labels:
        rl_safety/eval/detector.py)
    python -m rewards.lab score ...   (the same)

Each JSONL row needs `prompt` and `completion`; every other field is passed to the rewards as a
dataset column (`label`, `answer`, ...), except the trainer's own bookkeeping in
`rollouts/step_N.jsonl` (its rewards, advantage). Printed: per reward the mean, std, coverage (share
of samples it applies to) and share of None; the correlation of every pair of rewards and of each
with the response length; and the samples where the rewards disagree most. A reward hack shows
up here as a reward that correlates with length, or disagrees with the others on odd samples.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import rewards
from rewards import probes as probe_suite
from rewards.text import completion_text, responses

# Fields of the trainer's rollout files that are results, not dataset columns.
_NOT_COLUMNS = {"prompt", "completion", "rewards", "reward", "advantage"}


def read_rollouts(path: str | Path) -> tuple[list[str], list[Any], dict[str, list[Any]]]:
    """(prompts, completions, columns) of a JSONL file; a column missing in a row is None there.
    A file or row that cannot be used raises `rl_safety.data.files.DatasetError` naming its line."""
    from rl_safety.data.files import DatasetError, read_records

    rows = []
    for record in read_records(path):
        if record.error is not None:
            raise DatasetError(f"{path} {record.where}: {record.error}")
        row = record.value
        if not isinstance(row, dict) or "prompt" not in row or "completion" not in row:
            raise DatasetError(f"{path} {record.where}: a row needs 'prompt' and 'completion' fields")
        rows.append(row)
    names = sorted({k for row in rows for k in row} - _NOT_COLUMNS)
    columns = {name: [row.get(name) for row in rows] for name in names}
    return [row["prompt"] for row in rows], [row["completion"] for row in rows], columns


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def pearson(xs: list[float | None], ys: list[float | None]) -> float:
    """Correlation over the samples where both are present; NaN when either is constant there."""
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    if len(pairs) < 2:
        return math.nan
    (mx, sx), (my, sy) = _mean_std([x for x, _ in pairs]), _mean_std([y for _, y in pairs])
    if sx < 1e-12 or sy < 1e-12:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in pairs) / (len(pairs) * sx * sy)


def disagreements(raw: dict[str, list[float | None]], k: int) -> list[tuple[int, float]]:
    """The k samples (index, spread) where the rewards disagree most: each reward is z-scored over
    the batch, and a sample's spread is max - min of its present z-scores (needs two rewards)."""
    z = {}
    for name, values in raw.items():
        mean, std = _mean_std([v for v in values if v is not None])
        z[name] = [None if v is None or not std > 1e-12 else (v - mean) / std for v in values]
    spreads = []
    for i in range(len(next(iter(raw.values())))):
        present = [z[name][i] for name in raw if z[name][i] is not None]
        if len(present) >= 2:
            spreads.append((i, max(present) - min(present)))
    return sorted(spreads, key=lambda item: -item[1])[:k]


def _fmt(x: float) -> str:
    return "   nan" if math.isnan(x) else f"{x:6.3f}"


def _snippet(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def report(raw: dict[str, list[float | None]], prompts: list[str], completions: list[Any],
           lengths: list[int], top: int, prompt_opens_think: list | None = None) -> str:
    """The lab's plain-text report."""
    n, names = len(prompts), list(raw)
    width = max(12, *(len(name) for name in names))
    lines = [f"{n} samples; length = response characters", "",
             f"{'reward':<{width}}  {'mean':>6}  {'std':>6}  {'cover':>6}  {'none':>6}  {'r(len)':>6}"]
    for name, values in raw.items():
        present = [v for v in values if v is not None]
        mean, std = _mean_std(present)
        lines.append(f"{name:<{width}}  {_fmt(mean)}  {_fmt(std)}  {_fmt(len(present) / n)}  "
                     f"{_fmt(1 - len(present) / n)}  {_fmt(pearson(values, lengths))}")
    if len(names) >= 2:
        lines += ["", "correlation between rewards (samples where both apply)",
                  f"{'':<{width}}  " + "  ".join(f"{name[:8]:>8}" for name in names)]
        for a in names:
            lines.append(f"{a:<{width}}  " + "  ".join(f"{_fmt(pearson(raw[a], raw[b])):>8}" for b in names))
        lines += ["", f"top {top} disagreements (spread of z-scored rewards)"]
        split = responses(completions, prompt_opens_think)
        for i, spread in disagreements(raw, top):
            answer = split[i].answer
            shown = _snippet(answer) if answer is not None else f"(no answer: {split[i].state}) " + _snippet(split[i].reasoning)
            scores = ", ".join(f"{name}={'None' if raw[name][i] is None else f'{raw[name][i]:.3g}'}" for name in names)
            lines += [f"  #{i} spread {spread:.2f}: {scores}",
                      f"      prompt:     {_snippet(prompts[i])}",
                      f"      answer:     {shown}"]
    return "\n".join(lines)


def plot(raw: dict[str, list[float | None]], lengths: list[int], out_dir: Path) -> list[Path]:
    """PNGs: a histogram of each reward, each reward against response length, and the
    correlation matrix (with two rewards or more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names, paths = list(raw), []
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for col, name in enumerate(names):
        present = [(v, n) for v, n in zip(raw[name], lengths) if v is not None]
        axes[0][col].hist([v for v, _ in present], bins=20, color="tab:blue")
        axes[0][col].set(title=f"{name} (n={len(present)})", xlabel="reward", ylabel="samples")
        axes[1][col].scatter([n for _, n in present], [v for v, _ in present], s=10, alpha=0.6)
        axes[1][col].set(xlabel="response length (characters)", ylabel=name)
    fig.tight_layout()
    paths.append(out_dir / "rewards.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if len(names) >= 2:
        matrix = [[pearson(raw[a], raw[b]) for b in names] for a in names]
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 1.2 * len(names) + 2))
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                ax.text(c, r, "nan" if math.isnan(value) else f"{value:.2f}", ha="center", va="center")
        fig.colorbar(image, ax=ax, label="Pearson r")
        ax.set_title("reward correlation")
        fig.tight_layout()
        paths.append(out_dir / "correlation.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _reward_args(pairs: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """["safety.benign_refusal=-1", ...] -> {"safety": {"benign_refusal": -1}} (values as config
    overrides: YAML scalars, '#' kept as text)."""
    from rl_safety.config.loader import parse_override_value
    from rl_safety.errors import UsageError

    args: dict[str, dict[str, Any]] = {name: {} for name in names}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        name, dot, arg = key.partition(".")
        if not sep or not dot or not arg or name not in args:
            raise UsageError(f"--arg {pair!r}: expected NAME.KEY=VALUE with NAME one of {', '.join(names)}")
        args[name][arg] = parse_override_value(value)
    for name, given in args.items():
        rewards.check_args(name, given)
    return args


def _specs(names_arg: str, pairs: list[str], modules: list[str]) -> list[rewards.RewardSpec]:
    """Checked specs of `--rewards`, `--arg` and `--reward-module` (errors name the problem)."""
    for path in modules:
        rewards.load_module(path)
    names = [name.strip() for name in names_arg.split(",") if name.strip()]
    for name in names:
        rewards.get(name)
    reward_args = _reward_args(pairs, names)
    return [rewards.RewardSpec(name, args=reward_args[name]) for name in names]


def _score_command(argv: list[str]) -> int:
    from rl_safety.errors import ArgumentParser, UsageError

    parser = ArgumentParser(prog="rl-safety rewards score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", required=True, help="JSONL with prompt, completion and dataset columns")
    parser.add_argument("--rewards", required=True, help="comma-separated registered reward names")
    parser.add_argument("--reward-module", action="append", default=[], help="a .py file registering rewards (repeatable)")
    parser.add_argument("--arg", action="append", default=[], help="NAME.KEY=VALUE reward argument (repeatable)")
    parser.add_argument("--top", type=int, default=5, help="disagreements to show")
    parser.add_argument("--plots", help="directory for PNG plots")
    args = parser.parse_args(argv)
    if args.top < 0:
        raise UsageError(f"--top {args.top}: must be 0 or more")
    specs = _specs(args.rewards, args.arg, args.reward_module)
    if not specs:
        raise UsageError(f"--rewards {args.rewards!r} names no reward")
    prompts, completions, columns = read_rollouts(args.rollouts)
    raw = rewards.score(specs, prompts, completions, columns)
    lengths = [len(completion_text(c)) for c in completions]
    print(report(raw, prompts, completions, lengths, args.top, columns.get("prompt_opens_think")))
    if args.plots:
        for path in plot(raw, lengths, Path(args.plots)):
            print(f"wrote {path}")
    return 0


def _probe_command(argv: list[str]) -> int:
    from rl_safety.errors import ArgumentParser

    parser = ArgumentParser(prog="rl-safety rewards probe", description=probe_suite.__doc__.split("\n\n")[0])
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--rewards", default="", help="comma-separated registered reward names")
    chosen.add_argument("--config", help="a GRPO config: probe its `rewards` (with their args and reward_modules)")
    parser.add_argument("--probes", default=str(probe_suite.BUILT_IN), help="probe file (YAML or JSONL; default: built-in)")
    parser.add_argument("--reward-module", action="append", default=[], help="a .py file registering rewards (repeatable)")
    parser.add_argument("--arg", action="append", default=[], help="NAME.KEY=VALUE reward argument (repeatable)")
    args = parser.parse_args(argv)
    if args.config:
        from rl_safety.config import GRPOConfig
        from rl_safety.config.loader import load_config
        from rl_safety.orchestration.reward_pool import load_reward_specs

        cfg = load_config(GRPOConfig, args.config)
        specs = load_reward_specs(cfg.rewards, [*cfg.reward_modules, *args.reward_module])
    else:
        specs = _specs(args.rewards, args.arg, args.reward_module)
    probes = probe_suite.load_probes(args.probes)
    raw = probe_suite.run_probes(specs, probes)
    reference = probe_suite.run_probes([rewards.RewardSpec("safety")], probes)["safety"]
    print(probe_suite.report({**raw, "safety (default args)": reference}, probes))
    return 1 if probe_suite.failures(reference, probes) else 0


USAGE = ("rl-safety rewards {score,probe,refusal-accuracy} ...\n"
         "  score --rollouts FILE.jsonl --rewards NAME[,NAME...] [--reward-module PATH] [--arg NAME.KEY=VALUE] "
         "[--top K] [--plots DIR]\n"
         "  probe [--rewards NAME[,NAME...] | --config GRPO.yaml] [--probes FILE] [--reward-module PATH] "
         "[--arg NAME.KEY=VALUE]\n"
         "  refusal-accuracy [--xstest-dir DIR] [--heldout FILE]")


def main(argv: list[str]) -> int:
    """`rewards` subcommands; returns the process exit code. Errors are raised for the caller's
    error boundary (`rl_safety.cli`, or `__main__` below)."""
    from rl_safety.errors import UsageError

    commands = {"score": _score_command, "probe": _probe_command}
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {USAGE}")
        return 0
    if not argv or argv[0] not in commands:
        raise UsageError(f"{'unknown subcommand ' + repr(argv[0]) if argv else 'no subcommand given'} (usage: {USAGE})")
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    from rl_safety.cli import main as cli_main

    sys.exit(cli_main(["rewards", *sys.argv[1:]]))
