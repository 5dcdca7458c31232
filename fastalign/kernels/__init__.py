"""Kernel sets that implement ``contract.TripletKernels``:

- ``torch_ref``: plain PyTorch, chunked (the reference and fallback);
- ``cpu``: the compiled C++/OpenMP extension (``csrc/cpu``);
- ``triton``: fused Triton kernels (GPU, or CPU under ``TRITON_INTERPRET=1``);
- ``cuda``: the CUDA C++ extension (``csrc/cuda``).

Kernels validate nothing; ``fastalign.ops`` does that once.
"""
