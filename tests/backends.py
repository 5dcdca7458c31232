"""Shared helpers for the cross-backend tests: which backends to test and the
tolerance rule.

Tolerance rule: a backend's error against the float64 reference is no worse
than the torch backend's own error in that dtype, plus a stated slack relative
to the size of the reference value (``SLACK``).
"""

from __future__ import annotations

import pytest
import torch

import fastalign

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]

# Stated slack per input dtype, relative to max(1, |reference|).
SLACK = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}


def cpu_backends():
    """Backends that run on CPU tensors here (triton only under the interpreter)."""
    report = fastalign.backends()["backends"]
    return [name for name, info in report.items() if info["available"] and "cpu" in info["devices"]]


def backend_params():
    names = ["torch", "cpu", "triton"]
    available = set(cpu_backends())
    return [
        pytest.param(n, marks=pytest.mark.skipif(n not in available, reason=f"backend {n} unavailable here"))
        for n in names
    ]


def max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return float((x.double() - ref.double()).abs().max())


def assert_matches(value, torch_value, ref, dtype, what=""):
    """The tolerance rule above."""
    scale = max(1.0, float(ref.double().abs().max()) if ref.numel() else 1.0)
    err = max_err(value, ref)
    allowed = max_err(torch_value, ref) + SLACK[dtype] * scale
    assert err <= allowed, f"{what}: error {err:.3g} > allowed {allowed:.3g} (dtype {dtype})"


def random_problem(n=40, d=13, b=60, dtype=torch.float32, scale=1.0, seed=0):
    """Random embeddings and triplets, with repeated indices within and across triplets."""
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    trip = torch.randint(0, n, (b, 3), generator=g)
    trip[0] = torch.tensor([1, 1, 2])  # repeated within a triplet
    trip[1] = torch.tensor([3, 3, 3])
    trip[2:6, 0] = 5  # repeated across triplets
    return emb, trip


def seed_of(*parts) -> int:
    """A stable seed from test parameters (``hash`` of a str is salted per process)."""
    import zlib

    return zlib.crc32(repr(parts).encode()) % 10_000
