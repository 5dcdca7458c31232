"""Host side of the Triton backend: ``TritonKernels`` implements the contract.

Gradient modes
--------------
- **atomic** (default): the fused/scatter kernel adds the three row gradients
  of each triplet with ``tl.atomic_add`` into one zeroed (N, D) buffer in the
  accumulation dtype (float32; float64 for float64 inputs). Fast; the order of
  the additions, and so the last bits of dE, vary from run to run.
- **deterministic** (``TritonKernels(deterministic=True)``, or
  ``torch.are_deterministic_algorithms_enabled()`` when ``deterministic`` is
  None): no atomics. The fused kernel writes the loss, ``dsim`` and, from
  ``coef = grad_scale * rowscale * dsim``, a per-triplet table (dot: (B, 3)
  ``coef``; cosine: (B, 9), with the similarities and the three row norms, see
  ``segment_gradient``); the 3B (triplet, slot) entries are stably sorted by
  row with ``torch.argsort(stable=True)``; ``segment_kernel`` then sums each
  row's entries in that order, one program per (unique row, D block), and
  writes the row once. Block shapes are fixed (never autotuned) so the result
  is bitwise identical across runs and processes on the same device.

Memory
------
Besides the outputs the contract asks for, the atomic mode allocates nothing
of size N*D (the (N, D) accumulation-dtype gradient *is* the one buffer) and
O(B) scalars otherwise; the deterministic mode adds O(B): the (B, 3) or (B, 9)
table, the 3B sort order and the row segments.

Can a bf16 dE be produced without the fp32 (N, D) buffer when N*D is huge?
Yes, in deterministic mode only: each output row is reduced by exactly one
program in fp32 registers and stored once, so ``segment_kernel`` can store
straight into a bf16 (N, D) tensor (``TritonKernels.segment_gradient(...,
out_dtype=torch.bfloat16)``): extra memory O(B) plus the bf16 output, rounded
once per element. The atomic mode cannot: many triplets add into the same
element concurrently, and bf16 atomics (not available under the interpreter,
and rounding at every addition on GPUs that have them) would lose the fp32
accumulation the contract promises. The contract's ``fused``/``scatter`` still
return the accumulation dtype; the ops layer casts to ``emb.dtype``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from ..contract import acc_dtype
from . import configs
from .triplet import (
    GRAD_ATOMIC,
    GRAD_NONE,
    GRAD_TABLE,
    TABLE_COLS_COSINE,
    TABLE_COLS_DOT,
    fused_kernel,
    scatter_kernel,
    segment_kernel,
    similarities_kernel,
)

_PRUNE = {"early_config_prune": configs.prune_row_configs}

# Autotuned variants for the atomic mode; reruns during tuning must start from
# a zero gradient buffer, hence reset_to_zero.
_similarities_tuned = triton.autotune(configs.row_configs(), key=["D"], prune_configs_by=_PRUNE)(
    similarities_kernel
)
_fused_tuned = triton.autotune(configs.row_configs(), key=["D"], prune_configs_by=_PRUNE,
                               reset_to_zero=["grad_ptr"])(fused_kernel)
_scatter_tuned = triton.autotune(configs.row_configs(), key=["D"], prune_configs_by=_PRUNE,
                                 reset_to_zero=["grad_ptr"])(scatter_kernel)


@dataclass(frozen=True)
class TritonOptions:
    """Options of the Triton backend.

    Attributes:
        deterministic: True for the bitwise-reproducible segmented gradient,
            False for atomics, None to follow
            ``torch.are_deterministic_algorithms_enabled()`` at each call.
        programs_per_sm: persistent grid size on a GPU is
            ``min(tiles, programs_per_sm * num_SMs)``; each program loops over tiles.
        interpret_programs: the same cap under ``TRITON_INTERPRET=1``; small so
            the tests exercise the persistent loop.
        autotune: tune block shapes per D on first use (GPU); False uses the
            fixed shapes of ``configs.fixed_rows`` (fewer compiles, e.g. tests).
            Deterministic mode always uses the fixed shapes.
    """

    deterministic: Optional[bool] = None
    programs_per_sm: int = 8
    interpret_programs: int = 3
    autotune: bool = True

    def __post_init__(self):
        if self.deterministic not in (None, True, False):
            raise TypeError(f"deterministic must be True, False or None, got {self.deterministic!r}")
        if not isinstance(self.autotune, bool):
            raise TypeError(f"autotune must be a bool, got {self.autotune!r}")
        for name in ("programs_per_sm", "interpret_programs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


_SM_COUNT: Dict[int, int] = {}
# (temperature, grad_scale, dtype, device) -> read-only params tensor; saves a
# host-to-device copy per call in a training loop (grad_scale = 1/B is stable).
_PARAMS: Dict[tuple, torch.Tensor] = {}
_PARAMS_MAX = 256


def _params(temperature: float, grad_scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[temperature, grad_scale] as a tensor: a float kernel argument would be fp32."""
    key = (float(temperature), float(grad_scale), dtype, device)
    t = _PARAMS.get(key)
    if t is None:
        if len(_PARAMS) >= _PARAMS_MAX:
            _PARAMS.clear()
        t = torch.tensor([key[0], key[1]], dtype=dtype, device=device)
        _PARAMS[key] = t
    return t


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _device_ctx(t: torch.Tensor):
    # Triton launches on the current CUDA device; make it the tensor's.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class TritonKernels:
    """Fused Triton kernels implementing ``contract.TripletKernels``.

    Args:
        deterministic: see ``TritonOptions.deterministic``.
        options: all options; ``deterministic`` overrides ``options.deterministic``
            when given.
    """

    name = "triton"

    def __init__(self, deterministic: Optional[bool] = None, options: Optional[TritonOptions] = None):
        options = options or TritonOptions()
        if deterministic is not None:
            options = dataclasses.replace(options, deterministic=deterministic)
        self.options = options

    # ------------------------------------------------------------ helpers

    def _deterministic(self) -> bool:
        if self.options.deterministic is None:
            return torch.are_deterministic_algorithms_enabled()
        return self.options.deterministic

    def _fixed_shapes(self) -> bool:
        """Whether to launch the untuned kernels with ``configs.fixed_rows``."""
        return self._deterministic() or not self.options.autotune

    def _max_programs(self, device: torch.device) -> int:
        if device.type != "cuda":
            return self.options.interpret_programs
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in _SM_COUNT:
            _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        return self.options.programs_per_sm * _SM_COUNT[idx]

    def _grid(self, b: int, device: torch.device, block_t: Optional[int] = None):
        cap = self._max_programs(device)
        if block_t is not None:
            return (min(triton.cdiv(b, block_t), cap),)
        return lambda meta: (min(triton.cdiv(b, meta["BLOCK_T"]), cap),)

    # ------------------------------------------------------------ contract

    def similarities(self, emb: torch.Tensor, triplets: torch.Tensor, cosine: bool) -> torch.Tensor:
        acc = acc_dtype(emb.dtype)
        b, d = triplets.shape[0], emb.shape[1]
        sims = torch.empty(b, 3, dtype=acc, device=emb.device)
        if b == 0:
            return sims
        args = (emb, emb.stride(0), triplets, sims, b)
        meta = dict(D=d, COSINE=bool(cosine), ACC=_tl_acc(emb.dtype))
        with _device_ctx(emb):
            if self._fixed_shapes():
                fixed = configs.fixed_rows(d)
                similarities_kernel[self._grid(b, emb.device, fixed["BLOCK_T"])](*args, **meta, **fixed)
            else:
                _similarities_tuned[self._grid(b, emb.device)](*args, **meta)
        return sims

    def fused(
        self,
        emb: torch.Tensor,
        triplets: torch.Tensor,
        target: Optional[torch.Tensor],
        choice: Optional[torch.Tensor],
        rowscale: Optional[torch.Tensor],
        mode: int,
        cosine: bool,
        temperature: float,
        grad_scale: float,
        want_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acc = acc_dtype(emb.dtype)
        dev = emb.device
        b, d = triplets.shape[0], emb.shape[1]
        loss = torch.empty(b, dtype=acc, device=dev)
        dsim = torch.empty(b, 3, dtype=acc, device=dev)
        deterministic = want_grad and self._deterministic()
        if not want_grad:
            grad = emb.new_empty(0, dtype=acc)
        elif deterministic:
            grad = None  # written by the segmented reduction below
        else:
            grad = torch.zeros(emb.shape, dtype=acc, device=dev)
        if b == 0:
            return loss, dsim, (torch.zeros(emb.shape, dtype=acc, device=dev) if grad is None else grad)
        # Temperature and grad_scale travel in a tensor so float64 keeps its precision.
        params = _params(temperature, grad_scale, acc, dev)
        # Stand-in for unused pointer arguments. Never `params`: autotuning
        # zeroes whatever is passed as grad_ptr before each trial.
        dummy = torch.empty(1, dtype=acc, device=dev)
        cols = TABLE_COLS_COSINE if cosine else TABLE_COLS_DOT
        table = torch.empty(b, cols, dtype=acc, device=dev) if deterministic else dummy
        mode_grad = GRAD_NONE if not want_grad else (GRAD_TABLE if deterministic else GRAD_ATOMIC)
        args = (
            emb, emb.stride(0), triplets,
            dummy if target is None else target,
            triplets if choice is None else choice,
            dummy if rowscale is None else rowscale,
            params, loss, dsim,
            dummy if grad is None or grad.numel() == 0 else grad,
            table, b,
        )
        meta = dict(D=d, MODE=int(mode), COSINE=bool(cosine), HAS_CHOICE=choice is not None,
                    HAS_ROWSCALE=rowscale is not None, GRAD=mode_grad, ACC=_tl_acc(emb.dtype))
        with _device_ctx(emb):
            if self._fixed_shapes():
                fixed = configs.fixed_rows(d)
                fused_kernel[self._grid(b, dev, fixed["BLOCK_T"])](*args, **meta, **fixed)
            else:
                _fused_tuned[self._grid(b, dev)](*args, **meta)
        if deterministic:
            grad = self.segment_gradient(emb, triplets, table, cosine, acc)
        return loss, dsim, grad

    def scatter(self, emb: torch.Tensor, triplets: torch.Tensor, coef: torch.Tensor, cosine: bool) -> torch.Tensor:
        acc = acc_dtype(emb.dtype)
        dev = emb.device
        b, d = triplets.shape[0], emb.shape[1]
        coef = coef.to(acc).contiguous()
        if b == 0:
            return torch.zeros(emb.shape, dtype=acc, device=dev)
        if self._deterministic():
            if cosine:
                # The table needs the norms and similarities: one pass over the rows.
                table = torch.empty(b, TABLE_COLS_COSINE, dtype=acc, device=dev)
                fixed = configs.fixed_rows(d)
                with _device_ctx(emb):
                    scatter_kernel[self._grid(b, dev, fixed["BLOCK_T"])](
                        emb, emb.stride(0), triplets, coef, table, table, b,
                        D=d, COSINE=True, GRAD=GRAD_TABLE, ACC=_tl_acc(emb.dtype), **fixed,
                    )
            else:
                table = coef
            return self.segment_gradient(emb, triplets, table, cosine, acc)
        grad = torch.zeros(emb.shape, dtype=acc, device=dev)
        args = (emb, emb.stride(0), triplets, coef, grad, grad, b)
        meta = dict(D=d, COSINE=bool(cosine), GRAD=GRAD_ATOMIC, ACC=_tl_acc(emb.dtype))
        with _device_ctx(emb):
            if self.options.autotune:
                _scatter_tuned[self._grid(b, dev)](*args, **meta)
            else:
                fixed = configs.fixed_rows(d)
                scatter_kernel[self._grid(b, dev, fixed["BLOCK_T"])](*args, **meta, **fixed)
        return grad

    # ------------------------------------------------------ deterministic

    def segment_gradient(
        self,
        emb: torch.Tensor,
        triplets: torch.Tensor,
        table: torch.Tensor,
        cosine: bool,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """Deterministic (N, D) gradient from a per-triplet coefficient table.

        Args:
            emb: (N, D) embeddings, unit stride along D.
            triplets: (B, 3) int32/int64 row indices, contiguous.
            table: in the accumulation dtype, with ``c = dL/ds`` (pair order
                01, 02, 12). Dot: (B, 3) ``c``, ``dE[a] += c_ab e_b``. Cosine:
                (B, 9) ``[c01, c02, c12, s01, s02, s12, |e0|, |e1|, |e2|]``
                (unclamped norms), ``dE[a] += (c_ab / n_a) (u_b - s_ab u_a)``
                with ``n = max(|e|, COSINE_EPS)``, ``u = e / n`` and no
                ``s u_a`` term where ``|e_a| < COSINE_EPS``.
            cosine: which table this is.
            out_dtype: dtype of the returned gradient. Rows are summed in the
                accumulation dtype either way; a bf16/fp16 ``out_dtype`` needs
                no (N, D) fp32 buffer (rounded once per element).

        Returns:
            (N, D) gradient; rows no triplet touches are 0.
        """
        n, d = emb.shape
        out = torch.zeros(n, d, dtype=out_dtype, device=emb.device)
        if triplets.shape[0] == 0:
            return out
        flat = triplets.reshape(-1)
        # Stable: entries of a row keep triplet order, so the sum order is fixed.
        order = torch.argsort(flat, stable=True)
        rows, counts = torch.unique_consecutive(flat[order], return_counts=True)
        seg = torch.zeros(rows.shape[0] + 1, dtype=torch.int64, device=emb.device)
        torch.cumsum(counts, 0, out=seg[1:])
        fixed = configs.fixed_segment(d)
        grid = (rows.shape[0], triton.cdiv(d, fixed["BLOCK_D"]))
        with _device_ctx(emb):
            segment_kernel[grid](
                emb, emb.stride(0), triplets, table.contiguous(), order, seg, rows, out,
                D=d, COSINE=bool(cosine), ACC=_tl_acc(emb.dtype), INTERPRET=configs.INTERPRET, **fixed,
            )
        return out
