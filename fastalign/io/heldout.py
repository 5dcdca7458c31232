"""Held-out triplets must be held out: not the training file, nor mostly its triplets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .resolve import is_bundled
from .triplets import shared_triplets

# A held-out set may share a few triplets with the training set without any leak: people answered
# the same triplet in separate trials (THINGS' test_10 holds 187 repeated rows; split 80/20 by
# triplet, 0.6 % of the held-out rows are also training rows). A copy or a subset of the training
# triplets shares all of them; this share tells the two apart.
LEAK_SHARE = 0.05


def _same_source(a: str, b: str) -> bool:
    if is_bundled(a) or is_bundled(b):
        return a == b
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_held_out(name: str, spec: str, rows: np.ndarray, against: str, against_spec: str,
                   reference: np.ndarray) -> int:
    """ValueError when ``rows`` (``name``) are the triplets the fit learns from (``against``) or mostly
    theirs; returns how many are shared (a few repeated trials are expected). ``spec`` and
    ``against_spec`` are the files (or ``things:KEY``) they came from."""
    if _same_source(spec, against_spec):
        raise ValueError(f"{name} {spec} is the {against} file: its metrics would measure the fit on the "
                         f"triplets it learnt from; give held-out triplets (fastalign split-triplets makes them)")
    shared = shared_triplets(reference, rows)
    if shared >= LEAK_SHARE * len(rows):
        raise ValueError(f"{shared:,} of the {len(rows):,} {name} ({spec}) are also {against} ({against_spec}); "
                         f"held-out triplets must be other triplets (at most {LEAK_SHARE:.0%} shared, as repeated "
                         "trials of one triplet; fastalign split-triplets makes such a split)")
    return shared
