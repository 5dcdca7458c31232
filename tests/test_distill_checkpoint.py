"""Checkpoints: atomic layout, keep-last, shape mismatch, exact resume after
``kill -9``, and ``fastalign embed``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_distill_fixtures import base_config, feature_matrix, synthetic_source

from fastalign.distill import config_from_dict, distill, embed_checkpoint
from fastalign.distill.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

HERE = Path(__file__).resolve().parent


def _run(out, **train):
    cfg = base_config(str(out), **train)
    cfg["optim"]["min_lr_ratio"] = 1.0  # constant after warmup: the schedule does not depend on train.steps
    cfg = config_from_dict(cfg)
    return distill(cfg, train_source=synthetic_source(), features=feature_matrix())


def test_layout_keep_last_and_resume_in_process(tmp_path):
    res = _run(tmp_path / "a", steps=6, ckpt_every=2, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["ckpt-00000004", "ckpt-00000006"]
    ck = load_checkpoint(res.checkpoint)
    assert ck.step == 6 and set(ck.model) == {"head.0.weight", "head.0.bias"}
    assert {k.split(".")[0] for k in ck.optim} == {"theta0", "exp_avg", "exp_avg_sq"}
    assert "cpu.0" in ck.rng and ck.state["ranks"][0]["position"]["step"] == 6
    assert not list(Path(tmp_path / "a").glob(".ckpt-*"))  # no temp leftovers
    for name in ("metrics.jsonl", "metrics.csv", "report.md", "report.json", "curves.png"):
        assert (tmp_path / "a" / name).is_file(), name
    # An incomplete directory (no state.json, as after a kill mid-save) is ignored.
    (tmp_path / "a" / "ckpt-00000099").mkdir()
    assert latest_checkpoint(tmp_path / "a").name == "ckpt-00000006"
    # Stop at step 4 and continue to 6 in a new call: same weights as straight through.
    _run(tmp_path / "b", steps=4, ckpt_every=2)
    cont = _run(tmp_path / "b", steps=6, ckpt_every=2)
    a, b = load_file(str(res.checkpoint / "model.safetensors")), load_file(str(cont.checkpoint / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line)["step"] for line in lines]
    assert rows == [1, 2, 3, 4, 5, 6]  # one row per step, no duplicates after resume


def test_checkpoint_from_another_model_shape(tmp_path):
    _run(tmp_path / "a", steps=2, ckpt_every=2)
    cfg = base_config(str(tmp_path / "a"), steps=4)
    cfg["optim"]["min_lr_ratio"] = 1.0
    cfg["student"]["head_dim"] = 5
    with pytest.raises(ValueError, match=r"head.0.weight has shape \(4, 7\) in the checkpoint but \(5, 7\)"):
        distill(config_from_dict(cfg), train_source=synthetic_source(), features=feature_matrix())
    # embed: features of another width do not fit the trained head
    bad = tmp_path / "f.npy"
    np.save(bad, feature_matrix(dim=9))
    with pytest.raises(ValueError, match="shape"):
        embed_checkpoint(tmp_path / "a", features=str(bad))


def test_embed_exports_head_of_features(tmp_path):
    res = _run(tmp_path / "a", steps=3, ckpt_every=3)
    feats = feature_matrix(n_items=11)
    path = tmp_path / "f.npy"
    np.save(path, feats)
    emb, ok = embed_checkpoint(res.checkpoint, features=str(path))
    w = load_file(str(res.checkpoint / "model.safetensors"))
    ref = feats.astype(np.float64) @ w["head.0.weight"].double().numpy().T + w["head.0.bias"].double().numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    assert ok.all() and emb.dtype == np.float32
    # the CLI writes the same array atomically
    from test_distill_config import _cli

    class _Cap:  # minimal capsys stand-in
        def readouterr(self):
            return type("R", (), {"out": ""})()

    out = tmp_path / "e.npy"
    code, _ = _cli(["embed", "--checkpoint", str(tmp_path / "a"), "--features", str(path), "--out", str(out)],
                   _Cap())
    assert code == 0
    np.testing.assert_array_equal(np.load(out), emb)


def _subprocess(out: Path, steps: int, sleep: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    return subprocess.Popen([sys.executable, str(HERE / "test_distill_fixtures.py"), str(out), str(steps),
                             str(sleep)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_9_then_resume_is_bitwise_identical(tmp_path):
    steps = 24
    straight = _subprocess(tmp_path / "straight", steps, 0.0)
    victim = _subprocess(tmp_path / "victim", steps, 0.05)  # 2 forwards per micro-batch: ~0.5 s a step
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            done = list_checkpoints(tmp_path / "victim")
            if done and int(done[-1].name.split("-")[1]) >= 6:
                break
            if victim.poll() is not None:
                pytest.fail("the run finished before it could be killed: " + victim.stdout.read().decode())
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
    killed_at = int(list_checkpoints(tmp_path / "victim")[-1].name.split("-")[1])
    assert killed_at < steps
    resumed = _subprocess(tmp_path / "victim", steps, 0.0)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    assert straight.wait(timeout=300) == 0, straight.stdout.read().decode()
    a = load_file(str(latest_checkpoint(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "victim") / "model.safetensors"))
    assert latest_checkpoint(tmp_path / "victim").name == f"ckpt-{steps:08d}"
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise
    oa = load_file(str(latest_checkpoint(tmp_path / "straight") / "optim.safetensors"))
    ob = load_file(str(latest_checkpoint(tmp_path / "victim") / "optim.safetensors"))
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
