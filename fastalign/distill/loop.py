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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_json, atomic_write_text
from ..ops import odd_one_out_accuracy, triplet_distill_loss
from .checkpoint import latest_checkpoint, load_checkpoint, load_model_state, save_checkpoint
from .config import DistillConfig
from .data import ImageItems, StepStream, StreamSpec, read_file_names
from .metrics import MetricsWriter, Progress, nvtx_range, plot_curves
from .parallel import DistInfo, full_state, init_distributed, scalar, step_sync, unwrap, wrap_model
from .optim import DecayToInitAdam, lr_at, set_lr, trainable_parameters
from .sampler import DenseTripletSampler, human_triplet_rows, mix_seed
from .step import STEPS, StepOptions
from .student import FeatureLookup, build_student, enable_activation_checkpointing, image_preprocess

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


def _device(cfg: DistillConfig, dist_info: DistInfo) -> torch.device:
    kind = cfg.train.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available")
        torch.cuda.set_device(dist_info.local_rank)
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def _open_store(path: str):
    if not path:
        raise ValueError("data.source 'store' needs data.store (a triplet store path)")
    try:
        from ..triplets.store import TripletStore
    except ImportError:
        raise ValueError("data.source 'store' needs fastalign.triplets.store, which this install lacks") from None
    return TripletStore.open(path)


def _teacher_temperature(cfg: DistillConfig, source) -> float:
    if cfg.loss.teacher_temperature is not None:
        return float(cfg.loss.teacher_temperature)
    manifest = getattr(source, "manifest", None) or {}
    for node in (manifest, manifest.get("meta") or {}):
        if isinstance(node, dict) and isinstance(node.get("temperature"), (int, float)):
            return float(node["temperature"])
    return 1.0


def _rng_snapshot(device: torch.device) -> Dict[str, torch.Tensor]:
    snap = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        snap["cuda"] = torch.cuda.get_rng_state(device)
    return snap


@dataclass
class _Run:
    """Everything the loop needs, built once by ``_setup``."""

    cfg: DistillConfig
    dist: DistInfo
    device: torch.device
    model: nn.Module  # what the step runs: DDP-wrapped, or the student itself (FSDP shards it in place)
    student: nn.Module  # unwrapped
    optimizer: DecayToInitAdam
    names: Dict[nn.Parameter, str]
    spec: StreamSpec
    train_source: Any
    val_source: Any
    num_items: int
    human_eval: Optional[torch.Tensor]
    images: Optional[ImageItems]
    opts: StepOptions
    out_dir: Path
    step: int = 0
    position: Dict[str, int] = field(default_factory=lambda: {"step": 0, "epoch": 0, "batch": 0})


def _item_count(student: nn.Module, images: Optional[ImageItems]) -> Optional[int]:
    if images is not None:
        return len(images)
    backbone = getattr(student, "backbone", None)
    return backbone.num_items if isinstance(backbone, FeatureLookup) else None


