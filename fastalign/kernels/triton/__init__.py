"""Fused Triton kernels of the triplet contract (``backend="triton"``).

On a GPU the kernels are compiled and autotuned; with ``TRITON_INTERPRET=1``
set before triton is imported they run on CPU tensors through the Triton
interpreter (tests, CI). See ``launch`` for the gradient modes and memory, and
``triplet`` for the kernels.
"""

from .launch import TritonKernels, TritonOptions

__all__ = ["TritonKernels", "TritonOptions"]
