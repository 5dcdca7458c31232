"""The content fingerprint of a ``make-triplets`` run: what a resume must find unchanged.

A resumed run keeps the shards already written and makes the rest; if
anything that decides their bytes had changed in between, the store would mix
two teachers (shards ``0..k`` old, the rest new) and still open as complete.
So rank 0 records in ``run.json``, besides the content options
(``options.content_options``):

- ``inputs``: for the embeddings, the transform, the labels, the category
  matrix and the file names, the blake2b digest and size of the full bytes of the file each names
  (a bundled ``things:KEY`` input: of its bundled file), hashed once at start;
- ``execution``: every setting outside the options that can change the bytes:
  the similarity backend as resolved (``auto`` and ``$FASTALIGN_BACKEND``
  included: resuming cpu -> torch changed fp16 similarities in 34 shards),
  the device type and, on a GPU, its name, ``label_batch`` (an autotuned GPU
  kernel may pick its reduction order by batch shape), and the torch and
  fastalign versions.

A resume, and every other rank, recomputes the fingerprint and is refused
when it differs, naming each difference (``fingerprint_diff``). Options
outside both lists cannot change a byte (``options.RUNTIME_OPTIONS``).

blake2b (``fastalign.io.atomic.file_checksum``) hashes about 1 GB/s on one
core, so the fingerprint of ImageNet-sized CLIP features (1.4 GB) costs about
1.5 s once per run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .._version import __version__
from ..datasets.things import ROOT as THINGS_ROOT
from ..io.atomic import HASH_NAME, file_checksum
from ..io.resolve import feature_path, is_bundled
from ..ops.registry import ENV_VAR as BACKEND_ENV
from ..ops.registry import auto_choice
from .options import GenerateOptions

# The bundled files behind ``--labels things``, ``--categories things`` and ``--file-names things``
# (fastalign.datasets.things).
_BUNDLED = {"labels": "concepts/category_mat_manual.tsv", "categories": "concepts/category_mat_manual.tsv",
            "file_names": "concepts/unique_id.txt"}


def _input_file(role: str, spec: str) -> Path:
    """The one file whose bytes decide input ``role`` (the loaders have already checked it exists)."""
    if role == "embeddings":
        return feature_path(spec)
    if is_bundled(spec):
        return THINGS_ROOT / _BUNDLED[role]
    p = Path(spec)
    return p / "transform.npz" if role == "transform" and p.is_dir() else p


def _file_record(role: str, spec: str) -> Dict[str, Any]:
    f = _input_file(role, spec)
    return {"spec": str(spec), "file": str(f), "bytes": f.stat().st_size, HASH_NAME: file_checksum(f)}


def resolved_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend name the similarity op will use on ``device`` (what ``ops.registry.resolve`` picks)."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto") or "auto"
    return auto_choice(device.type) if choice == "auto" else choice


def run_fingerprint(o: GenerateOptions, device: torch.device) -> Dict[str, Any]:
    """``{"inputs": ..., "execution": ...}`` of this run (see the module docstring)."""
    specs = {"embeddings": o.embeddings, "transform": o.transform, "labels": o.labels, "categories": o.categories,
             "file_names": o.file_names}
    inputs = {role: _file_record(role, spec) for role, spec in specs.items() if spec}
    execution = {
        "backend": resolved_backend(o.backend, device),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "label_batch": o.label_batch,
        "torch": torch.__version__,
        "fastalign": __version__,
    }
    return {"inputs": inputs, "execution": execution}


def input_digests(fingerprint: Dict[str, Any]) -> Dict[str, str]:
    """``{role: digest}``: what a store's meta records about the inputs it was made from."""
    return {role: rec[HASH_NAME] for role, rec in fingerprint["inputs"].items()}


def _short(digest: Any) -> str:
    return f"{digest[:12]}..." if isinstance(digest, str) else repr(digest)


def fingerprint_diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """One line per difference between two fingerprints, empty when they are equal."""
    out = []
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    for role in sorted(set(old_in) | set(new_in)):
        a, b = old_in.get(role), new_in.get(role)
        if a is None or b is None:
            out.append(f"{role}: {'none' if a is None else a['spec']} -> {'none' if b is None else b['spec']}")
        elif a.get(HASH_NAME) != b.get(HASH_NAME):
            out.append(f"{role}: the content of {b['file']} changed ({HASH_NAME} {_short(a.get(HASH_NAME))} -> "
                       f"{_short(b.get(HASH_NAME))}, {a.get('bytes')} -> {b.get('bytes')} bytes)")
    old_ex, new_ex = old.get("execution", {}), new.get("execution", {})
    for key in sorted(set(old_ex) | set(new_ex)):
        if old_ex.get(key) != new_ex.get(key):
            out.append(f"{key}: {old_ex.get(key)!r} -> {new_ex.get(key)!r}")
    return out