def _setup(cfg: DistillConfig, student: Optional[nn.Module], train_source, val_source,
           features: Optional[np.ndarray]) -> _Run:
    cfg.validate()
    kind = cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dist_info = init_distributed(cfg.train.distributed, kind)
    device = _device(cfg, dist_info)
    if cfg.train.batch_triplets % dist_info.world:
        raise ValueError(f"train.batch_triplets ({cfg.train.batch_triplets}) must be divisible by the number "
                         f"of ranks ({dist_info.world})")
    local_batch = cfg.train.batch_triplets // dist_info.world
    torch.manual_seed(cfg.train.seed)  # identical initialisation on every rank
    if student is None:
        student = build_student(cfg.student, features)
    student = student.to(device)

    # Triplets.
    if train_source is None:
        if cfg.data.source == "dense":
            if not cfg.data.teacher_embeddings:
                raise ValueError("data.source 'dense' needs data.teacher_embeddings (an .npy of teacher embeddings)")
            from .student import load_feature_matrix

            teacher = load_feature_matrix(cfg.data.teacher_embeddings)
            train_source = DenseTripletSampler(teacher, cfg.data.dense_items, local_batch,
                                               cfg.data.teacher_similarity, backend=cfg.loss.backend)
        else:
            train_source = _open_store(cfg.data.store)
            if val_source is None and cfg.data.val_store:
                val_source = _open_store(cfg.data.val_store)
            elif val_source is None and (Path(cfg.data.store) / "val" / "manifest.json").is_file():
                val_source = _open_store(str(Path(cfg.data.store) / "val"))  # make-triplets' validation split
    src_items = (train_source.num_teacher_items if isinstance(train_source, DenseTripletSampler)
                 else int(train_source.num_items))

    # Items.
    images = None
    if cfg.data.items == "images":
        if isinstance(unwrap(student).backbone if hasattr(student, "backbone") else None, FeatureLookup):
            raise ValueError("data.items 'images' needs an image student (student.kind timm, open_clip or module)")
        if cfg.data.file_names:
            names = read_file_names(cfg.data.file_names)
        else:
            names = getattr(train_source, "item_names", None)  # TripletStore: meta file_names (list or file)
            if names is None:
                meta = getattr(train_source, "manifest", None) or {}
                names = meta.get("file_names") or (meta.get("meta") or {}).get("file_names")
            names = list(names) if isinstance(names, (list, tuple)) else []
            if not names:
                raise ValueError("data.items 'images' needs data.file_names or a store manifest with file_names")
        size, mean, std = image_preprocess(cfg.student, student)
        images = ImageItems(cfg.data.image_root, names, cfg.data.image_size or size,
                            cfg.data.mean or mean, cfg.data.std or std)
    num_items = _item_count(student, images)
    if num_items is not None and num_items != src_items:
        what = "image list" if images is not None else "feature matrix"
        raise ValueError(f"the triplet source has {src_items} items but the {what} has {num_items}")
    num_items = num_items if num_items is not None else src_items

    human = None
    if cfg.loss.human_weight > 0:
        human = torch.as_tensor(human_triplet_rows(cfg.loss.human_triplets))
        if human.numel() and int(human.max()) >= num_items:
            raise ValueError(f"loss.human_triplets index {int(human.max())} is out of range for {num_items} items")
    human_eval = None
    if cfg.eval.human_triplets:
        human_eval = torch.as_tensor(human_triplet_rows(cfg.eval.human_triplets))
        if human_eval.numel() and int(human_eval.max()) >= num_items:
            raise ValueError(f"eval.human_triplets index {int(human_eval.max())} is out of range for "
                             f"{num_items} items")

    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(student)
    student.train()
    if not trainable_parameters(student):
        raise ValueError("the student has no trainable parameters")
    # FSDP replaces the parameters with sharded ones: the optimiser (and its
    # theta0) must see the parameters the step will update.
    model = wrap_model(student, dist_info, device, bf16=cfg.train.amp == "bf16")
    named = trainable_parameters(student)
    o = cfg.optim
    optimizer = DecayToInitAdam([p for _, p in named], lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                weight_decay=o.weight_decay)
    names = {p: n for n, p in named}
    opts = StepOptions(micro_batch=cfg.train.micro_batch, divergence=cfg.loss.divergence,
                       temperature=cfg.loss.temperature, teacher_temperature=_teacher_temperature(cfg, train_source),
                       similarity=cfg.loss.similarity, human_weight=cfg.loss.human_weight,
                       human_temperature=cfg.loss.human_temperature, amp=cfg.train.amp == "bf16",
                       backend=cfg.loss.backend)
    spec = StreamSpec(train_source, local_batch, cfg.train.seed, cfg.data.shuffle, dist_info.rank,
                      dist_info.world, human, cfg.loss.human_batch, images)
    return _Run(cfg, dist_info, device, model, student, optimizer, names, spec, train_source, val_source,
                num_items, human_eval, images, opts, Path(cfg.train.out_dir))


def _resume(run: _Run) -> None:
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


def _save(run: _Run) -> Path:
    """Checkpoint: gathers every rank's RNG and stream position to rank 0, which writes."""
    rng = _rng_snapshot(run.device)
    mine = {"position": dict(run.position)}
    if run.dist.active:
        import torch.distributed as dist

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
        import torch.distributed as dist

        dist.barrier()
    return path


