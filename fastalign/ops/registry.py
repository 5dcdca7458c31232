"""Backend registry: which kernel sets exist, which loaded, and what "auto" picks.

Backends register lazily: a loader runs the first time the backend is asked
for, so ``import fastalign`` never compiles or imports Triton/CUDA code. A
loader that fails leaves the backend unavailable with the reason recorded;
``fastalign.backends()`` reports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..kernels.contract import TripletKernels

ENV_VAR = "FASTALIGN_BACKEND"


@dataclass
class _Entry:
    name: str
    devices: Tuple[str, ...]
    loader: Callable[[], TripletKernels]
    kernels: Optional[TripletKernels] = None
    reason: Optional[str] = None
    loaded: bool = False


@dataclass
class _Registry:
    entries: Dict[str, _Entry] = field(default_factory=dict)
    # Order of preference for "auto" per device type; the fastest measured first.
    auto_order: Dict[str, List[str]] = field(default_factory=dict)


_REGISTRY = _Registry()


def register_backend(
    name: str,
    devices: Tuple[str, ...],
    loader: Callable[[], TripletKernels],
    auto_rank: Optional[Dict[str, int]] = None,
) -> None:
    """Register a backend.

    Args:
        name: the name users pass as ``backend=``.
        devices: device types (``"cpu"``, ``"cuda"``) the kernels accept.
        loader: returns the kernels or raises (ImportError, OSError, RuntimeError)
            with a message saying why the backend is unavailable.
        auto_rank: per device type, the position in "auto"'s order (lower wins).
    """
    _REGISTRY.entries[name] = _Entry(name, tuple(devices), loader)
    for dev, rank in (auto_rank or {}).items():
        order = _REGISTRY.auto_order.setdefault(dev, [])
        if name in order:
            order.remove(name)
        order.insert(min(rank, len(order)), name)


def _load(entry: _Entry) -> Optional[TripletKernels]:
    if not entry.loaded:
        entry.loaded = True
        try:
            entry.kernels = entry.loader()
        except Exception as exc:  # a broken optional backend must not break import
            entry.kernels = None
            entry.reason = f"{type(exc).__name__}: {exc}"
    return entry.kernels


def names() -> List[str]:
    return list(_REGISTRY.entries)


def auto_choice(device_type: str) -> str:
    for name in _REGISTRY.auto_order.get(device_type, []):
        entry = _REGISTRY.entries[name]
        if device_type in entry.devices and _load(entry) is not None:
            return name
    return "torch"


def check_name(backend: Optional[str]) -> None:
    """Refuse a ``backend=`` that names no registered backend, without loading any."""
    if backend is None:
        return
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    if backend != "auto" and backend not in _REGISTRY.entries:
        raise ValueError(f"unknown backend {backend!r}; expected one of {['auto'] + names()}")


def resolve(backend: Optional[str], device: torch.device) -> TripletKernels:
    """Turn ``backend=`` (or ``$FASTALIGN_BACKEND``) into kernels for ``device``."""
    choice = backend if backend is not None else os.environ.get(ENV_VAR, "auto") or "auto"
    if not isinstance(choice, str):
        raise TypeError(f"backend must be a string or None, got {type(choice).__name__}")
    if choice == "auto":
        choice = auto_choice(device.type)
    entry = _REGISTRY.entries.get(choice)
    if entry is None:
        raise ValueError(f"unknown backend {choice!r}; expected one of {['auto'] + names()}")
    if device.type not in entry.devices:
        raise ValueError(
            f"backend {choice!r} runs on {list(entry.devices)} tensors, got a {device.type} tensor"
        )
    kernels = _load(entry)
    if kernels is None:
        raise RuntimeError(f"backend {choice!r} is not available: {entry.reason}")
    return kernels


def backends() -> Dict[str, object]:
    """Report every backend: whether it loaded, why not, and what "auto" picks.

    Returns a dict ``{"backends": {name: {"available", "devices", "reason"}},
    "auto": {device_type: name}}``. Loading is attempted for each backend.
    """
    report = {}
    for name, entry in _REGISTRY.entries.items():
        ok = _load(entry) is not None
        report[name] = {"available": ok, "devices": list(entry.devices), "reason": None if ok else entry.reason}
    auto = {dev: auto_choice(dev) for dev in ("cpu", "cuda")}
    return {"backends": report, "auto": auto}
