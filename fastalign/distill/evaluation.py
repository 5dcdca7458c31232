"""Evaluation during and after distillation: held-out KL to the teacher, agreement
with its choices, and accuracy on human triplets. Only the evaluated items are
embedded, never all N."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..common.seeds import derive_seed
from ..ops import odd_one_out_accuracy, triplet_distill_loss
from .data import ImageItems
from .setup import Run
from .step import autocast, model_device


@torch.no_grad()
def embed_items(model: nn.Module, items: torch.Tensor, micro_batch: int, images: Optional[ImageItems] = None,
                amp: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embed global items (eval mode, no autograd). Returns ``(emb, ok)``:
    float32 (n, D) rows (zeros where an image failed) and the (n,) ok mask."""
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
            with autocast(device, amp):
                outs.append(model(x.to(device)).float())
    finally:
        model.train(was_training)
    emb = torch.cat(outs) if outs else torch.zeros(0, 1, device=device)
    emb[~ok.to(emb.device)] = 0
    return emb, ok


def val_batches(run: Run) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(triplets, teacher probs) of the held-out evaluation set."""
    cfg = run.cfg
    out = []
    tt = run.opts.teacher_temperature
    if run.dense and run.val_source is None:
        # Held-out dense triplets: a seed the training steps never use.
        for i in range(cfg.eval.val_batches):
            tb = run.train_source.sample(i, seed=derive_seed(cfg.train.seed, 0x7A1), rank=0)
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


def evaluate(run: Run) -> Dict[str, float]:
    """Held-out KL to the teacher and agreement with its choices; human accuracy."""
    cfg = run.cfg
    val = val_batches(run)
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
