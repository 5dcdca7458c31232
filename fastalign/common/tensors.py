"""Input conversion shared by the stages: numpy or torch in, checked torch tensors out."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
Device = Union[str, torch.device, None]


def as_emb(x: Any, name: str = "emb", device: Device = None) -> torch.Tensor:
    """Return ``x`` as a 2-D floating tensor (numpy arrays are copied into torch).

    Args:
        x: (N, D) numpy array or tensor of a floating dtype.
        name: what to call ``x`` in error messages.
        device: move to this device; ``None`` keeps a tensor where it is (numpy goes to CPU).
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a floating array, got dtype {x.dtype}")
        # np.array copies, so read-only inputs (e.g. the bundled THINGS arrays) never warn.
        x = torch.from_numpy(np.array(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float32))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column")
    return x if device is None else x.to(device)


def as_index(x: Any, name: str, device: Device = None, width: Optional[int] = None) -> torch.Tensor:
    """Return ``x`` as an int64 tensor of shape (B,) or (B, width)."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
        x = torch.from_numpy(np.array(x, dtype=np.int64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    if width is None and x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if width is not None and (x.dim() != 2 or x.shape[1] != width):
        raise ValueError(f"{name} must have shape (B, {width}), got {tuple(x.shape)}")
    x = x.long()
    return x if device is None else x.to(device)


def as_triplets(x: Any, n: int, device: Device = None, name: str = "triplets") -> torch.Tensor:
    """(B, 3) int64 triplets on ``device``, every index checked to lie in [0, n)."""
    t = as_index(x, name, device, width=3)
    if t.numel() and bool(((t < 0) | (t >= n)).any()):
        row = int(((t < 0) | (t >= n)).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} row {row} = {t[row].tolist()} has an index outside [0, {n}) (emb has N={n} rows)")
    return t


def as_vector(x: Any, name: str, device: Device = None, dtype: Optional[torch.dtype] = torch.float64) -> torch.Tensor:
    """1-D floating tensor (numpy or torch input).

    ``dtype=None`` keeps float32/float64 as they are (sorting float32 is
    cheaper) and casts anything else to float64.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if dtype is None:
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float64
    x = x.to(dtype)
    return x if device is None else x.to(device)
