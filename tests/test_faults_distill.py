"""Fault injection on ``fastalign distill``: a subprocess is SIGKILLed at each named point
(``FASTALIGN_FAULT``, ``fastalign.io.faults``): mid-checkpoint (after the model, before
the optimiser state), before the checkpoint's rename, after it, mid-prune and during
``report.md``. Each next process resumes; the end result is byte for byte that of an
uninterrupted run, and no temp file is left.

Fails on the code before issue 15: there were no fault points, and a kill during
``report.md`` left ``.report.md.*.tmp`` behind (the rerun then rewrote report.json without
its training metrics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastalign.io.faults import POINTS, _wanted

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("run_seconds", "triplets_per_s_run", "triplets_per_s", "items_per_s", "step_s", "t_embed", "t_loss",
          "t_backward")


def _config(tmp: Path, out: Path) -> Path:
    rng = np.random.default_rng(0)
    np.save(tmp / "f.npy", rng.normal(size=(40, 7)).astype(np.float32))
    np.save(tmp / "t.npy", rng.normal(size=(40, 5)).astype(np.float32))
    path = tmp / f"{out.name}.toml"
    path.write_text(
        f'[student]\nkind = "features"\nfeatures = "{tmp / "f.npy"}"\nhead_dim = 4\n'
        f'[data]\nsource = "dense"\nteacher_embeddings = "{tmp / "t.npy"}"\ndense_items = 20\n'
        f'[optim]\nlr = 0.01\nwarmup_steps = 2\nweight_decay = 0.1\n'
        f'[train]\nsteps = 8\nbatch_triplets = 64\nmicro_batch = 8\nckpt_every = 2\nkeep_last = 2\n'
        f'log_every = 1\nprogress = false\nseed = 3\nout_dir = "{out}"\n')
    return path


def _distill(config: Path, fault: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("FASTALIGN_FAULT", None)
    if fault:
        env["FASTALIGN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "fastalign.cli.main", "distill", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=300)


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def test_fault_spec_parsing():
    """Fails before issue 15: the module did not exist."""
    assert _wanted("report.md", "report.md", 1) and _wanted("a,report.md@2", "report.md", 2)
    assert not _wanted("report.md@2", "report.md", 1) and not _wanted("checkpoint.mid_prune", "report.md", 1)
    assert "checkpoint.after_model" in POINTS


def test_distill_killed_at_every_point_resumes_byte_identical(tmp_path):
    """See the module docstring (fails before issue 15)."""
    straight, victim = tmp_path / "straight", tmp_path / "victim"
    res = _distill(_config(tmp_path, straight))
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = _config(tmp_path, victim)
    # Process k dies at its point; the next one resumes. Counts are per process: the first
    # two die at the first checkpoint (step 2), the third just after it is in place, the
    # fourth at the first prune (step 6), the fifth while writing report.md (step 8).
    for fault in ("checkpoint.after_model", "checkpoint.before_rename", "checkpoint.after_rename",
                  "checkpoint.mid_prune", "report.md"):
        res = _distill(cfg, fault)
        assert res.returncode == -9, (fault, res.returncode, res.stderr[-2000:])
    assert list(victim.glob(".tmp-report.md.*")), "the report.md kill left its temp file (then cleaned)"
    res = _distill(cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in victim.glob("ckpt-*")) == ["ckpt-00000006", "ckpt-00000008"]
    for name in ("model.safetensors", "optim.safetensors", "rng.safetensors"):
        assert (victim / "ckpt-00000008" / name).read_bytes() == (straight / "ckpt-00000008" / name).read_bytes()
    a, b = (json.loads((d / "report.json").read_text()) for d in (straight, victim))
    assert _untimed(b["metrics"]) == _untimed(a["metrics"]) and "loss" in b["metrics"]
    rows = [[_untimed(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (straight, victim)]
    assert rows[0] == rows[1] and [r["step"] for r in rows[1]] == list(range(1, 9))
    assert (victim / "report.md").read_text().count("\n") == (straight / "report.md").read_text().count("\n")
    leftovers = [p.name for p in victim.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


@pytest.mark.parametrize("point", ["checkpoint.after_model", "checkpoint.before_rename"])
def test_a_kill_mid_checkpoint_keeps_the_previous_ones_loadable(tmp_path, point):
    """Fails before issue 15 (no fault points). A kill inside the second save leaves the
    first checkpoint as the newest, intact one."""
    from fastalign.distill.checkpoint import list_checkpoints, load_checkpoint

    out = tmp_path / "r"
    res = _distill(_config(tmp_path, out), f"{point}@2")
    assert res.returncode == -9
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000002"]
    load_checkpoint(out / "ckpt-00000002")
