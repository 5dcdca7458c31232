"""The distillation loop: ``distill(config) -> DistillResult``.

Single process (CPU or one GPU)::

    fastalign distill --config distill.toml
    fastalign distill --config distill.toml --set optim.lr=1e-4 --set train.steps=2000

One node, 8 GPUs (DDP over NCCL; on CPU gloo is used)::

    torchrun --standalone --nproc_per_node=8 -m fastalign.cli.main distill --config distill.toml

Several nodes (run on every node, ``NODE_RANK`` = 0..N-1)::

    torchrun --nnodes=$NNODES --node_rank=$NODE_RANK --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:29500 \\
        -m fastalign.cli.main distill --config distill.toml

A student too large to replicate on every GPU: shard it with FSDP::

    torchrun --standalone --nproc_per_node=8 -m fastalign.cli.main distill --config distill.toml \\
        --set train.distributed=fsdp

``train.batch_triplets`` is the global batch: each rank streams its own
shard of the triplet store with ``batch_triplets / world_size`` triplets a
step, and DDP (or FSDP) averages the gradients, so a run gives the same
update on any number of ranks. Rerunning the same command resumes from the
newest checkpoint in ``train.out_dir`` (on the same number of ranks: each
rank's stream position is saved).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..common.progress import Progress
from ..common.seeds import derive_seed
from ..io import atomic_write_json, atomic_write_text
from .checkpoint import latest_checkpoint, load_checkpoint, load_model_state, save_checkpoint
from .config import DistillConfig
from .data import StepStream
from .evaluation import embed_items, evaluate  # noqa: F401  (embed_items re-exported: it lived here)
from .metrics import MetricsWriter, nvtx_range, plot_curves
from .optim import lr_at, set_lr
from .parallel import full_state, scalar, step_sync
from .setup import Run, Source, setup
from .source import TripletSource
from .step import STEPS, StepBatch, StepResult

log = logging.getLogger("fastalign.distill")


@dataclass
class DistillResult:
    """What a run produced.

    Attributes:
        out_dir: the run directory.
        checkpoint: the final checkpoint directory.
        metrics: final metrics (loss, val_kl, val_acc, human_acc when evaluated, throughput).
        curves: PNG of the training curves (None without matplotlib).
        report: ``report.md`` path (``report.json`` beside it).
        steps: optimiser steps done.
    """

    out_dir: Path
    checkpoint: Path
    metrics: Dict[str, Any]
    curves: Optional[Path]
    report: Path
    steps: int


def _rng_snapshot(device: torch.device) -> Dict[str, torch.Tensor]:
    snap = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        snap["cuda"] = torch.cuda.get_rng_state(device)
    return snap


def _resume(run: Run) -> None:
    """Load the newest checkpoint of ``out_dir`` into the run, if any."""
    path = latest_checkpoint(run.out_dir) if run.cfg.train.resume else None
    if path is None:
        return
    ckpt = load_checkpoint(path)
    saved = ckpt.state.get("config", {})
    now = run.cfg.to_dict()
    changed = [f"{sec}.{k}" for sec in ("student", "data", "loss", "optim") for k in now[sec]
               if saved.get(sec, {}).get(k, now[sec][k]) != now[sec][k]]
    if changed and run.dist.rank == 0:
        log.warning("resuming from %s with changed settings: %s", path, ", ".join(changed))
    load_model_state(run.student, {k: v.to(run.device) for k, v in ckpt.model.items()}, f"checkpoint {path}")
    run.optimizer.load_named_state(run.names, ckpt.optim, ckpt.state["optim_steps"])
    ranks = ckpt.state["ranks"]
    if len(ranks) != run.dist.world:
        raise ValueError(f"checkpoint {path} was written by {len(ranks)} ranks; this run has {run.dist.world}")
    run.position = dict(ranks[run.dist.rank]["position"])
    run.step = ckpt.step
    torch.set_rng_state(ckpt.rng[f"cpu.{run.dist.rank}"])
    if run.device.type == "cuda" and f"cuda.{run.dist.rank}" in ckpt.rng:
        torch.cuda.set_rng_state(ckpt.rng[f"cuda.{run.dist.rank}"], run.device)
    if run.dist.rank == 0:
        log.info("resumed from %s at step %d", path, run.step)


def _save(run: Run) -> Path:
    """Checkpoint: gathers every rank's RNG and stream position to rank 0, which writes."""
    rng = _rng_snapshot(run.device)
    mine = {"position": dict(run.position)}
    if run.dist.active:
        gathered: List[Any] = [None] * run.dist.world
        dist.all_gather_object(gathered, (mine, {k: v.cpu() for k, v in rng.items()}))
    else:
        gathered = [(mine, rng)]
    path = run.out_dir / f"ckpt-{run.step:08d}"
    # Gathering sharded (FSDP) tensors whole is a collective: every rank takes part.
    model_state = full_state(run.student.state_dict())
    optim_tensors, optim_steps = run.optimizer.named_state(run.names)
    if run.dist.rank == 0:
        rng_tensors = {f"{k}.{r}": v for r, (_, states) in enumerate(gathered) for k, v in states.items()}
        state = {"config": run.cfg.to_dict(), "optim_steps": optim_steps,
                 "ranks": [g[0] for g in gathered],
                 "shapes": {k: list(v.shape) for k, v in model_state.items()}}
        path = save_checkpoint(run.out_dir, run.step, model_state, optim_tensors, rng_tensors,
                               state, run.cfg.train.keep_last)
    if run.dist.active:
        dist.barrier()
    return path


