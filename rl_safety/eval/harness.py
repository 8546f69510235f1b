"""`rl-safety eval --model M --suite S`: generate with vLLM engine actors (on `cluster.address`, or
a local Ray), score with the registered scorers, write per-prompt and per-suite results with
confidence intervals, and the eval's cost.

    RUN/eval/SUITE/samples.jsonl   one line per prompt: its responses, tokens, and every score
    RUN/eval/SUITE/results.json    per benchmark: each metric with its 95% CI (see scorers.py)
    RUN/eval/SUITE/cost.json       the eval's cost ledger

RUN is the training run when M is its `final/` export (RUN/final), else `--output`.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rl_safety.config.engine import resolved_top_k
from rl_safety.config.loader import ConfigError, load_config
from rl_safety.data import chat
from rl_safety.data.prompts import build_prompts
from rl_safety.eval import scorers
from rl_safety.eval.suite import Benchmark, EvalPrompt, Suite, load_benchmark, resolve_data
from rl_safety.ledger import CostLedger
from rl_safety.orchestration.actor_group import sample_seed
from rl_safety.orchestration.engines import generate, generation_engines
from rl_safety.rollout.vllm_engine import checked_max_model_len

log = logging.getLogger("rl_safety.eval")

SUITES = Path(__file__).parent / "suites"  # shipped inside the package: `--suite default` works from a wheel
CI_NOTE = ("95% intervals: Wilson score interval when each prompt has one binary score (n=1); percentile "
           f"bootstrap over prompts ({scorers.BOOTSTRAP_RESAMPLES} resamples) when prompts have n>1 samples")


def find_suite(name_or_path: str) -> Path:
    """A suite file path, or the name of a shipped suite ("default" -> rl_safety/eval/suites/default.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = SUITES / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in SUITES.glob("*.yaml"))
    raise ConfigError(f"suite {name_or_path!r} is neither a file nor one of the shipped suites: {known}")


def default_run_dir(model: str) -> Path:
    """The training run a model came from (RUN/final -> RUN), else evals/ followed by the whole
    model path (relative to the working directory when under it, else without its root; a hub
    id as it is), so that ckpts/a/model and ckpts/b/model do not share a directory."""
    path = Path(model).expanduser()
    if path.name == "final" and (path.parent / "config.yaml").exists():
        return path.parent
    if not path.exists():
        return Path("evals", *[part for part in path.parts if part not in ("..", ".", path.anchor)])
    path = path.resolve()
    try:
        return Path("evals") / path.relative_to(Path.cwd().resolve())
    except ValueError:
        return Path("evals") / path.relative_to(path.anchor)


def run_eval(model: str, suite: Suite, suite_file: Path | None, run_dir: Path) -> dict[str, Any]:
    """Evaluate `model` on `suite`; returns results.json's content (also written under
    run_dir/eval/<suite.name>/)."""
    from transformers import AutoTokenizer

    from rl_safety.preflight import check_model_path

    out = Path(run_dir) / "eval" / suite.name
    # Every benchmark is loaded and checked before any actor starts: a bad row fails in seconds.
    loaded: dict[str, tuple[Benchmark, str, list[EvalPrompt]]] = {}
    for bench in suite.benchmarks:
        source = resolve_data(suite, suite_file, bench.data)
        loaded[bench.name] = (bench, source, load_benchmark(bench, source))
    check_model_path(model, "--model", suite.generation.trust_remote_code)
    g = suite.generation
    max_model_len = checked_max_model_len(
        model, g.max_model_len, g.max_prompt_tokens, max(b.sampling.max_new_tokens for b in suite.benchmarks),
        explicit_key="generation.max_model_len",
        budget_keys="generation.max_prompt_tokens + the largest sampling.max_new_tokens",
        trust_remote_code=g.trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    ledger = CostLedger(out, "eval", model_path=model)
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=g.trust_remote_code)
    family_top_k = chat.resolve_family(tokenizer, "auto").top_k
    results: dict[str, Any] = {
        "suite": suite.name, "suite_file": str(suite_file) if suite_file else None, "model": str(model),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "generation": g.model_dump(mode="json"), "cluster": suite.cluster.model_dump(mode="json"),
        **{judge: getattr(suite, judge).model_dump(mode="json") if getattr(suite, judge) else None
           for judge in ("guard", "refusal_judge", "moderation_judge", "strongreject_judge")},
        "confidence_intervals": CI_NOTE, "benchmarks": {},
    }
    # Generate everything first, then free the devices: the guard judge may need the same GPU.
    generated: dict[str, tuple[list[EvalPrompt], list[Any], list[Any], int]] = {}
    completed = False
    try:
        with generation_engines(model, g, suite.cluster, source=str(suite_file or suite.name), dtype=g.dtype,
                                seed=g.seed, max_model_len=max_model_len,
                                trust_remote_code=g.trust_remote_code) as (engines, use_gpu):
            ledger.set_devices("gpu" if use_gpu else "cpu", g.devices)
            for name, (bench, source, prompts) in loaded.items():
                log.info("eval %s: %d prompts x %d samples", name, len(prompts), bench.sampling.n)
                sampling = bench.sampling.model_copy(update={"top_k": resolved_top_k(bench.sampling, family_top_k)})
                generated[name] = _generate(bench, source, prompts, tokenizer, engines, sampling, g, ledger)
            ledger.record_memory(engines.by_rank)
        with (out / "samples.jsonl").open("w") as samples_file:
            for name, (bench, source, _) in loaded.items():
                with ledger.phase("scoring"):
                    results["benchmarks"][name] = _score(bench, source, *generated[name], suite, samples_file)
        completed = True
    finally:
        ledger.finish(complete=completed)  # the cost of a failed eval too
    results["cost"] = json.loads((out / "cost.json").read_text())
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def _generate(bench: Benchmark, source: str, prompts: list[EvalPrompt], tokenizer, engines, sampling, g,
              ledger: CostLedger) -> tuple[list[EvalPrompt], list[Any], list[Any], int]:
    """(prompts kept, their chat-formatted PromptExamples, completion groups, prompts dropped as too long)."""
    examples, dropped = build_prompts(
        [{"prompt": p.text} for p in prompts], tokenizer, source=source, prompt_key="prompt",
        chat_template=g.chat_template, system_prompt=g.system_prompt, max_prompt_tokens=g.max_prompt_tokens)
    if dropped:
        log.warning("%s: %d prompts longer than generation.max_prompt_tokens=%d were dropped",
                    bench.name, dropped, g.max_prompt_tokens)
    kept = [prompts[e.index] for e in examples]
    with ledger.phase("generation"):
        groups = generate(engines, [e.token_ids for e in examples], [sample_seed(g.seed, bench.name, p.row) for p in kept],
                          sampling.n, sampling, what=f"generating {bench.name} (vLLM)")
    ledger.add_tokens(generated=sum(len(c.token_ids) for group in groups for c in group),
                      prefilled=sum(len(e.token_ids) for e in examples))
    return kept, examples, groups, dropped


