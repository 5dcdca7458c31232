"""Named fault points for the crash tests: ``FASTALIGN_FAULT=NAME[:N]`` (or ``NAME@N``, several
comma-separated) SIGKILLs the process the N-th time NAME is reached (default: the first).

Crash safety is a claim about what is on disk when a process dies at an exact moment (after a
temp file is written, before or after its rename, half-way through a manifest, between two files
of a checkpoint). The fault-injection tests (``tests/test_faults_*.py``,
``tests/test_pipeline_resume.py``) run a command in a subprocess with ``FASTALIGN_FAULT`` set, let
it die at that point, resume it and compare the result with an uninterrupted run byte for byte.
SIGKILL runs no ``finally``, no ``atexit`` and flushes nothing: exactly a power cut or the OOM killer.

Points are named ``WHAT.WHEN``:

- the atomic-write stack, for any write given a ``fault`` tag: ``TAG.written`` (bytes written, not
  yet fsynced), ``TAG.before_rename`` (fsynced temp file, target untouched), ``TAG.renamed``
  (target replaced, directory not yet fsynced);
- the triplet store: ``manifest.partial`` (half of a manifest's temp file written); make-triplets:
  ``kmeans.saved`` (labels saved, ``kmeans.json`` not yet);
- distillation checkpoints (``POINTS``): ``checkpoint.after_model``, ``checkpoint.before_rename``,
  ``checkpoint.after_rename``, ``checkpoint.mid_prune``; ``report.md`` (its temp file half written);
- the pipeline: ``stage.before_record`` (a stage's body done, its ``stage.json`` not written).

Unset (the normal case) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Dict, Tuple

FAULT_ENV = "FASTALIGN_FAULT"
ENV_VAR = FAULT_ENV

# The distillation and pipeline points (the store's are named by the writes' tags).
POINTS = (
    "checkpoint.after_model",
    "checkpoint.before_rename",
    "checkpoint.after_rename",
    "checkpoint.mid_prune",
    "report.md",
    "stage.before_record",
)

_hits: Dict[str, int] = {}


def _parse(spec: str) -> Tuple[Tuple[str, int], ...]:
    """``"a:2,b@3,c"`` -> (("a", 2), ("b", 3), ("c", 1)); malformed parts are ignored."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([^:@\s]+)\s*(?:[:@]\s*(\d+))?\s*", part)
        if m:
            out.append((m.group(1), int(m.group(2) or 1)))
    return tuple(out)


def _wanted(spec: str, name: str, hit: int) -> bool:
    """Whether the ``hit``-th arrival at ``name`` is one that ``spec`` asks to kill."""
    return any(point == name and n == hit for point, n in _parse(spec))


def fault_point(name: str) -> None:
    """SIGKILL this process here when ``$FASTALIGN_FAULT`` names this hit of ``name``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _wanted(spec, name, _hits[name]):
        os.kill(os.getpid(), signal.SIGKILL)
