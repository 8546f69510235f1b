"""Evaluation suites: typed configs (`rl_safety/eval/suites/*.yaml`, or any file) and the benchmark
rows they point at.

A benchmark is a data file + a field mapping + scorers + sampling settings:

    - name: gsm8k
      kind: reasoning                # harmful | benign | reasoning
      data: gsm8k/test.jsonl         # relative to the suite's data_root (or absolute), or a hub name
      fields: {prompt: question, answer: answer}
      scorers: [gsm8k]               # names registered in rl_safety.eval.scorers.SCORERS
      sampling: {n: 4, temperature: 0.6, top_p: 0.95, max_new_tokens: 4096}

`kind` says what the benchmark measures: refusal of harmful prompts (safety; a judge gives the
harmful rate), compliance with benign ones (over-refusal), or answer correctness (pass@1
averaged over the `n` samples per prompt).

A hub dataset takes its `config` name (WildJailbreak's "eval", GPQA's "gpqa_diamond") and
`split`; a name that exists as a directory under data_root is read from there (a local copy of
the dataset's repository). `layout` turns a benchmark's own columns into a prompt (and answer)
where a field mapping is not enough (`LAYOUTS`): HarmBench's behaviours with their context
strings, GPQA's four options shuffled as OpenAI's simple-evals does. Judges (`guard`,
`refusal_judge`, `moderation_judge`, `strongreject_judge`) read the view `judge_view` says:
the full text (thought included) or the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rl_safety.config.cluster import RolloutClusterSection
from rl_safety.config.engine import EngineSection, RepeatedSampling
from rl_safety.config.judge import Guard, Judge, moved_judge_keys
from rl_safety.config.loader import NameInParent, Section, with_defaults
from rl_safety.data.prompts import DatasetError, load_rows


class Sampling(with_defaults("BenchmarkSampling", RepeatedSampling, temperature=0.6, top_p=0.95, max_new_tokens=512)):
    """Sampling per benchmark (pass@1 and rates average over its `n` samples per prompt). The
    defaults are the reasoning-model papers' (DeepSeek-R1's protocol, ThinkSafe's safety
    generation): temperature 0.6, top_p 0.95, because R1-style models loop under greedy decoding.
    Eval has no learner, so truncated sampling is exact here (GRPO's learner-side restriction on
    top_p / top_k does not apply)."""


class RubricJudge(Judge):
    """StrongREJECT's rubric judge (rewards.strongreject) used by the `strongreject` scorer: a chat
    model served by vLLM (the authors use gpt-4o-mini; locally an instruct checkpoint)."""

    model: str = Field(description="judge chat checkpoint: hub id or path (e.g. Qwen/Qwen2.5-72B-Instruct)")
    max_new_tokens: int = Field(1024, ge=16, description="room for the judge's reasoning before #scores")


class ModerationJudge(Section):
    """BeaverTails' moderation classifier (rewards.moderation.beaver_dam) used by the `moderation`
    scorer: Safety Tax's harmful score (flagged when a harm category's probability > threshold)."""

    model: str = Field("PKU-Alignment/beaver-dam-7b", description="multi-label moderation checkpoint")
    view: Literal["answer", "full"] = Field("answer", description="the authors judge the text after the answer marker")
    threshold: float = Field(0.5, gt=0, lt=1, description="flagged when max category probability exceeds it")
    max_length: int = Field(256, ge=16, description="tokens of question + answer read (right-truncated), as the authors")
    dtype: str = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU")


class Benchmark(Section):
    name: NameInParent = Field(description="also the benchmark's name in results.json")
    kind: Literal["harmful", "benign", "reasoning"]
    data: str = Field(min_length=1, description="JSON/JSONL/CSV/TSV/Parquet file (relative to data_root) or a hub dataset name")
    config: str | None = Field(None, description="the hub dataset's config name (e.g. WildJailbreak's 'eval')")
    split: str = "train"
    layout: Literal["rows", "harmbench", "gpqa"] = Field(
        "rows", description="rows: columns used as they are; harmbench: prompt from Behavior (+ ContextString); "
                            "gpqa: prompt and answer letter from the question and its four options, shuffled")
    shuffle_seed: int = Field(0, ge=0, description="layout gpqa: seed of the option shuffle (simple-evals: random.Random(0))")
    judge_view: Literal["answer", "full"] | None = Field(
        None, description="what the judges read here: the full text, thought included, or the final answer "
                          "(None: each judge section's own view)")
    fields: dict[str, str] = Field(description="our field -> the file's column: prompt (required), answer, id")
    where: dict[str, Any] = Field(default_factory=dict, description="keep rows whose columns equal these values")
    limit: int | None = Field(None, ge=1, description="first N rows (after `where`)")
    prompt_template: str | None = Field(None, description="'{prompt}' is replaced by the row's prompt")
    scorers: list[str] = Field(description="names registered in rl_safety.eval.scorers (or a suite's scorer_modules)")
    sampling: Sampling = Field(default_factory=Sampling)
    in_sample: bool = Field(False, description="prompts the compared runs train on (how well they fit their data): "
                                               "reported per benchmark, left out of compare's aggregates")

    @model_validator(mode="after")
    def _check(self) -> "Benchmark":
        from rl_safety.eval.scorers import SCORERS

        if "prompt" not in self.fields:
            raise ValueError(f"benchmark {self.name!r}: fields must map 'prompt' to a column")
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise ValueError(f"benchmark {self.name!r}: scorers {unknown or '[]'} not among {sorted(SCORERS)}")
        given: dict[str, str] = {}  # score -> the scorer that gives it
        for scorer in (SCORERS[s] for s in self.scorers):
            for score in scorer.metrics:
                if score in given:
                    raise ValueError(f"benchmark {self.name!r}: {given[score]!r} and {scorer.name!r} both give the "
                                     f"{scorer.metrics[score]}; choose one")
                given[score] = scorer.name
        if any(SCORERS[s].needs_answer for s in self.scorers) and "answer" not in self.fields:
            raise ValueError(f"benchmark {self.name!r}: a verifier scorer needs fields.answer")
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ValueError(f"benchmark {self.name!r}: prompt_template has no '{{prompt}}'")
        return self


class Generation(with_defaults("EvalEngine", EngineSection, gpu_memory_utilization=0.85, kv_cache_memory_mb=512)):
    """The model under evaluation and its vLLM engines."""

    dtype: str = "auto"
    max_prompt_tokens: int = Field(2048, ge=1, description="longer prompts are dropped and counted")
    chat_template: bool = True
    system_prompt: str | None = None
    trust_remote_code: bool = False
    seed: int = Field(0, ge=0)


class Suite(Section):
    renamed = {"generation.engines": "generation.num_engines", "generation.device": "cluster.device",
               **moved_judge_keys("guard", "refusal_judge", "strongreject_judge"),
               "moderation_judge.num_gpus": "set by the cluster (the classifier takes a GPU when the cluster has GPUs)"}

    name: NameInParent = Field(description="results go to RUN/eval/NAME/")
    data_root: str | None = Field(None, description="base of relative `data` paths; relative to the suite file")
    scorer_modules: list[str] = Field(default_factory=list, description="user .py files registering eval scorers")
    generation: Generation = Field(default_factory=Generation)
    cluster: RolloutClusterSection = Field(default_factory=RolloutClusterSection)
    guard: Guard | None = Field(None, description="the `guard` scorer's judge (harmful verdicts)")
    refusal_judge: Guard | None = Field(None, description="the `guard_refusal` scorer's judge: WildGuard's refusal verdict")
    moderation_judge: ModerationJudge | None = None
    strongreject_judge: RubricJudge | None = None
    benchmarks: list[Benchmark] = Field(min_length=1)

    @field_validator("scorer_modules")
    @classmethod
    def _load_scorer_modules(cls, paths: list[str]) -> list[str]:
        """Imported before `benchmarks` is validated (fields validate in order), so that their
        scorers are registered by then."""
        from rewards import load_module

        for path in paths:
            load_module(path)
        return paths

    @model_validator(mode="after")
    def _check(self) -> "Suite":
        from rl_safety.eval.scorers import SCORERS

        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names repeat: {names}")
        for bench in self.benchmarks:
            for scorer in (SCORERS[s] for s in bench.scorers):
                if scorer.needs_section and getattr(self, scorer.needs_section) is None:
                    raise ValueError(f"a benchmark uses the {scorer.name!r} scorer but the suite has no "
                                     f"{scorer.needs_section} section")
        if self.refusal_judge is not None and self.refusal_judge.format != "wildguard":
            raise ValueError(f"refusal_judge.format={self.refusal_judge.format!r}: only WildGuard says whether a "
                             "response refuses; use format: wildguard")
        return self


@dataclass
class EvalPrompt:
    benchmark: str
    row: int  # row index in the data file (before `where` / `limit`)
    id: str
    text: str  # after prompt_template
    answer: str | None


def resolve_data(suite: Suite, suite_file: Path | None, data: str) -> str:
    """A benchmark's `data` as a path: absolute, or under data_root (itself relative to the suite
    file); a name that is not an existing file under either is passed on as a hub dataset."""
    path = Path(data).expanduser()
    if path.is_absolute():
        return str(path)
    base = suite_file.parent if suite_file else Path.cwd()
    root = base / Path(suite.data_root).expanduser() if suite.data_root else base
    candidate = (root / path).resolve()
    return str(candidate) if candidate.exists() or path.suffix else data


def _require_columns(bench: Benchmark, source: str, rows: list[dict[str, Any]], needed: list[str]) -> None:
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise DatasetError(f"{bench.name}: {source} is not in the {bench.layout} layout: no column {missing}; "
                           f"its columns are {sorted(rows[0])}")


def harmbench_rows(bench: Benchmark, source: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HarmBench's behaviour CSV (Behavior, FunctionalCategory, SemanticCategory, Tags,
    ContextString, BehaviorID) with a `prompt` column: the behaviour, after its context string
    and a `---` rule for contextual behaviours, as HarmBench's direct-request test cases are
    written (f"{context}\\n\\n---\\n\\n{behavior}")."""
    _require_columns(bench, source, rows, ["Behavior", "ContextString", "BehaviorID"])
    out = []
    for row in rows:
        context = row["ContextString"] if isinstance(row["ContextString"], str) else ""
        behavior = row["Behavior"]
        out.append({**row, "prompt": f"{context}\n\n---\n\n{behavior}" if context.strip() else behavior})
    return out


