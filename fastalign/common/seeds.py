"""Seed derivation, written once: every stream in the package is named by integer parts.

Both helpers go through ``numpy.random.SeedSequence``, so (seed, 0) and (seed, 1)
give statistically independent streams, and the same parts give the same stream in
every process and on every platform (unlike ``hash``).
"""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1


def _sequence(parts: tuple) -> np.random.SeedSequence:
    if not parts:
        raise ValueError("a seed derivation needs at least one part")
    return np.random.SeedSequence([int(p) & _MASK for p in parts])


def derive_rng(*parts: int) -> np.random.Generator:
    """A numpy generator (PCG64) for the stream named by ``parts``, e.g. ``(seed, split, shard)``."""
    return np.random.Generator(np.random.PCG64(_sequence(parts)))


def derive_seed(*parts: int) -> int:
    """A 63-bit integer seed (for ``torch.Generator.manual_seed``) for the stream named by ``parts``."""
    return int(_sequence(parts).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
