#!/usr/bin/env python
"""Is ``fastalign.affine_transform`` (folded constants + one ``torch.addmm``) at the matmul roofline?

    python benchmarks/bench_affine_transform.py --out bench-affine                # GPU: x = 1.28M x 1152
    python benchmarks/bench_affine_transform.py --preset cpu-tiny --out bench-affine  # tiny, on CPU

Times, on the same input (bf16 and fp32 on a GPU): a plain ``x @ W`` GEMM of the
same shape (the roofline), ``affine_transform``, ``addmm`` with prefolded
constants, and the unfused ``((x - mean) / std) @ W + b`` eager and compiled;
reports TFLOP/s, the fraction of the same-shape GEMM and of the measured
8192^3 GEMM rate. It also times the teacher-fit step
``triplet_loss(affine_transform(x, W, ...), triplets)`` at THINGS size
(N=1854, D=1152, B=4.7M) against its two halves, so the table shows how much a
fused affine + loss kernel could save at most. This is the ``affine`` group of
the harness (also part of ``fastalign bench --preset gpu-quick``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastalign

from fastalign.cli.bench import standalone_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(standalone_main(prog="bench_affine_transform.py", description=__doc__.splitlines()[0],
                             groups=("affine",), out="bench-affine"))
