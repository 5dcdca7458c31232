"""Resuming ``fastalign run``: stage keys cover input *content* and the byte-changing
environment; a changed input or upstream output is never resumed on; a run killed at
named points (``FASTALIGN_FAULT``) and resumed ends byte for byte like an uninterrupted one.

Every test here fails on the code before issue 15 (each docstring says how)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastalign.pipeline.outdir import RUN_MARKER
from fastalign.pipeline.stages import PENDING_FILE, Stage, StageRunner, spec_inputs

ROOT = Path(__file__).resolve().parents[1]
ENV = {"device": "cpu", "backend": "cpu"}


def _writer(name: str, value, seen: list, fail: bool = False):
    """A stage body writing ``value`` to ``<stage>/<name>.npy``; ``fail`` dies after a partial file."""
    def body(stage_dir: Path):
        seen.append(sorted(p.name for p in stage_dir.iterdir()))
        (stage_dir / "partial").write_text("work in progress")
        if fail:
            raise KeyboardInterrupt  # an interrupted attempt: stage.pending stays
        np.save(stage_dir / f"{name}.npy", np.asarray(value))
        return [stage_dir / f"{name}.npy"], {"value": float(np.sum(value))}
    return body


def _runner(out, lines, env=ENV):
    return StageRunner(out, log=lines.append, environment=dict(env))


def test_same_path_new_content_is_a_new_key(tmp_path):
    """Fails before issue 15: ``Stage`` had no ``inputs``; a file changed at the same path kept the key."""
    src = tmp_path / "teacher.npy"
    np.save(src, np.ones(4))
    lines, seen = [], []
    stage = Stage("data", {"a": 1}, [], _writer("x", [1.0], seen), inputs={"teacher_features": src})
    _runner(tmp_path / "run", lines).run(stage, 1, 1)
    _runner(tmp_path / "run", lines).run(stage, 1, 1)
    assert "data: cached" in lines[-1]
    np.save(src, np.full(4, 2.0))  # same path, same size, new bytes
    lines.clear()
    _runner(tmp_path / "run", lines).run(stage, 1, 1)
    text = "\n".join(lines)
    assert "changed since it ran: the content of input teacher_features" in text and "data: running" in text


def test_interrupted_attempt_resumes_only_with_the_same_fingerprint(tmp_path):
    """Fails before issue 15: an interrupted attempt resumed after its input's bytes changed
    (mixing two inputs in one output), and the log did not say why a stage restarted."""
    src = tmp_path / "emb.npy"
    np.save(src, np.ones(3))
    lines, seen = [], []
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _runner(out, lines).run(Stage("triplets", {}, [], _writer("s", [1.0], seen, fail=True), resumes=True,
                                      inputs={"embeddings": src}), 1, 1)
    assert (out / "triplets" / PENDING_FILE).exists()
    # Same content: the partial work is picked up.
    with pytest.raises(KeyboardInterrupt):
        _runner(out, lines).run(Stage("triplets", {}, [], _writer("s", [1.0], seen, fail=True), resumes=True,
                                      inputs={"embeddings": src}), 1, 1)
    assert "partial" in seen[-1] and "triplets: resuming" in lines[-1]
    np.save(src, np.zeros(3))
    lines.clear()
    _runner(out, lines).run(Stage("triplets", {}, [], _writer("s", [1.0], seen), inputs={"embeddings": src}), 1, 1)
    assert "partial" not in seen[-1]  # started clean
    assert any("not resuming the interrupted attempt, it differs in the content of input embeddings" in line
               for line in lines)


def test_another_backend_or_device_does_not_resume(tmp_path):
    """Fails before issue 15: a resume on another backend (cpu -> torch) was accepted as a runtime knob."""
    lines, seen = [], []
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _runner(out, lines).run(Stage("triplets", {}, [], _writer("s", [1.0], seen, fail=True)), 1, 1)
    _runner(out, lines, {"device": "cpu", "backend": "torch"}).run(
        Stage("triplets", {}, [], _writer("s", [1.0], seen)), 1, 1)
    assert "partial" not in seen[-1]
    assert any("differs in backend cpu -> torch: starting clean" in line for line in lines)
    lines.clear()
    _runner(out, lines, {"device": "cuda", "backend": "torch"}).run(
        Stage("triplets", {}, [], _writer("s", [1.0], seen)), 1, 1)
    assert any("changed since it ran: device cpu -> cuda" in line for line in lines)


def test_an_upstream_output_changed_on_disk_is_not_trusted(tmp_path):
    """Fails before issue 15: a cached stage's record was trusted, so a transform.npz changed
    after the teacher stage finished fed the next stage (and its resume) silently."""
    lines, seen = [], []
    out = tmp_path / "run"

    def stages():
        return [Stage("teacher", {}, [], _writer("transform", [1.0, 2.0], seen)),
                Stage("triplets", {}, ["teacher"], _writer("store", [3.0], seen))]

    _runner(out, lines).run_all(stages())
    np.save(out / "teacher" / "transform.npy", np.asarray([9.0, 9.0]))  # edited in place
    lines.clear()
    _runner(out, lines).run_all(stages())
    text = "\n".join(lines)
    assert "teacher: its outputs changed on disk since it finished" in text
    assert np.load(out / "teacher" / "transform.npy").tolist() == [1.0, 2.0]  # recomputed
    assert "triplets: cached" in text  # same recomputed bytes: the next stage's key holds


def test_each_input_is_hashed_once_per_run(tmp_path, monkeypatch):
    """Fails before issue 15: there was no per-run content digest (``content_digest``)."""
    from fastalign.pipeline import stages as st

    src = tmp_path / "f.npy"
    np.save(src, np.ones(2))
    calls = []
    real = st.file_checksum
    monkeypatch.setattr(st, "file_checksum", lambda p: calls.append(p) or real(p))
    lines, seen = [], []
    runner = _runner(tmp_path / "run", lines)
    runner.run_all([Stage("a", {}, [], _writer("a", [1.0], seen), inputs={"f": src}),
                    Stage("b", {}, ["a"], _writer("b", [2.0], seen), inputs={"f": tmp_path / "." / "f.npy"})])
    assert len(calls) == 1


def test_spec_inputs_names_the_files_behind_config_specs(tmp_path):
    """Fails before issue 15: there was no way to declare a stage's input files."""
    got = spec_inputs({"teacher_features": str(tmp_path / "t.npy"), "categories": "things",
                       "human_embedding": "things:spose49", "file_names": ""})
    assert got == {"teacher_features": tmp_path / "t.npy"}