def _batches(run: Run):
    stream = StepStream(run.spec, run.position)
    if run.cfg.data.num_workers == 0:
        return iter(stream)
    # A private generator: creating the loader must not consume the global RNG
    # (it would shift dropout masks after a resume).
    loader = DataLoader(stream, batch_size=None, num_workers=run.cfg.data.num_workers,
                        pin_memory=run.device.type == "cuda",
                        generator=torch.Generator().manual_seed(derive_seed(run.cfg.train.seed, 0x10AD)))
    return iter(loader)


def _allreduce_mean(run: Run, values: List[float]) -> List[float]:
    if not run.dist.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=run.device if run.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return (t / run.dist.world).tolist()


def _write_report(run: Run, metrics: Dict[str, Any], ckpt: Path, curves: Optional[Path]) -> Path:
    report = {"steps": run.step, "checkpoint": str(ckpt), "curves": str(curves) if curves else None,
              "metrics": metrics, "config": run.cfg.to_dict()}
    atomic_write_json(run.out_dir / "report.json", report)
    lines = ["# Distillation report", "", f"- steps: {run.step}", f"- final checkpoint: `{ckpt}`"]
    if curves:
        lines.append(f"- curves: `{curves.name}`")
    lines += ["", "| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    md = run.out_dir / "report.md"
    atomic_write_text(md, "\n".join(lines) + "\n")
    return md


def distill(config: DistillConfig, *, student: Optional[nn.Module] = None, train_source: Optional[Source] = None,
            val_source: Optional[TripletSource] = None, features: Optional[np.ndarray] = None) -> DistillResult:
    """Distil a student on teacher-labelled triplets (see the module docstring).

    Args:
        config: the run's settings.
        student: a ready student (any ``nn.Module`` mapping inputs to (n, D));
            default: built from ``config.student`` after seeding.
        train_source: a ``TripletSource`` (``TripletStore``, ``ArrayTripletSource``)
            or a ``DenseTripletSampler``; default: from ``config.data``.
        val_source: held-out triplets (a ``TripletSource``), optional.
        features: feature matrix for a "features" student instead of ``config.student.features``.
    """
    run = setup(config, student, train_source, val_source, features)
    try:
        return _train(run)
    finally:
        if run.dist.owned:
            dist.destroy_process_group()


@dataclass
class _Counters:
    """Running totals of the loop (throughput over the last 20 steps, skipped inputs)."""

    skipped_items: int = 0
    skipped_triplets: int = 0
    triplets: int = 0
    window: List[tuple] = field(default_factory=list)

    def add(self, batch: StepBatch, res: StepResult, seconds: float, world: int) -> Dict[str, float]:
        self.skipped_items += batch.skipped_items
        self.skipped_triplets += batch.skipped_triplets
        self.triplets += res.triplets * world
        self.window = (self.window + [(seconds, res.triplets * world, res.items * world)])[-20:]
        wt = sum(w[0] for w in self.window)
        return {"triplets_per_s": sum(w[1] for w in self.window) / wt, "items_per_s": sum(w[2] for w in self.window) / wt}


def _step(run: Run, model: nn.Module, batch: StepBatch, sync, params: List[nn.Parameter]) -> tuple:
    """One optimiser step: ``(result, lr, grad_norm, seconds)``."""
    cfg = run.cfg
    lr = lr_at(run.step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
    set_lr(run.optimizer, lr)
    t0 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    res = STEPS[cfg.train.step_mode](model, batch, run.opts, sync)
    with nvtx_range("optimizer"):
        clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, clip))
        run.optimizer.step()
    run.step += 1
    run.position = dict(batch.position)
    return res, lr, grad_norm, time.perf_counter() - t0


