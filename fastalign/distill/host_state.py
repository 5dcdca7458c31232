"""Process state a resume must restore besides the weights: RNG streams and the
intra-op thread count.

- RNG: torch (CPU and CUDA), numpy's global ``RandomState`` and Python's
  ``random``. The loop itself draws only from torch (dropout) and from
  per-step derived generators (samplers, human triplets, which need no state),
  but a custom student or augmentation may use the other two, so a fresh run
  seeds them from ``train.seed`` (``seed_host_rngs``; otherwise they start from
  OS entropy and no two runs could agree) and a resume restores them.
- Threads: the CPU backend's gradient is bitwise reproducible *for a given
  thread count* (one accumulation buffer per thread, summed in order), and so
  are torch's own CPU reductions. A resume under another count
  (``OMP_NUM_THREADS``, a ``taskset``/cgroup limit, another machine) gives
  ~1e-8 differences from the first step on. The count is saved per rank and
  restored on resume, with a warning.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Dict

import numpy as np
import torch

from ..common.seeds import derive_seed

log = logging.getLogger("fastalign.distill")


def seed_host_rngs(seed: int) -> None:
    """Seed numpy's and Python's global RNGs from the run's seed (torch is seeded by ``setup``)."""
    np.random.seed(derive_seed(seed, 0x4E50) % 2**32)  # legacy seeding takes 32 bits
    random.seed(derive_seed(seed, 0x5059))


def rng_snapshot(device: torch.device) -> Dict[str, torch.Tensor]:
    """Every RNG state of this process as tensors (safetensors stores no Python objects)."""
    snap = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        snap["cuda"] = torch.cuda.get_rng_state(device)
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    snap["numpy"] = torch.from_numpy(keys.astype(np.int64))
    snap["numpy_pos"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    snap["numpy_gauss"] = torch.tensor([cached], dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    snap["python"] = torch.tensor([version, *internal], dtype=torch.int64)
    snap["python_gauss"] = torch.tensor([math.nan if gauss_next is None else gauss_next], dtype=torch.float64)
    return snap


def restore_rng(states: Dict[str, torch.Tensor], rank: int, device: torch.device) -> None:
    """Inverse of ``rng_snapshot`` for ``rank`` (keys ``<kind>.<rank>``); kinds a checkpoint
    written before they were saved lacks are left as they are."""
    def get(kind: str):
        return states.get(f"{kind}.{rank}")

    torch.set_rng_state(get("cpu"))
    if device.type == "cuda" and get("cuda") is not None:
        torch.cuda.set_rng_state(get("cuda"), device)
    if get("numpy") is not None:
        pos, has_gauss = (int(v) for v in get("numpy_pos").tolist())
        np.random.set_state(("MT19937", get("numpy").numpy().astype(np.uint32), pos, has_gauss,
                             float(get("numpy_gauss")[0])))
    if get("python") is not None:
        version, *internal = (int(v) for v in get("python").tolist())
        gauss = float(get("python_gauss")[0])
        random.setstate((version, tuple(internal), None if math.isnan(gauss) else gauss))


def restore_threads(saved: int, source: str) -> int:
    """Set torch's intra-op thread count to ``saved`` (the count the checkpoint was trained
    with); returns the count before, for the caller to put back when training ends."""
    before = torch.get_num_threads()
    if saved and saved != before:
        log.warning("%s was trained with %d intra-op threads, this process has %d: using %d so the resumed "
                    "run stays bitwise identical (CPU reductions depend on the thread count)",
                    source, saved, before, saved)
        torch.set_num_threads(int(saved))
    return before
