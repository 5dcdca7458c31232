"""The built-in backends and the order "auto" tries them in.

Each loader imports its kernels lazily; an ImportError or a missing compiled
extension makes the backend unavailable (with the reason) instead of breaking
``import fastalign``.
"""

from __future__ import annotations

import os

from ..kernels.torch_ref import TorchKernels
from .registry import register_backend


def _torch():
    return TorchKernels()


def _cpu():
    from ..kernels.cpu import CpuKernels  # needs the compiled extension fastalign._cpu

    return CpuKernels()


def _triton():
    from ..kernels.triton import TritonKernels  # needs triton (optional), seconds to import

    return TritonKernels()


def _cuda():
    from ..kernels.cuda import CudaKernels  # needs the optional CUDA extension fastalign._cuda

    return CudaKernels()


def _triton_devices():
    # Under TRITON_INTERPRET=1 Triton kernels run on CPU tensors (tests, CI).
    return ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET") == "1" else ("cuda",)


register_backend("torch", ("cpu", "cuda"), _torch)
register_backend("cpu", ("cpu",), _cpu, auto_rank={"cpu": 0})
register_backend("triton", _triton_devices(), _triton, auto_rank={"cuda": 0})
register_backend("cuda", ("cuda",), _cuda, auto_rank={"cuda": 1})
