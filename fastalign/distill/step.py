"""One training step's gradient, computed in two passes (gradient caching).

1. the step's unique items (``StepBatch.inputs``, one row each) are embedded in
   micro-batches without autograd;
2. the loss and ``dL/dE`` come from the fused triplet op, called on a leaf
   ``E.requires_grad_()``;
3. each micro-batch is embedded again with autograd and its slice of
   ``dL/dE`` is backpropagated.

Activation memory is that of one micro-batch, whatever the number of
triplets. The RNG state (dropout, stochastic depth) is saved before each
micro-batch of pass 1 and restored for the same micro-batch in pass 2, so
both passes see the same masks; normalisation buffers (BatchNorm running
statistics) are restored after pass 2 so they are updated once per step.

``single_pass_step`` is the naive step (one autograd graph over all
micro-batches); it consumes the RNG identically, so both steps give the same
parameter gradients up to float rounding.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..ops import triplet_distill_loss, triplet_loss
from .metrics import nvtx_range


@dataclass
class StepBatch:
    """The data of one step, in local item indices.

    Attributes:
        inputs: (n, ...) one student input per unique item (item indices for a
            ``FeatureStudent``, image tensors for an image student).
        triplets: (B, 3) int64 rows into ``inputs``, odd one out last.
        target_sims: (B, 3) teacher similarities, or None.
        target_probs: (B, 3) teacher probabilities, or None (exactly one is given).
        human: (H, 3) int64 hard human triplets (odd one out last) into ``inputs``, or None.
        items: (n,) global item ids of ``inputs`` (for logging and evaluation).
        position: data-stream position after this batch (for checkpoints).
        skipped_items, skipped_triplets: corrupt/missing images dropped while building.
    """

    inputs: torch.Tensor
    triplets: torch.Tensor
    target_sims: Optional[torch.Tensor] = None
    target_probs: Optional[torch.Tensor] = None
    human: Optional[torch.Tensor] = None
    items: Optional[torch.Tensor] = None
    position: Dict[str, int] = field(default_factory=dict)
    skipped_items: int = 0
    skipped_triplets: int = 0


@dataclass(frozen=True)
class StepOptions:
    """How a step computes its loss.

    Attributes:
        micro_batch: items per forward (bounds activation memory).
        divergence: "jsd" or "kl".
        temperature: student temperature.
        teacher_temperature: turns ``target_sims`` into probabilities.
        similarity: "dot" or "cosine".
        human_weight: weight of the hard human loss (0 = off).
        human_temperature: temperature of the hard loss.
        amp: bf16 autocast for the student's forward passes.
        backend: triplet op backend, None = auto.
        sync_timing: synchronise CUDA before reading phase clocks.
    """

    micro_batch: int = 128
    divergence: str = "jsd"
    temperature: float = 100.0
    teacher_temperature: float = 1.0
    similarity: str = "dot"
    human_weight: float = 0.0
    human_temperature: float = 1.0
    amp: bool = False
    backend: Optional[str] = None
    sync_timing: bool = False


@dataclass
class StepResult:
    """Loss values (floats) and phase times (seconds) of one step."""

    loss: float
    distill: float
    human: float
    items: int
    triplets: int
    times: Dict[str, float]


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _rng_state(device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _replay(device: torch.device, state: Tuple[torch.Tensor, Optional[torch.Tensor]]):
    """Context: run with ``state`` as the RNG state, restore the current one after."""
    devices = [device] if device.type == "cuda" else []
    ctx = torch.random.fork_rng(devices=devices)

    @contextlib.contextmanager
    def run():
        with ctx:
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1], device)
            yield

    return run()


def _norm_buffers(model: nn.Module) -> List[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, _NormBase) for b in m.buffers()]


def _slices(n: int, micro: int) -> List[slice]:
    return [slice(s, min(s + micro, n)) for s in range(0, n, micro)]


def _clock(opts: StepOptions, device: torch.device) -> float:
    if opts.sync_timing and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def objective(emb: torch.Tensor, batch: StepBatch,
              opts: StepOptions) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, distill, human)`` losses on student embeddings ``emb`` (n, D)."""
    trip = batch.triplets.to(emb.device)
    sims = batch.target_sims.to(emb.device) if batch.target_sims is not None else None
    probs = batch.target_probs.to(emb.device) if batch.target_probs is not None else None
    distill = triplet_distill_loss(emb, trip, target_probs=probs, target_sims=sims,
                                   teacher_temperature=opts.teacher_temperature, temperature=opts.temperature,
                                   divergence=opts.divergence, similarity=opts.similarity, backend=opts.backend)
    total = distill
    human = torch.zeros((), dtype=distill.dtype, device=emb.device)
    if opts.human_weight > 0 and batch.human is not None and batch.human.shape[0] > 0:
        human = triplet_loss(emb, batch.human.to(emb.device), temperature=opts.human_temperature,
                             similarity=opts.similarity, backend=opts.backend)
        total = distill + opts.human_weight * human
    return total, distill, human


