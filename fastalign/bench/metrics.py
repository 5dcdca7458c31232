"""The work each measurement must do: minimal bytes and floating-point operations.

Minimal bytes (what an ideal kernel moves through device memory; GB = 1e9):

- rows: the unique rows read once, ``min(N, 3B) * D * elt``;
- the triplet indices, ``3B * idx_bytes``;
- targets: ``3B * 4`` (fp32 probabilities) for the distillation losses;
- outputs: forward writes the (B, 3) fp32 similarities for "sims", else one
  fp32 scalar loss; backward writes the dense (N, D) gradient in the
  embedding dtype and, for "sims", reads the (B, 3) fp32 upstream gradient.

Forward + backward of a fused loss reads the rows once and writes the gradient
once, which is the whole point of fusing.

FLOPs per triplet (dot similarity): 3 dot products of length D = ``6D``
forward; each of the 3 slot gradients is two scaled rows summed = ``12D``
backward. Cosine adds the three row norms (``6D``) forward and the projection
terms (``12D``) backward. The softmax and divergence terms are O(1) per
triplet and not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

_ELT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


def elt_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name."""
    if dtype not in _ELT:
        raise ValueError(f"dtype must be one of {list(_ELT)}, got {dtype!r}")
    return _ELT[dtype]


@dataclass(frozen=True)
class Work:
    """Minimal bytes and FLOPs of one measurement."""

    bytes: int
    flops: float


def triplet_work(op: str, phase: str, n: int, d: int, b: int, dtype: str,
                 similarity: str = "dot", idx_bytes: int = 8) -> Work:
    """Minimal bytes and FLOPs of a triplet op (see the module docstring).

    Args:
        op: "kl", "jsd", "hard" or "sims".
        phase: "fwd", "bwd" or "fwd+bwd".
        n, d, b: rows, columns, triplets.
        dtype: embedding dtype name.
        similarity: "dot" or "cosine".
        idx_bytes: bytes per triplet index (8 for int64, 4 for int32).
    """
    if phase not in ("fwd", "bwd", "fwd+bwd"):
        raise ValueError(f"phase must be 'fwd', 'bwd' or 'fwd+bwd', got {phase!r}")
    if op not in ("kl", "jsd", "hard", "sims"):
        raise ValueError(f"op must be kl, jsd, hard or sims, got {op!r}")
    elt = elt_bytes(dtype)
    rows = min(n, 3 * b) * d * elt
    idx = 3 * b * idx_bytes
    targets = 3 * b * 4 if op in ("kl", "jsd") else 0
    grad = n * d * elt
    sims_out = 3 * b * 4
    loss_out = 4
    fwd_flops = 6.0 * d * b * (2 if similarity == "cosine" else 1)
    bwd_flops = 12.0 * d * b * (2 if similarity == "cosine" else 1)
    if phase == "fwd":
        nbytes = rows + idx + targets + (sims_out if op == "sims" else loss_out)
        flops = fwd_flops
    elif phase == "bwd":
        # The rows are needed again for dE; the upstream gradient is (B, 3) for
        # sims and the stored per-triplet dL/ds for a loss.
        nbytes = rows + idx + sims_out + grad
        flops = bwd_flops
    else:
        nbytes = rows + idx + targets + grad + (sims_out if op == "sims" else loss_out)
        flops = fwd_flops + bwd_flops
    return Work(int(nbytes), flops)


def affine_work(n: int, d: int, d_out: int, dtype: str) -> Work:
    """Minimal bytes and FLOPs of ``x @ W + b`` with x (n, d), W (d, d_out).

    Bytes: x read, W and b read, z written, all in ``dtype``.
    """
    elt = elt_bytes(dtype)
    nbytes = (n * d + d * d_out + d_out + n * d_out) * elt
    return Work(int(nbytes), 2.0 * n * d * d_out)


def rates(work: Work, ms: float, copy_gbps: Optional[float]) -> dict:
    """Effective GB/s, TFLOP/s and the fraction of the measured copy bandwidth."""
    if not ms > 0:
        return {"GBps": None, "TFLOPs": None, "frac_copy_bw": None}
    gbps = work.bytes / (ms * 1e-3) / 1e9
    return {
        "GBps": gbps,
        "TFLOPs": work.flops / (ms * 1e-3) / 1e12,
        "frac_copy_bw": (gbps / copy_gbps) if copy_gbps else None,
    }
