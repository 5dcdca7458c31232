"""DDP with 2 gloo processes on CPU gives the same update as one process with
the same global batch."""

from __future__ import annotations

import json
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_distill_fixtures import base_config, feature_matrix, run_ddp_rank, synthetic_source

from fastalign.distill import config_from_dict, distill
from fastalign.distill.checkpoint import latest_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_equals_one_process(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=run_ddp_rank, args=(r, 2, port, str(tmp_path / "ddp"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    cfg = config_from_dict(base_config(str(tmp_path / "one"), steps=4, ckpt_every=4, distributed="none",
                                       device="cpu"))
    distill(cfg, train_source=synthetic_source(), features=feature_matrix())
    a = load_file(str(latest_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "one") / "model.safetensors"))
    init = load_file(str(latest_checkpoint(tmp_path / "one") / "optim.safetensors"))
    for k in b:
        assert not torch.allclose(b[k], init[f"theta0.{k}"])  # the weights did move
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # both ranks' stream positions were saved for an exact multi-rank resume
    state = json.loads((latest_checkpoint(tmp_path / "ddp") / "state.json").read_text())
    assert len(state["ranks"]) == 2
