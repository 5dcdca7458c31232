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


# ---------------------------------------------------------------- issue 15: verified checkpoints


def _weights(ckpt: Path):
    return load_file(str(ckpt / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def straight8(tmp_path_factory):
    """An uninterrupted 8-step run: what every recovered run must equal bit for bit."""
    return _run(tmp_path_factory.mktemp("straight") / "run", steps=8, ckpt_every=2, keep_last=3)


def test_state_json_holds_a_digest_per_file(tmp_path):
    """Fails before issue 15: state.json had no ``files`` digests."""
    from fastalign.io.atomic import file_checksum

    res = _run(tmp_path / "a", steps=2, ckpt_every=2)
    state = json.loads((res.checkpoint / "state.json").read_text())
    for name in ("model.safetensors", "optim.safetensors", "rng.safetensors"):
        rec = state["files"][name]
        assert rec["blake2b"] == file_checksum(res.checkpoint / name)
        assert rec["bytes"] == (res.checkpoint / name).stat().st_size
    assert len(state["digest"]) == 64 and state["ranks"][0]["threads"] == torch.get_num_threads()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's data section: the header still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate-model", "flip-optim", "flip-model"])
def test_corrupt_newest_checkpoint_is_set_aside(tmp_path, straight8, caplog, damage):
    """Fails before issue 15: a truncated model.safetensors raised a raw SafetensorError; a flipped
    byte was loaded silently (and NaN training followed)."""
    run_dir = tmp_path / "r"
    _run(run_dir, steps=6, ckpt_every=2, keep_last=3)
    newest = run_dir / "ckpt-00000006"
    how, name = damage.split("-")
    (_truncate if how == "truncate" else _flip_last_byte)(newest / f"{name}.safetensors")
    with caplog.at_level("WARNING", logger="fastalign.distill"):
        res = _run(run_dir, steps=8, ckpt_every=2, keep_last=3)
    assert "corrupt checkpoint set aside as corrupt-ckpt-00000006" in caplog.text
    assert f"{name}.safetensors" in caplog.text and "resuming from" in caplog.text
    assert (run_dir / "corrupt-ckpt-00000006" / f"{name}.safetensors").is_file()  # kept, not deleted
    _assert_same_weights(res.checkpoint, straight8.checkpoint)  # resumed from step 4, exactly


def test_no_intact_checkpoint_is_a_clear_error_and_moves_nothing(tmp_path):
    """Fails before issue 15: the SafetensorError traceback named no way out."""
    from fastalign.distill.checkpoint import CorruptCheckpoint

    run_dir = tmp_path / "r"
    _run(run_dir, steps=4, ckpt_every=2, keep_last=2)
    for ck in list_checkpoints(run_dir):
        _truncate(ck / "model.safetensors")
    with pytest.raises(CorruptCheckpoint, match="no intact checkpoint in .*ckpt-00000004/model.safetensors.*"
                                                "ckpt-00000002/model.safetensors"):
        _run(run_dir, steps=6)
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt-00000002", "ckpt-00000004"]
    with pytest.raises(CorruptCheckpoint, match="no intact checkpoint"):  # fastalign embed: same message
        embed_checkpoint(run_dir)


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path, straight8, caplog):
    """Fails before issue 15: no warning existed (checkpoints carried no digest at all)."""
    run_dir = tmp_path / "r"
    _run(run_dir, steps=4, ckpt_every=2, keep_last=3)
    for ck in list_checkpoints(run_dir):  # as written by the previous release
        state = json.loads((ck / "state.json").read_text())
        del state["files"], state["digest"]
        (ck / "state.json").write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="fastalign.distill"):
        res = _run(run_dir, steps=8, ckpt_every=2, keep_last=3)
    assert "carries no digest" in caplog.text
    _assert_same_weights(res.checkpoint, straight8.checkpoint)