GPQA_OPTIONS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa_rows(bench: Benchmark, source: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GPQA rows with `prompt` ("{Question}\\n\\nA) ..\\nB) ..\\nC) ..\\nD) ..") and `answer` (the
    correct option's letter). The options are permuted as OpenAI's simple-evals does
    (`gpqa_eval.py`): rng = random.Random(seed), one rng.sample(range(4), 4) per row in file
    order, applied to [correct, incorrect 1, 2, 3]; so with seed 0 the letters are simple-evals'
    (its first repeat). The file's order, not `where` / `limit`, fixes each row's permutation."""
    import random

    _require_columns(bench, source, rows, ["Question", *GPQA_OPTIONS])
    rng = random.Random(bench.shuffle_seed)
    out = []
    for row in rows:
        permutation = rng.sample(range(4), 4)
        options = [row[GPQA_OPTIONS[i]] for i in permutation]
        letter = "ABCD"[options.index(row["Correct Answer"])]
        listed = "\n".join(f"{'ABCD'[i]}) {option}" for i, option in enumerate(options))
        out.append({**row, "prompt": f"{row['Question']}\n\n{listed}", "answer": letter})
    return out


LAYOUTS = {"harmbench": harmbench_rows, "gpqa": gpqa_rows}  # "rows": the columns as they are


def load_benchmark(bench: Benchmark, source: str) -> list[EvalPrompt]:
    """The benchmark's prompts; a row without the mapped fields is an error naming the row."""
    rows = load_rows(source, bench.split, bench.config)
    if not rows:
        raise DatasetError(f"{bench.name}: {source} has no rows")
    if bench.layout in LAYOUTS:
        rows = LAYOUTS[bench.layout](bench, source, rows)
    columns = set(rows[0])
    missing = [f"{field} -> {column!r}" for field, column in bench.fields.items() if column not in columns]
    if missing:
        raise DatasetError(f"{bench.name}: {source} has no column for {', '.join(missing)}; "
                           f"its columns are {sorted(columns)}")
    bad_where = [k for k in bench.where if k not in columns]
    if bad_where:
        raise DatasetError(f"{bench.name}: `where` names columns {bad_where} that {source} lacks")
    prompts: list[EvalPrompt] = []
    for index, row in enumerate(rows):
        if any(row.get(k) != v for k, v in bench.where.items()):
            continue
        values = {}
        for field, column in bench.fields.items():
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DatasetError(f"{bench.name}: {source} row {index} (0-based): field {field!r} "
                                   f"(column {column!r}) is missing or empty")
            values[field] = value
        if not isinstance(values["prompt"], str):
            raise DatasetError(f"{bench.name}: {source} row {index} (0-based): prompt (column "
                               f"{bench.fields['prompt']!r}) is a {type(values['prompt']).__name__}, not text")
        answer = str(values["answer"]) if "answer" in values else None
        if answer is not None and "gsm8k" in bench.scorers:  # a gold answer the verifier cannot read
            from rewards.reasoning import gsm8k_number

            if gsm8k_number(answer) is None:
                raise DatasetError(f"{bench.name}: {source} row {index} (0-based): answer {answer[:80]!r} "
                                   f"(column {bench.fields['answer']!r}) has no number")
        text = bench.prompt_template.replace("{prompt}", values["prompt"]) if bench.prompt_template else values["prompt"]
        prompts.append(EvalPrompt(bench.name, index, str(values.get("id", index)), text, answer))
        if bench.limit and len(prompts) == bench.limit:
            break
    if not prompts:
        raise DatasetError(f"{bench.name}: no row of {source} matches where={bench.where}")
    return prompts