@torch.no_grad()
def embed_items(model: nn.Module, items: torch.Tensor, micro_batch: int, images: Optional[ImageItems] = None,
                amp: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embed global items (eval mode, no autograd). Returns ``(emb, ok)``:
    float32 (n, D) rows (zeros where an image failed) and the (n,) ok mask."""
    from .step import _autocast, model_device

    device = model_device(model)
    was_training = model.training
    model.eval()
    ok = torch.ones(items.shape[0], dtype=torch.bool)
    outs = []
    try:
        for s in range(0, items.shape[0], micro_batch):
            chunk = items[s:s + micro_batch]
            if images is None:
                x = chunk
            else:
                loaded = [images.load(int(i)) for i in chunk]
                for j, img in enumerate(loaded):
                    ok[s + j] = img is not None
                blank = torch.zeros(3, images.size, images.size)
                x = torch.stack([blank if img is None else img for img in loaded])
            with _autocast(device, amp):
                outs.append(model(x.to(device)).float())
    finally:
        model.train(was_training)
    emb = torch.cat(outs) if outs else torch.zeros(0, 1, device=device)
    emb[~ok.to(emb.device)] = 0
    return emb, ok


def _val_batches(run: _Run) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(triplets, teacher probs) of the held-out evaluation set."""
    cfg = run.cfg
    out = []
    tt = run.opts.teacher_temperature
    if isinstance(run.train_source, DenseTripletSampler) and run.val_source is None:
        # Held-out dense triplets: a seed the training steps never use.
        for i in range(cfg.eval.val_batches):
            tb = run.train_source.sample(i, seed=mix_seed(cfg.train.seed, 0x7A1), rank=0)
            out.append((tb.triplets, torch.softmax(tb.sims.double() / tt, 1).float()))
        return out
    if run.val_source is None:
        return out
    for i, tb in enumerate(run.val_source.stream(cfg.eval.batch, shuffle=False)):
        if i >= cfg.eval.val_batches:
            break
        probs = tb.probs if tb.probs is not None else torch.softmax(tb.sims.double() / tt, 1).float()
        out.append((tb.triplets.long(), probs))
    return out


def evaluate(run: _Run) -> Dict[str, float]:
    """Held-out KL to the teacher and agreement with its choices; human accuracy."""
    cfg = run.cfg
    val = _val_batches(run)
    needed = [t.reshape(-1) for t, _ in val]
    if run.human_eval is not None:
        needed.append(run.human_eval.reshape(-1))
    if not needed:
        return {}
    items = torch.unique(torch.cat(needed))  # sorted: searchsorted maps global ids to rows
    emb, ok = embed_items(run.student, items, cfg.train.micro_batch, run.images, run.opts.amp)

    def local(trip: torch.Tensor) -> torch.Tensor:
        # Rows of ``emb`` (only the evaluated items are embedded, never all N).
        return torch.searchsorted(items, trip.reshape(-1).contiguous()).view(-1, 3)

    metrics: Dict[str, float] = {}
    if val:
        kl_sum = agree = count = 0.0
        for trip, probs in val:
            trip = local(trip)
            keep = ok[trip].all(1)
            trip, probs = trip[keep].to(emb.device), probs[keep].to(emb.device)
            if trip.shape[0] == 0:
                continue
            kl = triplet_distill_loss(emb, trip, target_probs=probs, temperature=cfg.loss.temperature,
                                      divergence="kl", similarity=cfg.loss.similarity, reduction="sum",
                                      backend=cfg.loss.backend)
            odd = 2 - probs.argmax(1)  # the teacher's choice: pair c -> odd one out 2 - c
            correct = odd_one_out_accuracy(emb, trip, odd=odd, similarity=cfg.loss.similarity,
                                           backend=cfg.loss.backend, reduction="none")
            kl_sum += float(kl)
            agree += float(correct.sum())
            count += trip.shape[0]
        if count:
            metrics["val_kl"] = kl_sum / count
            metrics["val_acc"] = agree / count
    if run.human_eval is not None:
        trip = local(run.human_eval)
        trip = trip[ok[trip].all(1)].to(emb.device)
        metrics["human_acc"] = odd_one_out_accuracy(emb, trip, similarity=cfg.loss.similarity,
                                                    backend=cfg.loss.backend)
    return metrics


def _batches(run: _Run):
    stream = StepStream(run.spec, run.position)
    if run.cfg.data.num_workers == 0:
        return iter(stream)
    from torch.utils.data import DataLoader

    # A private generator: creating the loader must not consume the global RNG
    # (it would shift dropout masks after a resume).
    loader = DataLoader(stream, batch_size=None, num_workers=run.cfg.data.num_workers,
                        pin_memory=run.device.type == "cuda",
                        generator=torch.Generator().manual_seed(mix_seed(run.cfg.train.seed, 0x10AD)))
    return iter(loader)


def _allreduce_mean(run: _Run, values: List[float]) -> List[float]:
    if not run.dist.active:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=run.device if run.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return (t / run.dist.world).tolist()


def _write_report(run: _Run, metrics: Dict[str, Any], ckpt: Path, curves: Optional[Path]) -> Path:
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


def distill(config: DistillConfig, *, student: Optional[nn.Module] = None, train_source=None, val_source=None,
            features: Optional[np.ndarray] = None) -> DistillResult:
    """Distil a student on teacher-labelled triplets (see the module docstring).

    Args:
        config: the run's settings.
        student: a ready student (any ``nn.Module`` mapping inputs to (n, D));
            default: built from ``config.student`` after seeding.
        train_source: a triplet source with the ``TripletStore.stream`` method
            (e.g. ``ArrayTripletSource``) or a ``DenseTripletSampler``; default:
            from ``config.data``.
        val_source: held-out triplets (same interface), optional.
        features: feature matrix for a "features" student instead of ``config.student.features``.
    """
    run = _setup(config, student, train_source, val_source, features)
    try:
        return _train(run)
    finally:
        if run.dist.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(run: _Run) -> DistillResult:
    cfg = run.cfg
    is_main = run.dist.rank == 0
    # A sharded student's forward is a collective: then every rank evaluates.
    evaluates = is_main or run.dist.sharded
    run.out_dir.mkdir(parents=True, exist_ok=True)
    _resume(run)
    writer = MetricsWriter(run.out_dir, resume_step=run.step) if is_main else None
    step_fn = STEPS[cfg.train.step_mode]
    model = run.model
    sync = step_sync(model, run.dist)

    params = [p for p in run.names]
    progress = Progress(cfg.train.steps, run.step, cfg.train.progress and is_main, cfg.train.log_every)
    batches = _batches(run)
    skipped_items = skipped_triplets = 0
    last_metrics: Dict[str, Any] = {}
    last_ckpt: Optional[Path] = None
    t_start, triplets_done, items_done, window = time.perf_counter(), 0, 0, []
    while run.step < cfg.train.steps:
        batch = next(batches)
        skipped_items += batch.skipped_items
        skipped_triplets += batch.skipped_triplets
        lr = lr_at(run.step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
        set_lr(run.optimizer, lr)
        t0 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        res = step_fn(model, batch, run.opts, sync)
        with nvtx_range("optimizer"):
            clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
            grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, clip))
            run.optimizer.step()
        run.step += 1
        run.position = dict(batch.position)
        dt = time.perf_counter() - t0
        triplets_done += res.triplets * run.dist.world
        items_done += res.items * run.dist.world
        window.append((dt, res.triplets * run.dist.world, res.items * run.dist.world))
        window = window[-20:]
        wt = sum(w[0] for w in window)
        tps, ips = sum(w[1] for w in window) / wt, sum(w[2] for w in window) / wt
        progress.update(run.step, {"loss": res.loss, "trip/s": tps, "img/s": ips})
        at_end = run.step == cfg.train.steps
        if run.step % cfg.train.log_every == 0 or at_end:
            loss, distill_l, human_l = _allreduce_mean(run, [res.loss, res.distill, res.human])
            row = {"step": run.step, "lr": lr, "loss": loss, "distill": distill_l, "human": human_l,
                   "grad_norm": grad_norm, "triplets_per_s": tps, "items_per_s": ips,
                   "step_s": dt, **{f"t_{k}": v for k, v in res.times.items()},
                   "skipped_items": skipped_items, "skipped_triplets": skipped_triplets}
            if cfg.train.eval_every and (run.step % cfg.train.eval_every == 0 or at_end) and evaluates:
                row.update(evaluate(run))
            if writer is not None:
                writer.log(row)
            last_metrics = row
        if run.step % cfg.train.ckpt_every == 0 or at_end:
            last_ckpt = _save(run)
    progress.close()
    if last_ckpt is None:  # resumed at (or past) the last step: nothing new to train
        last_ckpt = latest_checkpoint(run.out_dir) or _save(run)
    final = dict(last_metrics)
    if evaluates and (cfg.eval.human_triplets or run.val_source is not None
                    or isinstance(run.train_source, DenseTripletSampler)):
        final.update(evaluate(run))
    elapsed = time.perf_counter() - t_start
    final.update({"run_seconds": elapsed, "triplets_per_s_run": triplets_done / elapsed if elapsed else 0.0,
                  "skipped_items": skipped_items, "skipped_triplets": skipped_triplets})
    curves = report = None
    if is_main:
        writer.close()
        curves = plot_curves(writer.rows, run.out_dir / "curves.png")
        report = _write_report(run, final, last_ckpt, curves)
    return DistillResult(run.out_dir, last_ckpt, final, curves, report or run.out_dir / "report.md", run.step)