def test_edited_state_json_is_corrupt(tmp_path):
    """Fails before issue 15: a changed step or stream position in state.json was trusted."""
    from fastalign.distill.checkpoint import CorruptCheckpoint

    res = _run(tmp_path / "r", steps=2, ckpt_every=2)
    state = json.loads((res.checkpoint / "state.json").read_text())
    state["ranks"][0]["position"]["batch"] += 1
    (res.checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(CorruptCheckpoint, match="state.json does not match its digest"):
        load_checkpoint(res.checkpoint)


def test_kill_mid_prune_leaves_no_half_checkpoint(tmp_path):
    """Fails before issue 15: pruning deleted files inside ckpt-* in place, so a kill could leave a
    ``state.json`` without its tensors (listed as complete)."""
    from fastalign.distill import checkpoint as ck

    run_dir = tmp_path / "r"
    _run(run_dir, steps=4, ckpt_every=2, keep_last=2)
    real = ck.shutil.rmtree
    calls = []

    def killed_rmtree(path, *a, **k):  # the process dies before the moved-aside directory is deleted
        calls.append(Path(path))
        raise KeyboardInterrupt

    ck.shutil.rmtree = killed_rmtree
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(run_dir, steps=6, ckpt_every=2, keep_last=2)
    finally:
        ck.shutil.rmtree = real
    assert calls and calls[0].name == ".ckpt-00000002.prune.tmp"
    for c in list_checkpoints(run_dir):  # every listed checkpoint is whole
        load_checkpoint(c)
    _run(run_dir, steps=6, ckpt_every=2, keep_last=2)  # the rerun cleans the leftover
    assert not list(run_dir.glob(".ckpt-*"))


# ---------------------------------------------------------------- issue 15: resume determinism


def test_resume_under_another_thread_count_is_bitwise_identical(tmp_path, straight8, caplog):
    """Fails before issue 15 (~1.5e-8 apart): the CPU kernels' reductions depend on the thread
    count, which a resume did not restore. The cause of the ~1e-9 pipeline divergence."""
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("needs 2 threads")
    run_dir = tmp_path / "r"
    _run(run_dir, steps=4, ckpt_every=2, keep_last=3)
    torch.set_num_threads(1)
    try:
        with caplog.at_level("WARNING", logger="fastalign.distill"):
            res = _run(run_dir, steps=8, ckpt_every=2, keep_last=3)
        assert torch.get_num_threads() == 1  # the caller's count is put back
    finally:
        torch.set_num_threads(before)
    assert "trained with 2 intra-op threads, this process has 1" in caplog.text
    _assert_same_weights(res.checkpoint, straight8.checkpoint)


def test_numpy_and_python_rng_are_restored(tmp_path):
    """Fails before issue 15: only torch's RNG was saved; a student drawing from numpy or
    ``random`` got other numbers after a resume."""
    import random

    from fastalign.distill.host_state import restore_rng, rng_snapshot

    np.random.seed(7)
    random.seed(7)
    np.random.normal()  # leaves a cached gaussian
    snap = {f"{k}.0": v for k, v in rng_snapshot(torch.device("cpu")).items()}
    want = (np.random.normal(size=3).tolist(), random.random(), random.gauss(0, 1))
    np.random.seed(1)
    random.seed(1)
    restore_rng(snap, 0, torch.device("cpu"))
    assert (np.random.normal(size=3).tolist(), random.random(), random.gauss(0, 1)) == want


# ---------------------------------------------------------------- issue 15: non-finite training


class _PoisonAt(torch.nn.Module):
    """A features student whose output (or gradient) turns non-finite at step ``at``."""

    def __init__(self, at: int, where: str):
        super().__init__()
        self.lin = torch.nn.Linear(7, 4)
        self.register_buffer("feats", torch.as_tensor(feature_matrix()), persistent=False)
        self.at, self.where, self.calls = at, where, 0
        self.out_dim = 4

    def forward(self, idx):
        out = self.lin(self.feats[idx])
        step = self.calls // 2 + 1  # two-pass step: one forward per pass (one micro-batch of 40 items)
        self.calls += 1
        if step == self.at and self.where == "loss":
            return out * float("nan")
        if step == self.at and self.where == "grad" and out.requires_grad:
            out.register_hook(lambda g: g * float("inf"))
        return out


@pytest.mark.parametrize("where,what", [("loss", "the loss is nan"), ("grad", "the gradient norm is")])
def test_non_finite_step_stops_training(tmp_path, where, what):
    """Fails before issue 15: a NaN loss trained on (``loss: nan``, exit 0) and was checkpointed."""
    from fastalign.distill.loop import TrainingDiverged

    cfg = base_config(str(tmp_path / "r"), steps=6, ckpt_every=1, micro_batch=64)
    with pytest.raises(TrainingDiverged, match=f"training stopped at step 3: {what}.*nothing was saved "
                                               "after step 2"):
        distill(config_from_dict(cfg), student=_PoisonAt(3, where), train_source=synthetic_source())
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["ckpt-00000001", "ckpt-00000002"]
    assert all(torch.isfinite(t).all() for t in _weights(tmp_path / "r" / "ckpt-00000002").values())


def test_cli_distill_exits_non_zero_on_nan(tmp_path, capsys):
    """Fails before issue 15: ``fastalign distill`` printed ``loss: nan`` and exited 0."""
    from fastalign.cli.main import main

    np.save(tmp_path / "f.npy", feature_matrix())
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32))
    (tmp_path / "c.toml").write_text(
        f'[student]\nkind = "features"\nfeatures = "{tmp_path / "f.npy"}"\nhead_dim = 4\n'
        f'[data]\nsource = "dense"\nteacher_embeddings = "{tmp_path / "t.npy"}"\ndense_items = 20\n'
        f'[optim]\nlr = 1e30\nwarmup_steps = 0\n'
        f'[train]\nsteps = 5\nbatch_triplets = 32\nprogress = false\nout_dir = "{tmp_path / "r"}"\n')
    rc = main(["distill", "--config", str(tmp_path / "c.toml")])
    err = capsys.readouterr().err
    assert rc == 3 and "fastalign distill: error: training stopped at step 2: the loss is nan" in err


# ---------------------------------------------------------------- issue 15: reports


def test_rerun_of_a_finished_run_keeps_the_report_metrics(tmp_path):
    """Fails before issue 15: the rerun rewrote report.json with only the evaluation and timing keys."""
    run_dir = tmp_path / "r"
    _run(run_dir, steps=4, ckpt_every=2)
    first = json.loads((run_dir / "report.json").read_text())
    (run_dir / ".tmp-report.md.999").write_text("half")  # a kill's leftovers, of both temp name styles
    (run_dir / ".report.md.abcd.tmp").write_text("half")
    again = _run(run_dir, steps=4, ckpt_every=2)
    second = json.loads((run_dir / "report.json").read_text())
    assert second["metrics"] == first["metrics"] and "loss" in second["metrics"]
    assert again.metrics["loss"] == first["metrics"]["loss"]
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


def test_curves_leave_out_empty_and_repeated_panels():
    """Before: a flat-zero "human" panel and a "loss" panel repeating "distill", in one 7-panel strip."""
    from fastalign.distill.metrics import _curves

    rows = [{"step": s, "loss": 1.0 / s, "distill": 1.0 / s, "human": 0.0, "lr": 0.1} for s in range(1, 5)]
    assert list(_curves(rows)) == ["distill", "lr"]
    rows[0]["human"] = 0.3  # a real human term keeps both its panel and the total loss
    rows[0]["loss"] = 1.3
    assert list(_curves(rows)) == ["loss", "distill", "human", "lr"]
