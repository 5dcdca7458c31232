"""Save and load ``AffineTransform`` files (the teacher's own format, so it lives with the teacher).

``.npz`` files are compatible with gLocal's ``transform.npz``: keys
``weights`` (D, D'), ``bias`` (D',), ``mean``, ``std`` (scalars, or (D,) when
standardised per dimension), plus ``temperature`` when calibrated.
``.safetensors`` files hold the same keys (scalars as 0-d tensors).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from safetensors.numpy import save

from ..io.atomic import atomic_write_bytes
from ..io.untrusted import read_safetensors
from .transform import AffineTransform

PathLike = Union[str, os.PathLike]

TRANSFORM_FORMATS = (".npz", ".safetensors")


def save_transform(path: PathLike, transform: AffineTransform) -> None:
    """Write ``transform`` to ``path`` (``.npz`` or ``.safetensors``) atomically."""
    if not isinstance(transform, AffineTransform):
        raise TypeError(f"transform must be an AffineTransform, got {type(transform).__name__}")
    p = Path(path)
    arrays = transform.to_arrays()
    suffix = p.suffix.lower()
    if suffix == ".npz":
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(p, buf.getvalue())
    elif suffix == ".safetensors":
        atomic_write_bytes(p, save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                   metadata={"format": "fastalign.AffineTransform"}))
    else:
        raise ValueError(f"{p}: unknown transform file format {p.suffix!r}; supported: {', '.join(TRANSFORM_FORMATS)}")


def _read_arrays(p: Path) -> Dict[str, np.ndarray]:
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            z = np.load(p, allow_pickle=False)
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(f"{p}: not a readable .npz file ({exc})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"{p}: holds a single array, not an .npz archive of named arrays")
        out = {}
        with z:
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError:
                    # gLocal files written without a bias may hold bias=None as a pickled object.
                    if k == "bias":
                        continue
                    raise ValueError(f"{p}: key {k!r} is a pickled object; only numeric arrays are read") from None
        return out
    if suffix == ".safetensors":
        return read_safetensors(p)  # a corrupt header is a one-line error naming the file
    raise ValueError(f"{p}: unknown transform file format {p.suffix!r}; supported: {', '.join(TRANSFORM_FORMATS)}")


def load_transform(path: PathLike, dim_in: Optional[int] = None) -> AffineTransform:
    """Load a transform saved by ``save_transform`` or by gLocal.

    Args:
        path: a ``.npz`` or ``.safetensors`` file, or a directory holding ``transform.npz``.
        dim_in: optional feature dimension to check against (ValueError
            "transform expects D=..., features have D=..." on mismatch).

    A missing ``bias`` means no bias; missing ``mean``/``std`` mean 0 and 1
    (gLocal's defaults). Shapes are checked against ``weights``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "transform.npz"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: transform file not found")
    t = AffineTransform.from_arrays(_read_arrays(p), name=str(p))
    if dim_in is not None:
        t.check_input_dim(dim_in)
    return t
