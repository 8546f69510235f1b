"""Pure logic around the loop: the resumable sampler, batch tensors, the run directory."""

from __future__ import annotations

import json

import pytest
import torch

from rl_safety.data.prompts import DatasetError, PromptExample, PromptSampler, build_prompts
from rl_safety.rollout.vllm_engine import Completion
from rl_safety.rollout.batch import Sample, build_batch
from rl_safety.runs import RunDirectory, RunError


def test_sampler_covers_each_epoch_once_and_resumes_across_the_boundary():
    full = PromptSampler(size=10, seed=3)
    draws = [full.take(4) for _ in range(5)]  # 20 prompts: crosses the epoch boundary mid-batch
    flat = [i for d in draws for i in d]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new order each epoch

    resumed = PromptSampler(size=10, seed=3)
    for _ in range(2):
        resumed.take(4)
    state = resumed.state()  # 8 drawn: next batch straddles the boundary
    fresh = PromptSampler(size=10, seed=3)
    fresh.restore(json.loads(json.dumps(state)))
    assert [fresh.take(4) for _ in range(3)] == draws[2:]


def test_build_batch_aligns_response_tokens_and_logprobs():
    prompt = PromptExample(0, "p", [5, 6, 7], {})
    samples = [Sample(prompt, Completion([8, 9], [-0.5, -0.25], "xy", False), 0),
               Sample(prompt, Completion([10], [-1.0], "z", True), 0)]
    batch = build_batch(samples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # shifted: position t holds token t+1, so the first response token (index 3) sits at t=2
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert batch["rollout_logprobs"].tolist() == [[0, 0, -0.5, -0.25], [0, 0, -1.0, 0]]


class _Tok:
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_build_prompts_errors_name_the_column_and_row():
    rows = [{"question": "a"}]
    with pytest.raises(DatasetError, match="no column 'prompt'.*question"):
        build_prompts(rows, _Tok(), source="d.jsonl", prompt_key="prompt", chat_template=False,
                      system_prompt=None, max_prompt_tokens=10)
    with pytest.raises(DatasetError, match="row 1"):
        build_prompts([{"prompt": "a"}, {"prompt": None}], _Tok(), source="d.jsonl", prompt_key="prompt",
                      chat_template=False, system_prompt=None, max_prompt_tokens=10)
    kept, dropped = build_prompts([{"prompt": "ab", "label": "Vanilla_Harmful", "answer": "4"}, {"prompt": "abcdef"}],
                                  _Tok(), source="d", prompt_key="prompt", chat_template=False, system_prompt=None,
                                  max_prompt_tokens=3)
    # the label parsed by the text contract; without a chat template no thought is opened
    assert dropped == 1 and kept[0].columns == {"label": "harmful", "answer": "4", "prompt_opens_think": False}
    with pytest.raises(DatasetError, match=r"d: row 1: label 'x' is not a prompt label"):
        build_prompts([{"prompt": "a", "label": "benign"}, {"prompt": "b", "label": "x"}], _Tok(), source="d",
                      prompt_key="prompt", chat_template=False, system_prompt=None, max_prompt_tokens=3)


def test_checkpoint_commit_is_atomic_and_rotates(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.create(resume=False)
    for step in (1, 3, 5):
        (run.partial_checkpoint(step) / "weights").mkdir(parents=True)
        run.commit_checkpoint(step, {"step": step}, keep=2)
    assert [p.name for p in run.complete_checkpoints()] == ["step_3", "step_5"]
    # a crash while writing step 7: learners wrote files, the driver state never landed
    (run.partial_checkpoint(7) / "weights").mkdir(parents=True)
    path, state = run.latest_checkpoint()
    assert path.name == "step_5" and state == {"step": 5}
    with pytest.raises(RunError, match="already holds a run"):
        run.log_metrics(0, {"a": 1.0})
        RunDirectory(tmp_path / "run").create(resume=False)


def test_a_committed_checkpoint_carries_a_manifest_of_its_files(tmp_path):
    import hashlib

    run = RunDirectory(tmp_path / "run")
    run.create(resume=False)
    partial = run.partial_checkpoint(1)
    (partial / "deepspeed").mkdir(parents=True)
    (partial / "deepspeed" / "model.pt").write_bytes(b"weights" * 100)
    path = run.commit_checkpoint(1, {"step": 1}, keep=2)
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert sorted(files) == ["deepspeed/model.pt", "driver_state.json"]
    for name, entry in files.items():  # an independent recomputation of what the manifest claims
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_resume_passes_over_a_damaged_checkpoint_and_foreign_directories(tmp_path, caplog):
    run = RunDirectory(tmp_path / "run")
    run.create(resume=False)
    for step in (1, 3):
        (run.partial_checkpoint(step) / "deepspeed").mkdir(parents=True)
        (run.partial_path(step) / "deepspeed" / "model.pt").write_bytes(bytes([step]) * 64)
        run.commit_checkpoint(step, {"step": step}, keep=3)
    (run.checkpoints / "step_9.bak").mkdir()  # not ours: ignored, not a ValueError
    (run.checkpoints / "step_9.bak" / "driver_state.json").write_text('{"step": 9}')
    assert [p.name for p in run.complete_checkpoints()] == ["step_1", "step_3"]

    (run.checkpoints / "step_3" / "deepspeed" / "model.pt").write_bytes(bytes([7]) * 64)  # same size, other bytes
    path, state = RunDirectory(tmp_path / "run").latest_checkpoint()
    assert path.name == "step_1" and state == {"step": 1}
    assert "step_3 is damaged and will not be loaded: deepspeed/model.pt does not match its SHA-256" in caplog.text
    (run.checkpoints / "step_1" / "deepspeed" / "extra.pt").write_bytes(b"planted")
    checked = RunDirectory(tmp_path / "run")
    assert checked.latest_checkpoint() is None
    assert "extra.pt is not in the manifest" in checked.damaged[run.checkpoints / "step_1"]


def test_a_torn_last_metrics_line_is_dropped_and_a_broken_one_refused(tmp_path, caplog):
    run = RunDirectory(tmp_path / "run")
    run.create(resume=False)
    run.metrics_path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    run.truncate_metrics(1)
    assert [json.loads(line)["step"] for line in run.metrics_path.read_text().splitlines()] == [0, 1]
    assert "line 3 is incomplete" in caplog.text
    run.metrics_path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunError, match="metrics.jsonl line 2: not a metrics row"):
        run.truncate_metrics(2)


def test_tensorboard_sink_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDirectory(tmp_path / "run")
    run.create(resume=False)
    run.add_tensorboard()
    run.log_metrics(0, {"reward/total/mean": 0.25, "note": "text is skipped"})
    run.log_metrics(1, {"reward/total/mean": 0.5})
    run.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("reward/total/mean")] == [0.25, 0.5]
