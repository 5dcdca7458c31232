"""Data parallelism for the distillation loop: DDP, or FSDP for students too
large to replicate on every GPU.

- **DDP** replicates the student; gradients are all-reduced once per step (the
  two-pass step's micro-batches run under ``no_sync`` until the last).
- **FSDP** (``torch.distributed.fsdp.fully_shard``, "FSDP2") shards
  parameters, gradients and optimiser state over the ranks. Each transformer
  block (every element of an ``nn.ModuleList``, the convention of timm,
  open_clip and most model zoos) is its own shard unit, so only one block's
  parameters are gathered at a time. Gradients are reduce-scattered after
  every micro-batch, so no rank ever holds a full gradient.

Checkpoints hold full (unsharded) tensors either way: ``fastalign embed``
reads an FSDP checkpoint like any other, and a DDP run can resume an FSDP
checkpoint (on the same number of ranks, whose stream positions it holds).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.distributed as dist
from torch import nn

from .step import StepSync


@dataclass
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank, world, local_rank: from torchrun's environment.
        mode: "none", "ddp" or "fsdp".
        owned: this module initialised the process group (so it tears it down).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"
    owned: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Parameters are sharded: every rank must take part in each forward."""
        return self.mode == "fsdp" and self.world > 1


def init_distributed(mode: str, device_kind: str) -> DistInfo:
    """Join the torchrun job (NCCL on GPU, gloo on CPU), or run alone.

    Args:
        mode: ``train.distributed``: "auto" (DDP when launched with
            ``WORLD_SIZE > 1``), "ddp", "fsdp" or "none".
        device_kind: "cuda" or "cpu".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        # One process: FSDP over one rank shards nothing; train it plainly.
        return DistInfo()
    if mode == "none":
        raise ValueError("launched with WORLD_SIZE > 1 but train.distributed is 'none'")
    owned = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        owned = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    "fsdp" if mode == "fsdp" else "ddp", owned)


def shard_units(model: nn.Module) -> List[nn.Module]:
    """The submodules FSDP shards separately, innermost first.

    Every element of an ``nn.ModuleList`` that owns trainable parameters (the
    blocks of a transformer); failing that, the children of an
    ``nn.Sequential`` backbone. Parameters outside every unit (embeddings,
    the head) belong to the root unit.
    """
    units = [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m]
    if not units:
        backbone = getattr(model, "backbone", model)
        if isinstance(backbone, nn.Sequential):
            units = list(backbone)
    units = [u for u in units if any(p.requires_grad for p in u.parameters())]
    # Post-order: fully_shard must see a nested unit before the one that holds it.
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(units, key=lambda m: -order[id(m)])


def wrap_model(student: nn.Module, info: DistInfo, device: torch.device, bf16: bool = False) -> nn.Module:
    """The module the step runs: ``student`` itself, DDP around it, or the
    student sharded in place by FSDP (the same object, with DTensor parameters).

    Args:
        student: the model, already on ``device``.
        info: from ``init_distributed``.
        device: this rank's device.
        bf16: FSDP gathers parameters in bf16 and reduces gradients in fp32
            (the step's autocast covers DDP).
    """
    if not info.active:
        return student
    if info.mode == "ddp":
        # Buffers (a FeatureStudent's feature matrix, BatchNorm statistics)
        # are not re-broadcast every forward; newer torch renamed the switch.
        params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, **sync)
    try:
        # fully_shard arrived in torch 2.6; fastalign supports torch >= 2.4 without FSDP.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # (as above)
    except ImportError:
        raise ValueError("train.distributed 'fsdp' needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)") from None
    mesh = init_device_mesh(device.type, (info.world,))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in shard_units(student):
        fully_shard(unit, **kwargs)
    fully_shard(student, **kwargs)
    return student


def unwrap(model: nn.Module) -> nn.Module:
    """The student inside a DDP wrapper (FSDP shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def step_sync(model: nn.Module, info: DistInfo) -> StepSync:
    """How the step's micro-batches cooperate over the ranks.

    DDP all-reduces only on the last micro-batch (``no_sync`` before it). FSDP
    reduce-scatters every micro-batch (holding unsharded gradients until the
    last one would undo the memory FSDP saves), and since each forward is a
    collective, every rank runs the largest rank's number of micro-batches.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return StepSync(grad_context=lambda last: contextlib.nullcontext() if last else model.no_sync())
    if info.sharded:
        return StepSync(micro_batches=lambda count: _max_over_ranks(count, model))
    return StepSync()


def _max_over_ranks(count: int, model: nn.Module) -> int:
    device = next(iter(model.parameters())).device
    t = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor  # public in torch >= 2.5 only
    except ImportError:
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (a collective: every rank calls
    it); a plain tensor is returned as is."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_state(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``full_tensor`` of every value, in key order (the same on every rank),
    detached and on the CPU."""
    return {k: full_tensor(v.detach()).cpu() for k, v in tensors.items()}


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``ref``: this rank's shard when ``ref`` is a
    DTensor (every rank calls it with the same ``full``), else ``full`` itself
    on ``ref``'s device and dtype."""
    full = full.to(device=ref.device, dtype=ref.dtype)
    if _is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor  # a DTensor exists: so does this module

        return distribute_tensor(full, ref.device_mesh, ref.placements)
    return full


def load_full_state(model: nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Load full tensors (shapes already checked) into a possibly sharded model."""
    own = model.state_dict()
    model.load_state_dict({k: like(v, own[k]) for k, v in tensors.items()}, strict=True)


def scalar(t: torch.Tensor) -> float:
    """A Python float of a 0-d tensor or DTensor (clip_grad_norm_ returns a
    DTensor for sharded parameters)."""
    return float(full_tensor(t))