# ------------------------------------------------------------ fault injection on fastalign run

TINY = ["teacher.lambdas=[0.1]", "teacher.folds=1", "teacher.calibrate=false",
        "triplets.num=3000", "triplets.val_num=300", "triplets.clusters=5",
        "student.train.steps=8", "student.train.batch_triplets=256", "student.train.eval_every=0",
        "student.train.ckpt_every=2", "student.train.keep_last=2", "student.optim.warmup_steps=2",
        "eval.few_shot_episodes=2", "eval.few_shot_shots=[1]"]
# Wall-clock numbers, and the resume bookkeeping of make-triplets: all that may differ.
TIMING = ("seconds", "_s", "per_s", "per_s_run", "t_embed", "t_loss", "t_backward", "shards_written",
          "shards_resumed")


def _fastalign_run(out: Path, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("FASTALIGN_FAULT", None)
    if fault:
        env["FASTALIGN_FAULT"] = fault
    args = [sys.executable, "-m", "fastalign.cli.main", "run", "--out", str(out)]
    for o in TINY:
        args += ["--set", o]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _untimed(obj):
    """``obj`` without wall-clock numbers (the only thing allowed to differ)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not any(k.endswith(t) or k == t for t in TIMING)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def test_fastalign_run_killed_at_each_point_resumes_byte_identical(tmp_path):
    """Fails before issue 15: there were no fault points (``FASTALIGN_FAULT`` killed nothing) and a
    kill during report.md left a temp file behind."""
    straight = _fastalign_run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    victim = tmp_path / "victim"
    # Each process dies at its point (-9 = SIGKILL), the next one resumes where it died.
    for fault in ("stage.before_record@3", "checkpoint.after_model@2", "checkpoint.mid_prune@1", "report.md@1"):
        res = _fastalign_run(victim, fault)
        assert res.returncode == -9, (fault, res.returncode, res.stderr[-2000:])
    res = _fastalign_run(victim)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "triplets: resuming" not in res.stderr and "student: resuming" in res.stderr
    for rel in ("embeddings/student.npy", "embeddings/teacher.npy", "teacher/transform.npz"):
        assert (victim / rel).read_bytes() == (tmp_path / "straight" / rel).read_bytes(), rel
    for name in ("model.safetensors", "optim.safetensors", "rng.safetensors"):
        a = tmp_path / "straight" / "student" / "run" / "ckpt-00000008" / name
        assert (victim / a.relative_to(tmp_path / "straight")).read_bytes() == a.read_bytes(), name
    def report(d: Path, rel: str = "report.json"):  # the two runs differ only in their folder
        return json.loads((d / rel).read_text().replace(str(d), "OUT"))

    a, b = report(tmp_path / "straight"), report(victim)
    assert b["results"] == a["results"] and b["heldout_triplets"] == a["heldout_triplets"]
    for name in a["stages"]:  # "cached" differs by design: the resumed run skipped finished stages
        assert _untimed(b["stages"][name]["metrics"]) == _untimed(a["stages"][name]["metrics"]), name
    a, b = report(tmp_path / "straight", "student/run/report.json"), report(victim, "student/run/report.json")
    assert _untimed(b["metrics"]) == _untimed(a["metrics"]) and "loss" in b["metrics"]
    leftovers = [p for p in victim.rglob("*") if (p.name.startswith(".") and p.name != RUN_MARKER)
                 or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
