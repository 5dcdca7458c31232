"""Compile the Triton kernels for a CUDA target without a GPU.

The interpreter (``TRITON_INTERPRET=1``) runs the kernels as Python, so a
construct that only the GPU compiler rejects (a type error in the frontend, an
unsupported loop form, a bad cast) would first show up on a GPU. This module
runs the real compiler (frontend, LLVM and ptxas, all shipped with triton) for
an sm_XX target on a machine with no GPU.

It must run in a process WITHOUT ``TRITON_INTERPRET=1`` (under the interpreter
``@triton.jit`` yields interpreted functions that cannot be compiled); the
test runs it in a subprocess::

    python -m fastalign.kernels.triton.compile_check            # a few variants
    python -m fastalign.kernels.triton.compile_check --all      # every variant
    python -m fastalign.kernels.triton.compile_check --arch 80

Exit status 0 when every variant compiled, 1 otherwise (one line per failure).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple


@dataclass(frozen=True)
class Variant:
    """One kernel specialisation: its name, pointer/int signature and constexprs."""

    name: str
    kernel: str
    signature: Dict[str, str]
    constexprs: Dict[str, object]


def _variants(full: bool) -> Iterator[Variant]:
    import triton.language as tl  # optional: this tool needs triton

    # The quick set: bf16 rows (the common case) through every kernel.
    emb_dtypes = ("bf16", "fp16", "fp32", "fp64") if full else ("bf16",)
    for edt in emb_dtypes:
        acc, acc_tl = ("fp64", tl.float64) if edt == "fp64" else ("fp32", tl.float32)
        rows = {"emb_ptr": f"*{edt}", "stride": "i32", "trip_ptr": "*i64"}
        yield Variant(
            f"similarities {edt}", "similarities_kernel",
            {**rows, "sims_ptr": f"*{acc}", "B": "i32"},
            {"D": 1152, "COSINE": True, "ACC": acc_tl, "BLOCK_T": 4, "BLOCK_D": 256},
        )
        fused_cases = itertools.product((0, 1, 2), (False, True), (0, 1, 2)) if full else [(2, True, 1), (0, False, 2)]
        for mode, cosine, grad in fused_cases:
            yield Variant(
                f"fused {edt} mode={mode} cosine={cosine} grad={grad}", "fused_kernel",
                {**rows, "target_ptr": f"*{acc}", "choice_ptr": "*i64", "rowscale_ptr": f"*{acc}",
                 "params_ptr": f"*{acc}", "loss_ptr": f"*{acc}", "dsim_ptr": f"*{acc}", "grad_ptr": f"*{acc}",
                 "tab_ptr": f"*{acc}", "B": "i32"},
                {"D": 1152, "MODE": mode, "COSINE": cosine, "HAS_CHOICE": mode == 0, "HAS_ROWSCALE": True,
                 "GRAD": grad, "ACC": acc_tl, "BLOCK_T": 4, "BLOCK_D": 256},
            )
        for cosine, grad in itertools.product((False, True), (1, 2)) if full else [(True, 1)]:
            yield Variant(
                f"scatter {edt} cosine={cosine} grad={grad}", "scatter_kernel",
                {**rows, "stride": "i64", "coef_ptr": f"*{acc}", "grad_ptr": f"*{acc}", "tab_ptr": f"*{acc}",
                 "B": "i64"},
                {"D": 130, "COSINE": cosine, "GRAD": grad, "ACC": acc_tl, "BLOCK_T": 8, "BLOCK_D": 64},
            )
        for cosine, out in itertools.product((False, True), (acc, "bf16")) if full else [(True, "bf16")]:
            yield Variant(
                f"segment {edt} cosine={cosine} out={out}", "segment_kernel",
                {**rows, "tab_ptr": f"*{acc}", "order_ptr": "*i64", "seg_ptr": "*i64", "rows_ptr": "*i64",
                 "out_ptr": f"*{out}"},
                {"D": 1152, "COSINE": cosine, "ACC": acc_tl, "INTERPRET": False, "BLOCK_E": 8, "BLOCK_D": 256},
            )


def compile_variants(arch: int = 90, full: bool = False, verbose: bool = True) -> List[Tuple[str, str]]:
    """Compile the kernel variants for ``cuda:sm_<arch>``; return (name, error) per failure."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_check needs a process without TRITON_INTERPRET=1")
    # triton is optional, and the kernels module must be imported without TRITON_INTERPRET (checked above).
    import triton
    from triton.backends.compiler import GPUTarget  # optional, as above
    from triton.compiler import ASTSource  # optional, as above

    from . import triplet  # after the TRITON_INTERPRET check: the kernels compile for a real target

    target = GPUTarget("cuda", arch, 32)
    failures = []
    for v in _variants(full):
        sig = dict(v.signature)
        sig.update({name: "constexpr" for name in v.constexprs})
        start = time.time()
        try:
            src = ASTSource(fn=getattr(triplet, v.kernel), signature=sig, constexprs=dict(v.constexprs))
            triton.compile(src, target=target, options={"num_warps": 4, "num_stages": 2})
        except Exception as exc:  # report every failing variant, not just the first
            failures.append((v.name, f"{type(exc).__name__}: {exc}"))
            if verbose:
                print(f"FAIL {v.name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        if verbose:
            print(f"ok   {v.name} ({time.time() - start:.1f} s)", flush=True)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--all", action="store_true", help="every dtype/mode/similarity/gradient variant")
    args = parser.parse_args(argv)
    failures = compile_variants(args.arch, args.all)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
