"""The machine's ceilings, measured in the same run: copy bandwidth and GEMM rate."""

from __future__ import annotations

import torch

from .timing import Device, benchmark


def copy_bandwidth(device: Device, nbytes: int, warmup_ms: float, rep_ms: float) -> dict:
    """Measured device-to-device copy bandwidth, counting bytes read plus written.

    Args:
        device: "cuda" or "cpu".
        nbytes: size of the copied buffer (read once, written once).
        warmup_ms, rep_ms: timer budgets.

    Returns ``{"bytes", "ms", "GBps"}`` with GB = 1e9 bytes.
    """
    n = max(1, nbytes // 4)
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    stats = benchmark(lambda: dst.copy_(src), device, warmup_ms, rep_ms, slow_ms=1e9, slow_reps=1)
    moved = 2 * n * 4
    return {"bytes": moved, "ms": stats.median_ms, "GBps": moved / (stats.median_ms * 1e-3) / 1e9}


def matmul_tflops(device: Device, dtype: torch.dtype, size: int, warmup_ms: float, rep_ms: float) -> dict:
    """Measured rate of a square ``size``-cubed GEMM on random data (the matrix ceiling)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    stats = benchmark(lambda: a @ b, device, warmup_ms, rep_ms, slow_ms=1e9, slow_reps=1)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "ms": stats.median_ms,
            "TFLOPs": flops / (stats.median_ms * 1e-3) / 1e12}
