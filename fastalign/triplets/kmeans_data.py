"""The points k-means works on: chunked access, squared norms and distances with bounded memory.

``Points`` wraps an (N, D) float tensor that stays where it is (CPU or GPU, any float
dtype); chunks of at most ``chunk`` rows are moved to the compute device as float32
(and L2-normalised when asked). Squared row norms (N floats) are computed once, so
the distance GEMMs of the init and of every Lloyd iteration do not redo them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch


def chunk_bounds(n: int, size: int) -> Iterator[Tuple[int, int]]:
    """Yield ``(a, b)`` row ranges of at most ``size`` rows covering ``0..n``.

    Args:
        n: number of rows.
        size: rows per chunk (>= 1).
    """
    for a in range(0, n, size):
        yield a, min(n, a + size)


def check_finite(x: torch.Tensor, chunk_size: Optional[int] = None) -> None:
    """Raise ValueError naming the first row with NaN/Inf.

    Chunked because ``torch.isfinite`` makes several full-size temporaries of its input.

    Args:
        x: (N, D) tensor.
        chunk_size: rows per check (None: about 1M elements per chunk).
    """
    chunk_size = chunk_size or max(1, (1 << 20) // max(1, x.shape[1]))
    for a, b in chunk_bounds(x.shape[0], chunk_size):
        bad = ~torch.isfinite(x[a:b]).all(dim=1)
        if bool(bad.any()):
            row = a + int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"embeddings contain NaN or Inf (first at row {row})")


@dataclass
class Points:
    """Rows of ``x`` as k-means sees them.

    Attributes:
        x: (N, D) source tensor (any device, any float dtype).
        device: compute device.
        normalize: L2-normalise rows when they are read.
        chunk: rows per chunk (bounds every temporary to ~chunk * max(k, D) floats).
        sq: (N,) float32 squared norms of the prepared rows, on ``device``.
    """

    x: torch.Tensor
    device: torch.device
    normalize: bool
    chunk: int
    sq: torch.Tensor

    @classmethod
    def build(cls, x: torch.Tensor, device: torch.device, normalize: bool, chunk: int) -> "Points":
        """Wrap ``x`` and compute its squared row norms (one chunked pass).

        Args:
            x: (N, D) float tensor.
            device: compute device.
            normalize: L2-normalise rows when read.
            chunk: rows per chunk.
        """
        p = cls(x, device, normalize, chunk, torch.empty(x.shape[0], dtype=torch.float32, device=device))
        for a, b, xc in p.chunks():
            p.sq[a:b] = torch.linalg.vector_norm(xc, dim=1).square_()
        return p

    @property
    def n(self) -> int:
        """Number of rows."""
        return self.x.shape[0]

    @property
    def d(self) -> int:
        """Number of columns."""
        return self.x.shape[1]

    def prep(self, xc: torch.Tensor) -> torch.Tensor:
        """Move rows to the compute device as float32 (normalised if asked).

        Args:
            xc: (m, D) rows of ``x``.
        """
        xc = xc.to(device=self.device, dtype=torch.float32)
        return torch.nn.functional.normalize(xc, dim=1) if self.normalize else xc

    def chunks(self) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Yield ``(a, b, rows a..b prepared)`` over all rows."""
        for a, b in chunk_bounds(self.n, self.chunk):
            yield a, b, self.prep(self.x[a:b])

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Prepared rows ``idx`` (any device, int64), as an (m, D) float32 tensor on ``device``.

        Args:
            idx: (m,) row indices.
        """
        return self.prep(self.x[idx.to(self.x.device)])

    def subset(self, idx: np.ndarray) -> "Points":
        """A ``Points`` holding prepared copies of rows ``idx`` (for an init on a sample).

        Args:
            idx: (m,) sorted row indices.
        """
        t = torch.from_numpy(idx.astype(np.int64))
        out = torch.empty(len(idx), self.d, dtype=torch.float32, device=self.device)
        for a, b in chunk_bounds(len(idx), self.chunk):
            out[a:b] = self.rows(t[a:b])
        return Points(out, self.device, False, self.chunk, self.sq[t.to(self.device)])

    def mean_variance(self) -> float:
        """Mean over columns of the per-column variance (sklearn's scale for ``tol``).

        Moments are taken about the first row in float64, so a large common offset does
        not cancel away the variance.
        """
        shift = self.prep(self.x[:1]).double()
        s1 = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        s2 = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        for _, _, xc in self.chunks():
            z = xc.double() - shift
            s1 += z.sum(0)
            s2 += z.square().sum(0)
        m1 = s1 / self.n
        return float((s2 / self.n - m1.square()).clamp_min(0).mean())


def sqdist_to(p: Points, a: int, b: int, xc: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor,
              out: torch.Tensor) -> torch.Tensor:
    """Squared distances of rows ``a..b`` to centres ``c`` into ``out`` (one GEMM).

    ``||x||^2 - 2 x c^T + ||c||^2``; clamped at 0 because cancellation can make it
    slightly negative.

    Args:
        p: the points (for their squared norms).
        a: first row of the chunk.
        b: end row of the chunk.
        xc: (b - a, D) prepared rows.
        c: (m, D) float32 centres.
        c_sq: (m,) squared norms of ``c``.
        out: (b - a, m) float32 buffer to write.
    """
    torch.addmm(c_sq[None, :], xc, c.t(), beta=1.0, alpha=-2.0, out=out)
    out += p.sq[a:b, None]
    return out.clamp_min_(0)
