"""Fault injection for the crash tests: ``FASTALIGN_FAULT=<point>[@<n>]``.

Code that must survive a ``kill -9`` at a given moment calls
``fault_point("name")`` there. When the environment variable
``FASTALIGN_FAULT`` names that point, the process SIGKILLs itself (no
``finally``, no ``atexit``, no flush: exactly what a power cut or the OOM
killer does). ``name@n`` fires on the n-th time the point is reached (1-based),
so a test can kill the second checkpoint, not the first. Several points may be
given, comma-separated. Unset (the normal case), a call costs one dict lookup.

Named points (``POINTS``) and where they are called:

- ``checkpoint.after_model``: ``model.safetensors`` written, ``optim`` not yet;
- ``checkpoint.before_rename``: every file of the new checkpoint written, not renamed into place;
- ``checkpoint.after_rename``: the checkpoint in place, older ones not yet pruned;
- ``checkpoint.mid_prune``: an old checkpoint moved aside, not yet deleted;
- ``report.md``: ``report.md`` half written (its temp file exists);
- ``stage.before_record``: a pipeline stage's body done, its ``stage.json`` not written.

Higher layers may add their own names (``make-triplets``: ``triplets.*``); the
function accepts any name.
"""

from __future__ import annotations

import os
import signal
from typing import Dict

ENV_VAR = "FASTALIGN_FAULT"

POINTS = (
    "checkpoint.after_model",
    "checkpoint.before_rename",
    "checkpoint.after_rename",
    "checkpoint.mid_prune",
    "report.md",
    "stage.before_record",
)

_hits: Dict[str, int] = {}


def _wanted(spec: str, name: str, hit: int) -> bool:
    for part in spec.split(","):
        point, _, nth = part.strip().partition("@")
        if point == name and (not nth or int(nth) == hit):
            return True
    return False


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``$FASTALIGN_FAULT`` names ``name`` (see the module docstring)."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _wanted(spec, name, _hits[name]):
        os.kill(os.getpid(), signal.SIGKILL)
