"""Reading files a user hands us: plain arrays only, and one clear line naming the file when refused.

Every reader of a user's ``.npy``, ``.npz``, ``.pt`` or ``.safetensors`` file
goes through these functions, so that

- nothing pickled is ever unpickled (``allow_pickle=False``, ``weights_only=True``);
- a file that holds Python objects or code is refused as such. In particular
  torch's "Weights only load failed ... re-running with weights_only=False
  will likely succeed" is never passed on: that advice would have the user
  run the code in an untrusted file;
- a damaged file (truncated, a corrupt header, not the format its suffix
  says) gives ``UnreadableFileError`` naming the file, not a library traceback.

Both errors are ``ValueError`` subclasses, so existing ``except ValueError``
handlers (the CLI's) print them as one line.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as _st_load_numpy
from safetensors.torch import load_file as _st_load_torch

PathLike = Union[str, os.PathLike]

# numpy's message for an object array met with allow_pickle=False; any other file that
# is neither .npy nor zip numpy calls "pickled (object) data", so that case looks at the bytes.
_OBJECT_ARRAY_HINT = "Object arrays"
_PICKLE_HINT = "pickled"
_PICKLE_START = b"\x80"  # the PROTO opcode every pickle of protocol >= 2 starts with


class RefusedFileError(ValueError):
    """The file holds Python objects or code (pickle); fastalign reads plain arrays only."""


class UnreadableFileError(ValueError):
    """The file is damaged or not in the format its suffix says."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _refused(path: PathLike, what: str = "") -> RefusedFileError:
    where = f" (array {what!r})" if what else ""
    return RefusedFileError(f"{path}: contains Python objects or code{where}, not plain numeric arrays; refused "
                            "(fastalign never unpickles a file; save it with plain arrays, e.g. np.save of a numeric array)")


def _starts_like_pickle(path: PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(1) == _PICKLE_START
    except OSError:
        return False


def _numpy_error(path: PathLike, exc: BaseException, kind: str, key: str = "") -> ValueError:
    msg = str(exc) if isinstance(exc, ValueError) else ""
    if _OBJECT_ARRAY_HINT in msg or (_PICKLE_HINT in msg and _starts_like_pickle(path)):
        return _refused(path, key)
    if _PICKLE_HINT in msg:
        return UnreadableFileError(f"{path}: not a {kind} file (no {kind} header)")
    return UnreadableFileError(f"{path}: not a readable {kind} file ({_one_line(exc)})")


def load_npy(path: PathLike) -> np.ndarray:
    """The array in a ``.npy`` file; object arrays and pickles are refused."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _numpy_error(path, exc, ".npy") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive under an .npy name
        arr.close()
        raise UnreadableFileError(f"{path}: is an .npz archive, not a single .npy array")
    return arr


def load_npz(path: PathLike, keys: Optional[Sequence[str]] = None, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
    """``{name: array}`` of an ``.npz`` (only ``keys`` when given; absent keys are left out).

    ``allow_pickle`` exists for one caller only (``import-triplets --allow-pickle``, the
    user's explicit choice for a file they trust); everything else reads plain arrays.
    """
    try:
        z = np.load(path, allow_pickle=allow_pickle)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _numpy_error(path, exc, ".npz") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UnreadableFileError(f"{path}: holds a single array, not an .npz archive of named arrays")
    out = {}
    with z:
        for k in z.files if keys is None else [k for k in keys if k in z.files]:
            try:
                out[k] = z[k]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise _numpy_error(path, exc, ".npz", k) from None
    return out


def torch_load(path: PathLike):
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise _refused(path) from None
        raise UnreadableFileError(f"{path}: not a readable torch file ({_one_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnreadableFileError(f"{path}: not a readable torch file ({_one_line(exc)})") from None


def read_safetensors(path: PathLike, as_torch: bool = False) -> Dict[str, object]:
    """``{name: array}`` of a ``.safetensors`` file (numpy arrays, or CPU tensors with ``as_torch``).

    A corrupt or truncated header (``SafetensorError: HeaderTooLarge``,
    ``MetadataIncompleteBuffer``, ...) becomes ``UnreadableFileError`` naming the file.
    """
    try:
        return dict(_st_load_torch(str(path)) if as_torch else _st_load_numpy(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise UnreadableFileError(f"{path}: not a readable .safetensors file ({_one_line(exc)}); "
                                  "it is truncated, corrupt or not a safetensors file") from None
