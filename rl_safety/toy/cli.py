"""`toy build` and `toy eval`: the base toy model and its held-out metrics.

    toy build [--force] [--no-eval] [--ship] [key=value ...]   e.g. steps=300 world.harmful_refusal_rate=0.2
    toy eval --model PATH [--seed N] [--n-math N] [--n-sampled N] [--out FILE.json]
    toy run [--output-dir DIR] [key=value ...]        the GRPO arm end to end (GRPO config overrides)
    toy table [--output-dir DIR] [--arms A,B] [--seeds N] [--shift NATS] [--sweep NAME=V1,V2,...]
              [CONFIG.key=value ...]                  all four arms, evaluated and compared, N seeds
                                                      (CONFIG: sft, an SFT arm, dgr, thinksafe, grpo;
                                                      NAME: shift or CONFIG.key)
    toy shift [--target NATS] [--output-dir DIR]      the foreign refusal set at NATS per token from
                                                      the base model (the curve and the level chosen)
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from rl_safety.toy.table import DEFAULT_SHIFT, all_arms


def _overrides(pairs: list[str]) -> dict[str, str]:
    from rl_safety.config.loader import ConfigError

    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"expected key=value overrides, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def refusal_nll(model: Path, world) -> dict[str, float]:
    """The distribution shift DGR is about, on the base model's terms: NLL of the own-style and of
    the foreign refusals of the held-out harmful requests."""
    from rl_safety.toy.evaluate import response_nll
    from rl_safety.toy.world import foreign_refusal_response, refuse_response, requests

    harmful = requests("eval", "harmful", world.eval_fraction)
    return {
        "own_refusal": response_nll(str(model), [(r.prompt, refuse_response(r)) for r in harmful]),
        "foreign_refusal": response_nll(str(model), [(r.prompt, foreign_refusal_response()) for r in harmful]),
    }


def _eval_and_print(model: Path, world, seed: int, n_math: int, n_sampled: int, out: Path | None,
                    n_validation: int = 0) -> dict[str, float]:
    from rl_safety.toy.evaluate import evaluate_model, format_table

    metrics, completions = evaluate_model(str(model), world, seed=seed, n_math=n_math, n_sampled=n_sampled,
                                          n_validation=n_validation)
    print(format_table({model.name: metrics}))
    nll = refusal_nll(model, world)
    print(f"NLL per response token on held-out harmful requests: own-style refusal {nll['own_refusal']:.3f}, "
          f"foreign refusal {nll['foreign_refusal']:.3f}")
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"model": str(model), "metrics": metrics, "nll": nll,
                                   "samples": {g: c[:5] for g, c in completions.items()}}, indent=2))
        tmp.replace(out)
        print(f"metrics written to {out}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    from rl_safety.errors import ArgumentParser

    parser = ArgumentParser(prog="rl-safety toy", description="The toy safety world on CPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the base toy model, then evaluate it")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    build.add_argument("--ship", action="store_true",
                       help="copy the result into the package as the shipped base model (maintainers)")
    build.add_argument("overrides", nargs="*", help="BuildConfig fields as key=value (world.* for the world)")
    ev = sub.add_parser("eval", help="held-out toy-world metrics of a model")
    ev.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    ev.add_argument("--seed", type=int, default=0, help="seed of the toy world the model was built on")
    ev.add_argument("--n-math", type=int, default=200, help="held-out arithmetic problems")
    ev.add_argument("--n-sampled", type=int, default=8, help="samples at temperature 1 per harmful request")
    ev.add_argument("--out", type=Path, help="write metrics and sample completions to this JSON file")
    run = sub.add_parser("run", help="GRPO on the base toy model, then held-out metrics of base vs GRPO")
    run.add_argument("--output-dir", type=Path, default=Path("runs/toy"), help="where the run goes")
    run.add_argument("overrides", nargs="*", help="rl_safety/toy/configs/grpo.yaml overrides, e.g. run.total_steps=10")
    table = sub.add_parser("table", help="vanilla SFT, DGR-SFT, ThinkSafe-SFT and GRPO on the base toy model: "
                                         "evaluation, safety-tax table and plots")
    table.add_argument("--output-dir", type=Path, default=Path("runs/toy_table"), help="where the runs go")
    table.add_argument("--arms", default=None, help=f"comma-separated subset of {','.join(all_arms())} (default: all)")
    table.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every arm's training and data generation "
                                                            "(default 3); the table gives mean and 95%% interval")
    table.add_argument("--shift", type=float, default=DEFAULT_SHIFT,
                       help=f"the foreign refusal set's NLL per token under the base model, in nats (default "
                            f"{DEFAULT_SHIFT:g}): vanilla SFT's data and DGR's source")
    table.add_argument("--sweep", default=None, metavar="NAME=V1,V2,...",
                       help="run the arms once per value: NAME is shift (e.g. shift=0.5,1,2,4,8) or a "
                            "CONFIG.key (e.g. sft.learner.learning_rate=1e-4,1e-3); writes OUT/sweep.md")
    table.add_argument("overrides", nargs="*",
                       help="CONFIG.key=value, CONFIG one of sft, dgr, thinksafe, grpo (rl_safety/toy/configs/"
                            "CONFIG.yaml) or an SFT arm (vanilla_sft, ...: that arm only, after sft's), e.g. "
                            "grpo.run.total_steps=10")
    shift = sub.add_parser("shift", help="write the foreign refusal set at a distance from the base model")
    shift.add_argument("--target", type=float, default=DEFAULT_SHIFT, help="nats per token (default %(default)g)")
    shift.add_argument("--output-dir", type=Path, default=Path("runs/toy_foreign"), help="where the set goes")
    args = parser.parse_args(argv)

    if args.command == "table":
        from rl_safety.toy.table import run_table

        _, failed = run_table(args.output_dir, args.overrides,
                              tuple(a for a in args.arms.split(",") if a) if args.arms else None, args.seeds,
                              args.shift, args.sweep)
        return 1 if failed else 0
    if args.command == "shift":
        from rl_safety.toy.model import BuildConfig, build_base_model
        from rl_safety.toy.shift import write_foreign_set

        made = write_foreign_set(build_base_model(BuildConfig(), log=lambda msg: print(msg, flush=True)),
                                 args.target, args.output_dir)
        curve = json.loads((args.output_dir / "foreign.json").read_text())["curve"]
        print("NLL per token by whole style level: " + ", ".join(f"{k}: {v:.2f}" for k, v in enumerate(curve)))
        print(f"wrote {made.path}: style level {made.level:.3f}, {made.nll:.3f} nats per token (asked {made.target:g})")
        return 0
    if args.command == "run":
        from rl_safety.toy.grpo_arm import run_grpo_arm

        run_grpo_arm(args.overrides, args.output_dir)
        return 0

    from rl_safety.toy.model import BuildConfig, build_base_model
    from rl_safety.toy.world import WorldConfig

    if args.command == "build":
        from rl_safety.config.loader import ConfigError

        try:
            config = BuildConfig.from_overrides(_overrides(args.overrides))
        except (KeyError, ValueError) as e:
            raise ConfigError(f"toy build: {e.args[0]}") from None
        path = build_base_model(config, force=args.force, log=lambda msg: print(msg, flush=True))
        info = json.loads((path / "build.json").read_text())
        print(f"base model: {path}  ({info['parameters'] / 1e6:.2f}M parameters, built in {info['build_seconds']}s)")
        for name, rel in info["data"].items():
            print(f"  {name}: {path / rel}")
        if not args.no_eval:
            cached = path / "eval.json"
            if cached.exists() and not args.force:
                from rl_safety.toy.evaluate import format_table

                print(format_table({path.name: json.loads(cached.read_text())["metrics"]}))
            else:
                # a build configuration is chosen on the validation split's arithmetic, not the eval split's
                _eval_and_print(path, config.world, config.seed, 200, 8, cached, n_validation=200)
        if args.ship:
            from rl_safety.toy.model import ship_base_model

            print(f"shipped: {ship_base_model(path)}")
        return 0

    from rl_safety.preflight import check_model_path

    check_model_path(str(args.model), "--model")
    world_file = args.model / "data" / "world.json"
    world = WorldConfig()
    if world_file.exists():  # a base model directory records the world it was built on
        recorded = json.loads(world_file.read_text())
        args.seed = recorded.pop("seed")
        world = WorldConfig(**{k: v for k, v in recorded.items() if k in asdict(world)})
    _eval_and_print(args.model, world, args.seed, args.n_math, args.n_sampled, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