def _no_sync(_last: bool) -> ContextManager:
    return contextlib.nullcontext()


def _own_count(count: int) -> int:
    return count


@dataclass(frozen=True)
class StepSync:
    """How a step keeps in step with the other ranks (the default: alone).

    Attributes:
        grad_context: ``grad_context(is_last_micro_batch)`` wraps each backward
            (DDP passes ``no_sync`` for all but the last, so gradients are
            all-reduced once per step).
        micro_batches: maps this rank's number of micro-batches to the number
            every rank runs (their maximum). Ranks hold different numbers of
            unique items, but with FSDP each forward and backward is a
            collective, so a rank with fewer pads with forwards that add
            nothing to the gradient. Called once per step.
    """

    grad_context: Callable[[bool], ContextManager] = _no_sync
    micro_batches: Callable[[int], int] = _own_count


def _padding_input(batch: StepBatch, device: torch.device) -> torch.Tensor:
    # One real row keeps every model happy (BatchNorm refuses empty batches);
    # its output is multiplied by a zero gradient.
    return batch.inputs[:1].to(device, non_blocking=True)


def two_pass_step(model: nn.Module, batch: StepBatch, opts: StepOptions, sync: StepSync = StepSync()) -> StepResult:
    """Accumulate the step's parameter gradients into ``.grad`` with gradient caching.

    Args:
        model: the student (in train mode); maps ``inputs[s]`` to (len(s), D).
        batch: the step's data.
        opts: loss and micro-batch options.
        sync: cooperation with the other ranks (see ``StepSync``).
    """
    # One function on purpose (~60 lines): pass 1, the loss and pass 2 share the
    # per-micro-batch RNG states, the BatchNorm buffer snapshots and the memory
    # discipline (E is freed before pass 2); split up, every part would pass them around.
    device = model_device(model)
    n = batch.inputs.shape[0]
    parts = _slices(n, opts.micro_batch)
    pads = sync.micro_batches(len(parts)) - len(parts)
    if n == 0 and pads == 0:  # every item of the step failed to load: nothing to learn from
        return StepResult(0.0, 0.0, 0.0, 0, 0, {"embed": 0.0, "loss": 0.0, "backward": 0.0})
    times = {}
    t0 = _clock(opts, device)
    states = []
    emb = None
    saved = [b.clone() for b in _norm_buffers(model)]
    with nvtx_range("embed"), torch.no_grad():
        for s in parts:
            states.append(_rng_state(device))
            with autocast(device, opts.amp):
                out = model(batch.inputs[s].to(device, non_blocking=True))
            if emb is None:  # written in place: no list of outputs plus a concatenated copy
                emb = torch.empty(n, out.shape[1], dtype=torch.float32, device=out.device)
            emb[s] = out
        if pads:
            counted = [b.clone() for b in _norm_buffers(model)]  # padding must not move BatchNorm statistics
            for _ in range(pads):
                with autocast(device, opts.amp):
                    model(_padding_input(batch, device))
            _restore(model, counted)
    if emb is None:  # no items here, padding forwards only
        _pad_backward(model, batch, device, opts, sync, pads, 0)
        _restore(model, saved)
        return StepResult(0.0, 0.0, 0.0, 0, 0, {"embed": 0.0, "loss": 0.0, "backward": 0.0})
    emb.requires_grad_()
    t1 = _clock(opts, device)
    times["embed"] = t1 - t0
    with nvtx_range("loss"):
        total, distill, human = objective(emb, batch, opts)
        total.backward()
    values = (float(total.detach()), float(distill.detach()), float(human.detach()))
    grad = emb.grad
    # Free E (and the loss graph that references it) before pass 2: from here
    # on only dL/dE and one micro-batch's activations are alive.
    del total, distill, human, emb
    t2 = _clock(opts, device)
    times["loss"] = t2 - t1
    after_pass1 = [b.clone() for b in _norm_buffers(model)]
    with nvtx_range("backward"):
        last = len(parts) + pads - 1
        for idx, (s, state) in enumerate(zip(parts, states)):
            with _replay(device, state), sync.grad_context(idx == last):
                with autocast(device, opts.amp):
                    out = model(batch.inputs[s].to(device, non_blocking=True))
                out.backward(grad[s].to(out.dtype))
        _pad_backward(model, batch, device, opts, sync, pads, len(parts))
    _restore(model, after_pass1)  # BatchNorm statistics move once per step, in pass 1
    times["backward"] = _clock(opts, device) - t2
    return StepResult(*values, n, int(batch.triplets.shape[0]), times)


