"""Adam with decay toward the initial weights (AligNet's ``decay_to_init``),
and the warmup-then-cosine learning-rate schedule.

Update for each parameter (bias-corrected Adam moments ``m_hat``, ``v_hat``)::

    theta <- theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd * (theta - theta0))

With a zero gradient the Adam term is 0, so ``theta - theta0`` shrinks by the
factor ``(1 - lr * wd)`` every step: ``d_t = d_0 (1 - lr wd)^t``.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import torch

from .parallel import full_tensor, like


class DecayToInitAdam(torch.optim.Optimizer):
    """Adam whose weight decay pulls toward ``theta0`` (the weights at construction).

    Args:
        params: parameters (or parameter groups) to optimise.
        lr: learning rate.
        betas: Adam moment coefficients.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: decay-to-init strength ``wd`` (AligNet: 1.0).
    """

    def __init__(self, params: Iterable, lr: float = 3e-5, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1.0):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                st["theta0"] = p.detach().clone()
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                st = self.state[p]
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if grad.is_sparse:
                    raise TypeError("DecayToInitAdam does not support sparse gradients")
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m_hat = m / (1 - b1 ** t)
                v_hat = v / (1 - b2 ** t)
                update = m_hat / (v_hat.sqrt() + eps)
                if wd:
                    update.add_(p - st["theta0"], alpha=wd)
                p.add_(update, alpha=-lr)
        return loss

    def named_state(self, names: Dict[torch.nn.Parameter, str]) -> Tuple[Dict[str, torch.Tensor], Dict[str, int]]:
        """Tensors keyed ``"<kind>.<param name>"`` and step counts keyed by name,
        for a safetensors checkpoint (no pickle). Sharded (FSDP) states are
        gathered whole, so every rank must call this."""
        tensors, steps = {}, {}
        for group in self.param_groups:
            for p in group["params"]:
                name, st = names[p], self.state[p]
                for kind in ("theta0", "exp_avg", "exp_avg_sq"):
                    tensors[f"{kind}.{name}"] = full_tensor(st[kind].detach()).contiguous().cpu()
                steps[name] = int(st["step"])
        return tensors, steps

    def load_named_state(self, names: Dict[torch.nn.Parameter, str], tensors: Dict[str, torch.Tensor],
                         steps: Dict[str, int]) -> None:
        """Inverse of ``named_state`` (full tensors, resharded like each
        parameter); raises ``ValueError`` on a shape mismatch."""
        for group in self.param_groups:
            for p in group["params"]:
                name, st = names[p], self.state[p]
                for kind in ("theta0", "exp_avg", "exp_avg_sq"):
                    key = f"{kind}.{name}"
                    if key not in tensors:
                        raise ValueError(f"checkpoint optimiser state lacks {key}")
                    src = tensors[key]
                    if tuple(src.shape) != tuple(p.shape):
                        raise ValueError(f"checkpoint optimiser state {key} has shape {tuple(src.shape)}, "
                                         f"the model has {tuple(p.shape)}")
                    st[kind] = like(src, p).clone()
                st["step"] = int(steps[name])


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warmup over
    ``warmup_steps`` (step 0 gets ``peak / warmup_steps``), then a cosine from
    ``peak`` down to ``peak * min_lr_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def trainable_parameters(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Parameter]]:
    """(name, parameter) for every parameter that requires grad."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
