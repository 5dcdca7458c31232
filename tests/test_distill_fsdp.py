"""FSDP (``train.distributed = "fsdp"``): 2 gloo processes on CPU shard a
block-structured student and give the same update as one process with the
same global batch; a sharded run resumes exactly from its (full) checkpoint."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_distill_fixtures import BlockStudent, feature_matrix, run_sharded_rank
from torch import nn

from fastalign.distill.checkpoint import latest_checkpoint, list_checkpoints
from fastalign.distill.parallel import DistInfo, shard_units, wrap_model

pytest.importorskip("torch.distributed.fsdp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir, mode: str, world: int = 2) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=run_sharded_rank, args=(r, world, port, str(out_dir), mode)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * world


def _weights(out_dir, step=None):
    ckpt = latest_checkpoint(out_dir) if step is None else out_dir / f"ckpt-{step:08d}"
    return load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "optim.safetensors"))


def test_shard_units_are_the_blocks_innermost_first():
    student = BlockStudent(feature_matrix())
    assert shard_units(student) == list(student.blocks)[::-1]
    nested = nn.ModuleList([nn.ModuleList([nn.Linear(2, 2)]), nn.Linear(2, 2)])
    units = shard_units(nested)
    assert units.index(nested[0][0]) < units.index(nested[0])  # a unit before the unit holding it


def test_wrap_model_is_identity_on_one_process():
    student = BlockStudent(feature_matrix())
    assert wrap_model(student, DistInfo(mode="fsdp"), torch.device("cpu")) is student


def test_fsdp_two_ranks_equals_one_process_and_resumes_exactly(tmp_path):
    _launch(tmp_path / "fsdp", "fsdp")
    run_sharded_rank(0, 1, _free_port(), str(tmp_path / "one"), "none")
    a, a_optim = _weights(tmp_path / "fsdp")
    b, b_optim = _weights(tmp_path / "one")
    assert set(a) == set(b) and len(a) == 6  # two blocks and the head, weight and bias each
    for k in b:
        assert tuple(a[k].shape) == tuple(b[k].shape)  # saved whole, not one rank's shard
        assert not torch.allclose(b[k], b_optim[f"theta0.{k}"])  # the weights did move
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    for k in b_optim:
        torch.testing.assert_close(a_optim[k], b_optim[k], rtol=1e-4, atol=1e-6)
    # Held-out evaluation of the sharded student matches the single process.
    ra = json.loads((tmp_path / "fsdp" / "report.json").read_text())["metrics"]
    rb = json.loads((tmp_path / "one" / "report.json").read_text())["metrics"]
    assert ra["val_kl"] == pytest.approx(rb["val_kl"], rel=1e-5) and ra["val_acc"] == rb["val_acc"]

    # Resume: drop the final checkpoint, rerun; the sharded state is loaded back
    # from the full tensors of step 2 and step 4 is reproduced bitwise.
    final, final_optim = _weights(tmp_path / "fsdp", 4)
    assert [p.name for p in list_checkpoints(tmp_path / "fsdp")][-1] == "ckpt-00000004"
    shutil.rmtree(tmp_path / "fsdp" / "ckpt-00000004")
    _launch(tmp_path / "fsdp", "fsdp")
    again, again_optim = _weights(tmp_path / "fsdp", 4)
    for k in final:
        assert torch.equal(again[k], final[k]), k
    for k in final_optim:
        assert torch.equal(again_optim[k], final_optim[k]), k
