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

Nothing silently wrong:

- checkpoints are verified on resume (``fastalign.distill.checkpoint``): a
  corrupt newest one is set aside and the newest intact one is used;
- a resume restores every RNG stream and the intra-op thread count
  (``fastalign.distill.host_state``), so it is bitwise identical to a run that
  was never interrupted;
- a non-finite loss or gradient norm stops training at once
  (``TrainingDiverged``), before the optimiser applies it and before any
  checkpoint could be written after it. This cannot be switched off: one NaN
  gradient makes Adam's moments NaN for good, so every later step and
  checkpoint would be NaN too; there is nothing to continue to.
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
from .checkpoint import latest_checkpoint, load_model_state, remove_stale_temps, resume_checkpoint, save_checkpoint
from .config import DistillConfig
from .data import StepStream
from .evaluation import embed_items, evaluate  # noqa: F401  (embed_items re-exported: it lived here)
from .host_state import restore_rng, restore_threads, rng_snapshot, seed_host_rngs
from .metrics import (
    RUN_STATS,
    MetricsWriter,
    nvtx_range,
    plot_curves,
    previous_report_metrics,
    remove_report_temps,
    write_report,
)
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


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm of a step was NaN or infinite (see the module docstring)."""


def _resume(run: Run, counters: _Counters) -> int:
    """Load the newest intact checkpoint of ``out_dir`` into the run (and its skip
    counts into ``counters``), if any. Returns the intra-op thread count to put back
    when training ends."""
    ckpt = resume_checkpoint(run.out_dir) if run.cfg.train.resume else None
    if ckpt is None:
        return torch.get_num_threads()
    path = ckpt.path
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
    mine = ranks[run.dist.rank]
    run.position = dict(mine["position"])
    run.step = ckpt.step
    counters.skipped_items, counters.skipped_triplets = mine.get("skipped", [0, 0])
    restore_rng(ckpt.rng, run.dist.rank, run.device)
    if run.dist.rank == 0:
        log.info("resumed from %s at step %d", path, run.step)
    return restore_threads(int(mine.get("threads", 0)), f"checkpoint {path}")


def _save(run: Run, counters: _Counters) -> Path:
    """Checkpoint: gathers every rank's RNG and stream position to rank 0, which writes."""
    rng = rng_snapshot(run.device)
    mine = {"position": dict(run.position), "threads": torch.get_num_threads(),
            "skipped": [counters.skipped_items, counters.skipped_triplets]}
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
    seed_host_rngs(config.train.seed)  # a resume restores the states saved instead
    run = setup(config, student, train_source, val_source, features)
    try:
        result = _train(run)
        if run.dist.owned:
            # Ranks leave together: rank 0 still writes the report and curves, and a rank that tore its
            # gloo group down meanwhile was now and then aborted at exit ("terminate called without an
            # active exception"). Only on success: after an error a barrier could wait for a dead rank.
            dist.barrier()
        return result
    finally:
        if run.dist.owned:
            dist.destroy_process_group()


def _stop_if_not_finite(run: Run, res: StepResult, grad_norm: float) -> None:
    """Raise ``TrainingDiverged`` if this step's loss or gradient norm is NaN/Inf, on any rank.

    Free: both values are Python floats the step has already synchronised. Under
    DDP/FSDP the flag is all-reduced (one 1-element collective) so every rank
    stops at the same step instead of leaving the others waiting in a collective.
    """
    bad = []
    if not math.isfinite(res.loss):
        bad.append(f"the loss is {res.loss} (distill {res.distill}, human {res.human})")
    if not math.isfinite(grad_norm):
        bad.append(f"the gradient norm is {grad_norm}")
    stop = bool(bad)
    if run.dist.active:
        flag = torch.tensor([float(stop)], device=run.device if run.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    if not stop:
        return
    where = latest_checkpoint(run.out_dir)
    raise TrainingDiverged(
        f"training stopped at step {run.step + 1}: {' and '.join(bad) or 'another rank saw a non-finite value'}. "
        f"The update was not applied and nothing was saved after step {run.step}"
        f"{f' (newest checkpoint: {where})' if where else ''}; lower optim.lr or check the inputs, then rerun "
        "to resume from the newest checkpoint")


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
        _stop_if_not_finite(run, res, grad_norm)  # before the update: the weights stay finite
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
    is_main = run.dist.rank == 0
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if is_main:  # leftovers of a killed save or report of this run: never read, so never kept
        remove_stale_temps(run.out_dir)
        remove_report_temps(run.out_dir)
    counters = _Counters()
    threads = _resume(run, counters)
    try:
        return _train_from(run, counters)
    finally:
        torch.set_num_threads(threads)  # the caller's count (a resume may have restored another)


def _last_row(writer: Optional[MetricsWriter], step: int) -> Dict[str, Any]:
    """The logged metrics of ``step`` (kept from before a resume), else nothing."""
    if writer is not None and writer.rows and int(writer.rows[-1].get("step", -1)) == step:
        return dict(writer.rows[-1])
    return {}


def _train_from(run: Run, counters: _Counters) -> DistillResult:
    """The loop from ``run.step`` (0, or where ``_resume`` left it) to ``train.steps``, then the report."""
    cfg = run.cfg
    is_main = run.dist.rank == 0
    # A sharded student's forward is a collective: then every rank evaluates.
    evaluates = is_main or run.dist.sharded
    writer = MetricsWriter(run.out_dir, resume_step=run.step) if is_main else None
    sync = step_sync(run.model, run.dist)
    params = list(run.names)
    progress = Progress(cfg.train.steps, "distill", cfg.train.progress and is_main, initial=run.step, unit="step")
    batches = _batches(run)
    first_step = run.step
    last_metrics = _last_row(writer, run.step)
    if run.step == 0 and cfg.train.eval_every and evaluates:
        # The curves start where the student started: its metrics before any step are the baseline
        # a later rise or fall is judged against. Evaluation draws no random numbers, so training
        # is the same with or without this row.
        first = evaluate(run)
        if writer is not None and first:
            writer.log({"step": 0, **first})
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
            last_ckpt = _save(run, counters)
    progress.close()
    if last_ckpt is None:  # resumed at (or past) the last step: nothing new to train
        last_ckpt = latest_checkpoint(run.out_dir) or _save(run, counters)
    final = dict(last_metrics)
    if evaluates and (cfg.eval.human_triplets or run.val_source is not None or run.dense):
        final.update(evaluate(run))
    elapsed = time.perf_counter() - t_start
    final.update({"run_seconds": elapsed, "triplets_per_s_run": counters.triplets / elapsed if elapsed else 0.0,
                  "skipped_items": counters.skipped_items, "skipped_triplets": counters.skipped_triplets})
    curves = report = None
    if is_main:
        writer.close()
        if run.step == first_step:  # a rerun of a finished run: keep what the training run reported
            prev = previous_report_metrics(run.out_dir, run.step)
            final = {**prev, **final, **{k: prev[k] for k in RUN_STATS if k in prev}}
        curves = plot_curves(writer.rows, run.out_dir / "curves.png")
        report = write_report(run.out_dir, run.step, final, last_ckpt, curves, run.cfg.to_dict())
    return DistillResult(run.out_dir, last_ckpt, final, curves, report or run.out_dir / "report.md", run.step)
