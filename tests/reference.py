"""An independent float64 reference of the triplet contract.

Written as naive gather-and-autograd math, sharing no code with
``fastalign.kernels.torch_ref``: gradients come from ``torch.autograd`` on the
float64 loss, not from hand-derived formulas.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def sims64(emb, triplets, similarity="dot"):
    e = emb.double()
    t = triplets.long()
    a, b, c = e[t[:, 0]], e[t[:, 1]], e[t[:, 2]]
    if similarity == "cosine":
        a = a / a.norm(dim=1, keepdim=True).clamp_min(EPS)
        b = b / b.norm(dim=1, keepdim=True).clamp_min(EPS)
        c = c / c.norm(dim=1, keepdim=True).clamp_min(EPS)
    return torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], dim=1)


def _reduce(per, weight, reduction):
    if weight is not None:
        per = per * weight.double()
    if reduction == "none":
        return per
    if per.numel() == 0:
        return per.sum()
    return per.sum() / per.shape[0] if reduction == "mean" else per.sum()


def hard_loss64(emb, triplets, odd=None, temperature=1.0, similarity="dot", reduction="mean", weight=None):
    s = sims64(emb, triplets, similarity) / temperature
    logq = torch.log_softmax(s, dim=1)
    c = torch.zeros(s.shape[0], dtype=torch.long) if odd is None else 2 - odd.long()
    per = -logq.gather(1, c[:, None].to(s.device)).squeeze(1)
    return _reduce(per, weight, reduction)


def distill_loss64(emb, triplets, target_probs=None, target_sims=None, teacher_temperature=1.0, temperature=1.0,
                   divergence="kl", similarity="dot", reduction="mean", weight=None):
    s = sims64(emb, triplets, similarity) / temperature
    # log q from log_softmax stays finite where q itself underflows (T = 0.01).
    logq = torch.log_softmax(s, dim=1)
    if target_sims is not None:
        p = torch.softmax(target_sims.double() / teacher_temperature, dim=1)
    else:
        p = target_probs.double()
    pos = p > 0
    logp = torch.where(pos, torch.log(torch.where(pos, p, torch.ones_like(p))), torch.full_like(p, float("-inf")))
    plogp = torch.where(pos, p * logp, torch.zeros_like(p))  # 0 log 0 = 0
    if divergence == "kl":
        per = (plogp - torch.where(pos, p * logq, torch.zeros_like(p))).sum(1)
    else:
        logm = torch.logaddexp(logp, logq) - torch.log(torch.tensor(2.0, dtype=torch.float64))
        q = logq.exp()
        per = 0.5 * (plogp - torch.where(pos, p * logm, torch.zeros_like(p))).sum(1) + 0.5 * (q * (logq - logm)).sum(1)
    return _reduce(per, weight, reduction)


def loss_and_grad64(fn, emb, *args, grad_out=None, **kwargs):
    """Return (loss, dloss/demb) in float64; a per-triplet loss is contracted with ``grad_out``."""
    e = emb.detach().double().requires_grad_(True)
    out = fn(e, *args, **kwargs)
    g = torch.ones_like(out) if grad_out is None else grad_out.double().reshape(out.shape)
    (grad,) = torch.autograd.grad(out, e, g)
    return out.detach(), grad