def _restore(model: nn.Module, saved: List[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, old in zip(_norm_buffers(model), saved):
            b.copy_(old)


def _pad_backward(model: nn.Module, batch: StepBatch, device: torch.device, opts: StepOptions, sync: StepSync,
                  pads: int, done: int) -> None:
    """``pads`` forward-backward passes with a zero output gradient: they take
    part in the other ranks' collectives and add nothing to ``.grad``."""
    for idx in range(done, done + pads):
        with sync.grad_context(idx == done + pads - 1):
            with autocast(device, opts.amp):
                out = model(_padding_input(batch, device))
            out.backward(torch.zeros_like(out))


def single_pass_step(model: nn.Module, batch: StepBatch, opts: StepOptions,
                     sync: StepSync = StepSync()) -> StepResult:
    """The naive step: one autograd graph over all micro-batches, then backward.

    Same RNG consumption as ``two_pass_step`` (micro-batches in order), so the
    gradients agree; activation memory grows with the number of items. Uses
    only ``sync.grad_context`` (FSDP needs the two-pass step's lockstep
    micro-batches; the config refuses it here).
    """
    device = model_device(model)
    n = batch.inputs.shape[0]
    if n == 0:
        return StepResult(0.0, 0.0, 0.0, 0, 0, {"embed": 0.0, "loss": 0.0, "backward": 0.0})
    times = {}
    t0 = _clock(opts, device)
    with nvtx_range("embed"):
        outs = []
        for s in _slices(n, opts.micro_batch):
            with autocast(device, opts.amp):
                outs.append(model(batch.inputs[s].to(device, non_blocking=True)).float())
        emb = torch.cat(outs)
    t1 = _clock(opts, device)
    times["embed"] = t1 - t0
    with nvtx_range("loss"):
        total, distill, human = objective(emb, batch, opts)
    t2 = _clock(opts, device)
    times["loss"] = t2 - t1
    with nvtx_range("backward"), sync.grad_context(True):
        total.backward()
    times["backward"] = _clock(opts, device) - t2
    return StepResult(float(total.detach()), float(distill.detach()), float(human.detach()), n,
                      int(batch.triplets.shape[0]), times)


STEPS = {"two_pass": two_pass_step, "single": single_pass_step}
