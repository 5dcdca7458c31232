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


def parallel_problem(d, dtype, seed, device="cpu"):
    """Rows 0..7 with tiny norms and a true cosine gradient of exactly 0;
    rows 8..11 random with norm ~1, which set the tolerance scale. No triplet
    mixes the two groups.

    D = 1: any nonzero values (every row is parallel to every other, so the
    whole gradient is 0). D > 1: rows 0..3 and 4..7 are +-2**k multiples of
    two rows v, w, so e_b = k e_a holds exactly in every dtype. v, w have
    small integer entries (times 2**-22), so every sum of products is exact
    whatever its order, and |v|**2 = 6, |w|**2 = 7 (times 2**-44) are chosen
    so that fl(sqrt(q))**2 != q in fp32 and fp64: d / (n_a n_b) is then not
    exactly +-1, which the kernels must handle (Triton ``_grad_sims``, C++ and
    CUDA ``grad_sim``). Shared by the Triton, CPU and CUDA backend tests.

    Returns ``(emb, trip, probs, coef)`` on ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    if d == 1:
        # |x| in [1e-7, 1.1e-6]: tiny, but well above COSINE_EPS (a clamped norm has a nonzero gradient).
        sign = torch.randint(0, 2, (8, 1), generator=g, dtype=torch.float64) * 2 - 1
        tiny = sign * (torch.rand(8, 1, generator=g, dtype=torch.float64) + 0.1) * 1e-6
    else:
        vw = torch.zeros(2, d, dtype=torch.float64)
        vw[0, :3] = torch.tensor([1.0, -2.0, 1.0])  # |v|^2 = 6
        vw[1, :4] = torch.tensor([-2.0, 1.0, 1.0, -1.0])  # |w|^2 = 7
        vw = vw[:, torch.randperm(d, generator=g)] * 2.0 ** -22
        k = torch.tensor([1.0, -2.0, 0.5, 4.0, -0.25, 8.0, -1.0, 0.125], dtype=torch.float64)
        tiny = k[:, None] * vw.repeat_interleave(4, dim=0)
    emb = torch.cat([tiny, torch.randn(4, d, generator=g, dtype=torch.float64) / d ** 0.5]).to(dtype)
    trip = torch.cat([torch.randint(0, 4, (12, 3), generator=g), torch.randint(4, 8, (12, 3), generator=g),
                      torch.randint(8, 12, (8, 3), generator=g)])
    trip[0] = torch.tensor([2, 2, 1])  # a repeated index
    trip[1] = torch.tensor([0, 1, 3])  # three distinct rows
    trip[12] = torch.tensor([4, 6, 7])
    probs = torch.softmax(torch.randn(trip.shape[0], 3, generator=g, dtype=torch.float64) * 2, dim=1)
    coef = torch.randn(trip.shape[0], 3, generator=g, dtype=torch.float64)
    return emb.to(device), trip.to(device), probs.to(device), coef.to(device)
