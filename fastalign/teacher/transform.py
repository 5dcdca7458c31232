"""The teacher's affine transform ``z = ((x - mean) / std) @ W + b``.

gLocal standardises features with one scalar mean and std over the whole
feature matrix, then learns ``W`` (D, D') and ``b`` (D',). The forward pass is
``fastalign.affine_transform``, which folds the standardisation into the
weights so the whole transform is one ``addmm``. A calibrated softmax
temperature travels with the transform so that ``probs`` are calibrated.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from ..ops import affine_transform, odd_one_out_probs

ArrayLike = Union[np.ndarray, torch.Tensor]

INIT_SCALE = 1e-3  # gLocal's init: W = 1e-3 * I, b = 1e-3


def _scalar_or_vector(name: str, value, d: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value, dtype=torch.float64)
    t = t.detach().clone()
    if t.dim() == 1 and t.numel() == 1:
        t = t.reshape(())
    if t.dim() == 0 or tuple(t.shape) == (d,):
        return t
    raise ValueError(f"{name} must be a scalar or shape ({d},), got shape {tuple(t.shape)}")


def _check_state_dict(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    # forward skips the per-call std check because std is checked when it is set, and loading
    # sets it: check the incoming values before any of them is copied in.
    for name, rule in (("std", "finite and > 0"), ("mean", "finite"), ("temperature", "finite and > 0")):
        v = state_dict.get(prefix + name)
        if isinstance(v, torch.Tensor):
            ok = bool(torch.isfinite(v).all()) and (name == "mean" or bool((v > 0).all()))
            if not ok:
                raise ValueError(f"the state dict's {name} must be {rule}")
    # State dicts written before ``calibrated`` was saved: a temperature other than 1 was fitted.
    key = prefix + "temperature_calibrated"
    if key not in state_dict and isinstance(state_dict.get(prefix + "temperature"), torch.Tensor):
        state_dict[key] = torch.tensor(float(state_dict[prefix + "temperature"]) != 1.0)


class AffineTransform(nn.Module):
    """``z = ((x - mean) / std) @ W + b`` as a module.

    Args:
        dim_in: input feature dimension D.
        dim_out: output dimension D' (default D). W starts as ``1e-3 * eye(D, D')``.
        bias: learn a bias ``b`` (starts at 1e-3); False for none.
        mean: standardisation mean, a scalar or a (D,) vector.
        std: standardisation std (> 0), a scalar or a (D,) vector.
        temperature: softmax temperature used by ``probs`` (> 0; 1 until calibrated).

    Parameters: ``weight`` (D, D'), ``bias`` (D',) or None. Buffers (float64):
    ``mean``, ``std`` (0-d or (D,)), ``temperature`` (0-d), and the bool
    ``temperature_calibrated`` behind the ``calibrated`` property (whether the
    temperature was fitted).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: Optional[int] = None,
        bias: bool = True,
        mean=0.0,
        std=1.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(dim_in, (int, np.integer)) or dim_in < 1:
            raise ValueError(f"dim_in must be a positive int, got {dim_in!r}")
        dim_out = int(dim_in if dim_out is None else dim_out)
        if dim_out < 1:
            raise ValueError(f"dim_out must be a positive int, got {dim_out!r}")
        self.dim_in = int(dim_in)
        self.dim_out = dim_out
        self.weight = nn.Parameter(INIT_SCALE * torch.eye(self.dim_in, dim_out))
        self.bias = nn.Parameter(torch.full((dim_out,), INIT_SCALE)) if bias else None
        std_t = _scalar_or_vector("std", std, self.dim_in)
        if not bool(torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
            raise ValueError("std must be finite and > 0")
        mean_t = _scalar_or_vector("mean", mean, self.dim_in)
        if not bool(torch.isfinite(mean_t).all()):
            raise ValueError("mean must be finite")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float64))
        self.register_buffer("temperature_calibrated", torch.tensor(False))
        self.set_temperature(temperature, calibrated=False)
        self.register_load_state_dict_pre_hook(_check_state_dict)

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_features(
        cls,
        x: ArrayLike,
        per_dim: bool = False,
        dim_out: Optional[int] = None,
        bias: bool = True,
    ) -> "AffineTransform":
        """A fresh transform whose mean/std standardise ``x``.

        Args:
            x: (N, D) features.
            per_dim: False (gLocal): one scalar mean and std over the whole
                matrix; True: per-dimension mean and std (a constant column gets std 1).
            dim_out: output dimension (default D).
            bias: learn a bias.
        """
        xt = x.detach().to(torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x), dtype=torch.float64)
        if xt.dim() != 2 or xt.shape[0] < 1:
            raise ValueError(f"x must be a non-empty (N, D) matrix, got shape {tuple(xt.shape)}")
        if per_dim:
            mean = xt.mean(0)
            std = xt.std(0, unbiased=False) if xt.shape[0] > 1 else torch.ones(xt.shape[1], dtype=torch.float64)
            std = torch.where(std > 0, std, torch.ones_like(std))
        else:
            mean = xt.mean()
            std = xt.std(unbiased=False) if xt.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
            if not std > 0:
                std = torch.tensor(1.0, dtype=torch.float64)
        return cls(xt.shape[1], dim_out=dim_out, bias=bias, mean=mean, std=std)

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], name: str = "transform") -> "AffineTransform":
        """Build from gLocal-style arrays: ``weights`` (D, D'), optional ``bias`` (D',),
        ``mean``/``std`` (scalar or (D,); default 0/1), optional ``temperature``."""
        if "weights" not in arrays:
            raise ValueError(f"{name}: missing 'weights' (the (D, D') matrix); keys: {sorted(arrays)}")
        w = np.asarray(arrays["weights"])
        if w.ndim != 2 or w.dtype.kind != "f":
            raise ValueError(f"{name}: 'weights' must be a 2-D float array, got shape {w.shape} dtype {w.dtype}")
        d, d_out = w.shape
        b = arrays.get("bias")
        if b is not None:
            b = np.asarray(b)
            if b.shape != (d_out,):
                raise ValueError(f"{name}: 'bias' must have shape ({d_out},) to match weights {w.shape}, got {b.shape}")
        try:
            mean = np.asarray(arrays.get("mean", 0.0), dtype=np.float64)
            std = np.asarray(arrays.get("std", 1.0), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: bad 'mean'/'std': {exc}") from None
        for key, v in (("mean", mean), ("std", std)):
            if v.size != 1 and v.shape != (d,):
                raise ValueError(f"{name}: '{key}' must be a scalar or shape ({d},) to match weights {w.shape}, got {v.shape}")
        temp = float(np.asarray(arrays["temperature"]).reshape(())) if "temperature" in arrays else 1.0
        for key, v in (("weights", w), ("bias", b)):
            if v is not None and not np.isfinite(v).all():
                raise ValueError(f"{name}: '{key}' has NaN or Inf")
        t = cls(d, d_out, bias=b is not None, mean=mean.reshape(()) if mean.size == 1 else mean,
                std=std.reshape(()) if std.size == 1 else std, temperature=temp)
        # float64 weights stay float64 (bit-exact round trips); anything else becomes float32.
        dtype = np.float64 if w.dtype == np.float64 else np.float32
        t.weight = nn.Parameter(torch.from_numpy(np.array(w, dtype=dtype, copy=True)))
        if b is not None:
            t.bias = nn.Parameter(torch.from_numpy(np.array(b, dtype=dtype, copy=True)))
        t.calibrated = "temperature" in arrays
        return t

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """gLocal-compatible arrays: ``weights``, ``bias`` (if any), ``mean``, ``std``,
        and ``temperature`` when calibrated or not 1."""
        out = {"weights": self.weight.detach().cpu().numpy().copy()}
        if self.bias is not None:
            out["bias"] = self.bias.detach().cpu().numpy().copy()
        out["mean"] = self.mean.detach().cpu().numpy().copy()
        out["std"] = self.std.detach().cpu().numpy().copy()
        if self.calibrated or float(self.temperature) != 1.0:
            out["temperature"] = self.temperature.detach().cpu().numpy().copy()
        return out

    @property
    def calibrated(self) -> bool:
        """Whether the temperature was fitted (kept in the ``temperature_calibrated`` buffer, so it
        travels with the temperature through ``state_dict``)."""
        return bool(self.temperature_calibrated)

    @calibrated.setter
    def calibrated(self, value: bool) -> None:
        self.temperature_calibrated.fill_(bool(value))

    # ------------------------------------------------------------ behaviour

    def set_temperature(self, temperature: float, calibrated: bool = True) -> None:
        """Set the softmax temperature used by ``probs`` (> 0)."""
        t = float(temperature)
        if not (t > 0 and np.isfinite(t)):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        self.temperature.fill_(t)
        self.calibrated = bool(calibrated)

    def check_input_dim(self, d: int) -> None:
        """Raise ValueError if features of dimension ``d`` do not fit this transform."""
        if int(d) != self.dim_in:
            raise ValueError(f"transform expects D={self.dim_in}, features have D={int(d)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D') in ``x.dtype``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}; use .transform() for numpy")
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (N, D), got shape {tuple(x.shape)}")
        self.check_input_dim(x.shape[1])
        # std was checked when it was set: no device sync per call.
        return affine_transform(x, self.weight, self.bias, self.mean, self.std, check_std=False)

    @torch.no_grad()
    def transform(self, x: ArrayLike) -> np.ndarray:
        """Transform numpy (or tensor) features without autograd; returns numpy in the input's float dtype."""
        xt = x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))  # copy: x may be read-only
        if not xt.is_floating_point():
            xt = xt.to(torch.float32)
        return self(xt.to(self.weight.device)).cpu().numpy()

    def probs(self, x: torch.Tensor, triplets: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
        """Odd-one-out probabilities ``softmax(s / T)`` (B, 3) of the transformed ``x``
        with this transform's (calibrated) temperature."""
        return odd_one_out_probs(self(x), triplets, temperature=float(self.temperature), backend=backend)

    def extra_repr(self) -> str:
        scope = "scalar" if self.mean.dim() == 0 else "per-dim"
        return (f"dim_in={self.dim_in}, dim_out={self.dim_out}, bias={self.bias is not None}, "
                f"standardisation={scope}, temperature={float(self.temperature):.4g}")