def _score(bench: Benchmark, source: str, kept: list[EvalPrompt], examples: list[Any], groups: list[Any],
           dropped: int, suite: Suite, samples_file) -> dict[str, Any]:
    per_prompt = scorers.score_samples(bench, kept, [[c.text for c in group] for group in groups], suite,
                                       [[c.truncated for c in group] for group in groups],
                                       [e.columns["prompt_opens_think"] for e in examples])
    for i, (p, e, group) in enumerate(zip(kept, examples, groups, strict=True)):
        samples_file.write(json.dumps({
            "benchmark": bench.name, "row": p.row, "id": p.id, "prompt": p.text, "answer": p.answer,
            "prompt_tokens": len(e.token_ids),
            "responses": [{"text": c.text, "tokens": len(c.token_ids), "truncated": c.truncated} for c in group],
            "scores": {name: values[i] for name, values in per_prompt.items()},
        }) + "\n")
    tokens = [len(c.token_ids) for group in groups for c in group]
    return {
        "kind": bench.kind, "in_sample": bench.in_sample, "data": source, "config": bench.config, "split": bench.split,
        "layout": bench.layout, "scorers": bench.scorers, "judges": scorers.judges_of(bench, suite), "sampling": bench.sampling.model_dump(),
        "prompts": len(kept), "dropped_long_prompts": dropped,
        "mean_response_tokens": sum(tokens) / len(tokens),
        "metrics": {scorers.metric_names()[name]: scorers.summarize(values) for name, values in per_prompt.items()},
    }


def main(argv: list[str]) -> int:
    from rl_safety.errors import ArgumentParser, UsageError

    parser = ArgumentParser(prog="rl-safety eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint (a run's final/ directory or a path)")
    parser.add_argument("--suite", required=True, help="suite YAML, or the name of a shipped suite "
                                                      f"({', '.join(sorted(p.stem for p in SUITES.glob('*.yaml')))})")
    parser.add_argument("--output", default=None,
                        help="run directory to write eval/SUITE/ into (default: RUN for RUN/final, else evals/NAME)")
    parser.add_argument("--limit", type=int, default=None, help="at most N prompts per benchmark (a quick run)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap every benchmark's sampling.max_new_tokens (a quick run, e.g. a plumbing check)")
    parser.add_argument("overrides", nargs="*", help="key=value suite overrides, e.g. generation.num_engines=2 "
                                                     "data_root=/data cluster.address=auto")
    args = parser.parse_intermixed_args(argv)
    for flag, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    suite_file = find_suite(args.suite)
    suite = load_config(Suite, suite_file, args.overrides)
    for bench in suite.benchmarks if args.limit else []:
        bench.limit = min(bench.limit or args.limit, args.limit)
    for bench in suite.benchmarks if args.max_new_tokens else []:
        bench.sampling.max_new_tokens = min(bench.sampling.max_new_tokens, args.max_new_tokens)
    results = run_eval(args.model, suite, suite_file, Path(args.output) if args.output else default_run_dir(args.model))
    for name, bench in results["benchmarks"].items():
        shown = ", ".join(f"{metric} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                          for metric, m in bench["metrics"].items() if m["value"] is not None)
        print(f"{name} ({bench['kind']}, {bench['prompts']} prompts): {shown}")
    return 0


if __name__ == "__main__":
    from rl_safety.cli import main as cli_main

    sys.exit(cli_main(["eval", *sys.argv[1:]]))