def _log_row(run: Run, res: StepResult, lr: float, grad_norm: float, seconds: float, rates: Dict[str, float],
             counters: _Counters, evaluates: bool) -> Dict[str, Any]:
    """The metrics row of this step (a collective: every rank calls it on a log step)."""
    cfg = run.cfg
    loss, distill_l, human_l = _allreduce_mean(run, [res.loss, res.distill, res.human])
    row = {"step": run.step, "lr": lr, "loss": loss, "distill": distill_l, "human": human_l,
           "grad_norm": grad_norm, **rates, "step_s": seconds, **{f"t_{k}": v for k, v in res.times.items()},
           "skipped_items": counters.skipped_items, "skipped_triplets": counters.skipped_triplets}
    at_end = run.step == cfg.train.steps
    if cfg.train.eval_every and (run.step % cfg.train.eval_every == 0 or at_end) and evaluates:
        row.update(evaluate(run))
    return row


def _train(run: Run) -> DistillResult:
    cfg = run.cfg
    is_main = run.dist.rank == 0
    # A sharded student's forward is a collective: then every rank evaluates.
    evaluates = is_main or run.dist.sharded
    run.out_dir.mkdir(parents=True, exist_ok=True)
    _resume(run)
    writer = MetricsWriter(run.out_dir, resume_step=run.step) if is_main else None
    sync = step_sync(run.model, run.dist)
    params = list(run.names)
    progress = Progress(cfg.train.steps, "distill", cfg.train.progress and is_main, initial=run.step, unit="step")
    batches = _batches(run)
    counters = _Counters()
    last_metrics: Dict[str, Any] = {}
    last_ckpt: Optional[Path] = None
    t_start = time.perf_counter()
    while run.step < cfg.train.steps:
        batch = next(batches)
        res, lr, grad_norm, seconds = _step(run, run.model, batch, sync, params)
        rates = counters.add(batch, res, seconds, run.dist.world)
        progress.update(1, {"loss": res.loss, "trip/s": rates["triplets_per_s"], "img/s": rates["items_per_s"]})
        at_end = run.step == cfg.train.steps
        if run.step % cfg.train.log_every == 0 or at_end:
            last_metrics = _log_row(run, res, lr, grad_norm, seconds, rates, counters, evaluates)
            if writer is not None:
                writer.log(last_metrics)
        if run.step % cfg.train.ckpt_every == 0 or at_end:
            last_ckpt = _save(run)
    progress.close()
    if last_ckpt is None:  # resumed at (or past) the last step: nothing new to train
        last_ckpt = latest_checkpoint(run.out_dir) or _save(run)
    final = dict(last_metrics)
    if evaluates and (cfg.eval.human_triplets or run.val_source is not None or run.dense):
        final.update(evaluate(run))
    elapsed = time.perf_counter() - t_start
    final.update({"run_seconds": elapsed, "triplets_per_s_run": counters.triplets / elapsed if elapsed else 0.0,
                  "skipped_items": counters.skipped_items, "skipped_triplets": counters.skipped_triplets})
    curves = report = None
    if is_main:
        writer.close()
        curves = plot_curves(writer.rows, run.out_dir / "curves.png")
        report = _write_report(run, final, last_ckpt, curves)
    return DistillResult(run.out_dir, last_ckpt, final, curves, report or run.out_dir / "report.md", run.step)
