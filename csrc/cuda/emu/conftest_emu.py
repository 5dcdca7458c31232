"""pytest conftest for the emulated CUDA run (copied next to the rewritten test file by run.sh).

Loads the host-emulated ``fastalign._cuda`` built by run.sh, points the
``cuda`` backend at it for CPU tensors, and stubs the two torch.cuda calls
the wrapper makes (current device / stream), so tests/test_backend_cuda.py's
gpu tests run unchanged apart from device names.
"""

import contextlib
import glob
import importlib.util
import os
import sys

REPO = os.environ["FASTALIGN_REPO"]
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import torch  # noqa: E402

_so = glob.glob(os.path.join(os.environ["FASTALIGN_EMU_BUILD"], "pkg", "_cuda*.so"))[0]
_spec = importlib.util.spec_from_file_location("fastalign._cuda", _so)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
sys.modules["fastalign._cuda"] = _mod

import builtins  # noqa: E402

from fastalign.kernels import cuda as cuda_mod  # noqa: E402
from fastalign.ops import registry  # noqa: E402

torch.cuda.device = lambda d: contextlib.nullcontext()


def _common(emb, triplets):
    return dict(emb=emb.data_ptr(), dtype=cuda_mod._DTYPE_CODES[emb.dtype], n=emb.shape[0], d=emb.shape[1],
                row_stride=emb.stride(0), triplets=triplets.data_ptr(), itype=cuda_mod._INDEX_CODES[triplets.dtype],
                b=triplets.shape[0], device=0, stream=0)


cuda_mod.CudaKernels._common = staticmethod(_common)


def emu_kernels(deterministic):
    k = object.__new__(cuda_mod.CudaKernels)
    k._ext = _mod
    k.deterministic = deterministic
    k.sync = True
    return k


_entry = registry._REGISTRY.entries["cuda"]
_entry.devices = ("cpu", "cuda")
_entry.kernels = emu_kernels(False)
_entry.loaded = True
builtins.emu_kernels = emu_kernels


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: longer tests")
