"""Block shapes for the Triton kernels: autotuned on a GPU, fixed elsewhere.

- Under ``TRITON_INTERPRET=1`` ``triton.autotune`` can hold only ONE config
  (it would otherwise "benchmark" configs through the interpreter), so a single
  small config is used there.
- Deterministic mode never autotunes: the summation order depends on the block
  shape, and timing-based tuning may pick a different shape in another process,
  which would break bitwise reproducibility across runs. It uses the fixed
  shapes of ``fixed_rows`` / ``fixed_segment``, chosen from D alone.
"""

from __future__ import annotations

import os
from typing import Dict, List

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_T, BLOCK_D, num_warps): tiles of BLOCK_T triplets x BLOCK_D columns.
# Small D wants many triplets per tile, large D wide column blocks; the
# pruning below keeps at most 7 per D so first-call tuning stays short
# (every config is one compile).
_GPU_ROW_SHAPES = (
    (1, 512, 4), (1, 1024, 8),
    (2, 256, 4), (2, 512, 8),
    (4, 128, 4), (4, 256, 8),
    (8, 64, 4), (8, 128, 4),
    (16, 32, 4), (32, 32, 4),
)
# The interpreter pays ~1 ms of Python per tensor op, whatever the block size,
# so it gets big blocks (few loop iterations) that are still < D for odd tests.
_INTERPRET_ROWS = triton.Config({"BLOCK_T": 32, "BLOCK_D": 64}, num_warps=1)


def row_configs() -> List[triton.Config]:
    """Autotune configs of the per-triplet kernels (keyed on D)."""
    if INTERPRET:
        return [_INTERPRET_ROWS]
    return [triton.Config({"BLOCK_T": t, "BLOCK_D": d}, num_warps=w, num_stages=2) for t, d, w in _GPU_ROW_SHAPES]


def prune_row_configs(configs, named_args, **kwargs):
    """Keep column blocks from min(128, D/8) to D (powers of two, >= 32) that pad D by
    at most 25%: wider blocks are mostly masked lanes, narrower ones loop often.
    Leaves 1-7 configs for any D."""
    d = named_args["D"] if "D" in named_args else kwargs["D"]
    hi = max(32, triton.next_power_of_2(d))
    lo = max(32, min(128, hi // 8))

    def padding(block_d: int) -> float:
        return triton.cdiv(d, block_d) * block_d / d - 1.0

    kept = [c for c in configs if lo <= c.kwargs["BLOCK_D"] <= hi and padding(c.kwargs["BLOCK_D"]) <= 0.25]
    return kept or [min(configs, key=lambda c: padding(c.kwargs["BLOCK_D"]))]


def fixed_rows(d: int) -> Dict[str, int]:
    """Deterministic-mode block shape of the per-triplet kernels (launch kwargs)."""
    if INTERPRET:
        return {"BLOCK_T": 32, "BLOCK_D": 64, "num_warps": 1}
    block_d = min(256, max(32, triton.next_power_of_2(d)))
    block_t = max(1, 1024 // block_d)
    return {"BLOCK_T": min(block_t, 16), "BLOCK_D": block_d, "num_warps": 4}


def fixed_segment(d: int) -> Dict[str, int]:
    """Block shape of the segmented-reduction kernel (entries x columns)."""
    if INTERPRET:
        return {"BLOCK_E": 16, "BLOCK_D": 64, "num_warps": 1}
    block_d = min(256, max(32, triton.next_power_of_2(d)))
    return {"BLOCK_E": 8, "BLOCK_D": block_d, "num_warps": 4}
