"""Named fault points: ``FASTALIGN_FAULT=NAME[:N]`` SIGKILLs the process the N-th time NAME is reached.

Crash safety is a claim about what is on disk when a process dies at an exact
moment (after a temp file is written, before or after its rename, half-way
through a manifest). The fault-injection tests (``tests/test_faults_*.py``)
run a command in a subprocess with ``FASTALIGN_FAULT`` set, let it die at that
point, resume it and compare the result with an uninterrupted run byte for byte.

Points are named ``WHAT.WHEN``; the atomic-write stack offers, for any write
given a ``fault`` tag, ``TAG.written`` (bytes written, not yet fsynced),
``TAG.before_rename`` (fsynced temp file, target untouched) and
``TAG.renamed`` (target replaced, directory not yet fsynced). The triplet store
adds ``manifest.partial`` (half of a manifest's temp file written). ``N``
(default 1) counts hits of that name in this process, so ``shard.renamed:3``
dies right after the third shard is in place.

Unset (the normal case) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from typing import Dict

FAULT_ENV = "FASTALIGN_FAULT"
_hits: Dict[str, int] = {}


def _target() -> tuple:
    """(name, n) from ``$FASTALIGN_FAULT``, or ("", 0) when unset or malformed."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return "", 0
    name, _, count = spec.partition(":")
    try:
        return name, int(count) if count else 1
    except ValueError:
        return "", 0


def fault_point(name: str) -> None:
    """Die by SIGKILL (no cleanup, no atexit, like ``kill -9``) when ``$FASTALIGN_FAULT`` names this hit."""
    want, n = _target()
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == n:
        os.kill(os.getpid(), signal.SIGKILL)
