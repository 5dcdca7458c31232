"""Turn results into strict JSON values (reports must load in any JSON parser)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import numpy as np


def finite_or_none(value: Any) -> Optional[float]:
    """``None`` for NaN/Inf (strict JSON has neither), a plain float otherwise."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """Recursively convert dataclasses, numpy scalars and arrays, tensors, paths and
    non-finite floats into plain JSON values (dict keys become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if type(obj).__module__ == "torch" and hasattr(obj, "tolist"):  # a tensor, without importing torch here
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj
