"""Triton kernels of the triplet contract (``fastalign.kernels.contract``).

Every kernel works on a tile of ``BLOCK_T`` triplets at a time and walks D in
blocks of ``BLOCK_D`` columns, so no (B, 3, D) intermediate ever exists:

1. ``_row_stats`` gathers the three rows of each triplet one D block at a time
   (elementwise multiply-and-sum in the accumulation dtype, never ``tl.dot``:
   see DEVELOPERS.md, "Triton interpreter limits") and returns the three pair
   dots and, for cosine, the three squared norms;
2. ``_objective`` turns the similarities into the per-triplet loss and
   ``dL/ds`` (hard, KL or JSD, exactly as the contract states);
3. for dot similarities ``dE[a] += c_ab e_b`` (``c = dL/ds``); for cosine,
   ``_scatter_rows_cos`` forms each pair's term from the unit rows,
   ``dE[a] += (c_ab / n_a) (u_b - s_ab u_a)`` with ``u = e / n``, exactly 0
   for parallel rows (see ``_scatter_rows_cos`` and ``_grad_sims``);
4. ``_scatter_rows`` / ``_scatter_rows_cos`` walk D a second time and
   atomically add the three row gradients (fp32, or fp64 for fp64 inputs) into
   the zeroed (N, D) buffer, or, in deterministic mode, ``_store_table`` writes
   a per-triplet table (dot: ``[c01, c02, c12]``; cosine: ``[c01, c02, c12,
   s01, s02, s12, |e0|, |e1|, |e2|]``) and ``segment_kernel`` reduces it per
   output row with no atomics.

Index arithmetic is 64-bit: every row index is widened with ``.to(tl.int64)``
before it is multiplied by a stride, so N * D may exceed 2**31.

Scalars that must keep float64 precision (temperature, gradient scale) come in
through a small tensor (``params_ptr``): a Python float argument or literal is
typed float32 by Triton, which would cost the float64 path ~1e-8 relative
error. The only literals used in arithmetic are exact in float32 (0.5, 1, 2).

Loops: the persistent loop over tiles is a ``while`` loop and ``D`` is a
``tl.constexpr`` (the D loop has compile-time bounds); see DEVELOPERS.md for
why a ``for`` loop over runtime bounds cannot run under the interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import contract

# What the fused/scatter kernels do with the row gradients.
GRAD_NONE = 0  # forward only
GRAD_ATOMIC = 1  # atomic add into the (N, D) accumulation-dtype buffer
GRAD_TABLE = 2  # write the coefficient table for the segmented reduction

# Columns of the deterministic mode's per-triplet table (``_store_table``).
TABLE_COLS_DOT = 3
TABLE_COLS_COSINE = 9
_COLS_DOT: tl.constexpr = tl.constexpr(TABLE_COLS_DOT)
_COLS_COS: tl.constexpr = tl.constexpr(TABLE_COLS_COSINE)

MODE_HARD: tl.constexpr = tl.constexpr(contract.MODE_HARD)
MODE_KL: tl.constexpr = tl.constexpr(contract.MODE_KL)
MODE_JSD: tl.constexpr = tl.constexpr(contract.MODE_JSD)
# contract.COSINE_EPS; materialised with tl.full in the accumulation dtype.
COSINE_EPS: tl.constexpr = tl.constexpr(contract.COSINE_EPS)


@triton.jit
def _tile_rows(trip_ptr, tile, B, BLOCK_T: tl.constexpr):
    """Triplet ids of a tile, their mask and the three row indices (int64)."""
    offs_t = tile.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < B
    base = trip_ptr + offs_t * 3
    r0 = tl.load(base, mask=mask_t, other=0).to(tl.int64)
    r1 = tl.load(base + 1, mask=mask_t, other=0).to(tl.int64)
    r2 = tl.load(base + 2, mask=mask_t, other=0).to(tl.int64)
    return offs_t, mask_t, r0, r1, r2


@triton.jit
def _row_stats(emb_ptr, stride, r0, r1, r2, mask_t, D: tl.constexpr, COSINE: tl.constexpr,
               ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pair dots (d01, d02, d12) and squared norms (q0, q1, q2; zeros for dot)."""
    p0 = emb_ptr + r0 * stride
    p1 = emb_ptr + r1 * stride
    p2 = emb_ptr + r2 * stride
    a01 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    a02 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    a12 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    a00 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    a11 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    a22 = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = mask_t[:, None] & (offs_d < D)[None, :]
        x0 = tl.load(p0[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x1 = tl.load(p1[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x2 = tl.load(p2[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        a01 += x0 * x1
        a02 += x0 * x2
        a12 += x1 * x2
        if COSINE:
            a00 += x0 * x0
            a11 += x1 * x1
            a22 += x2 * x2
    return (tl.sum(a01, axis=1), tl.sum(a02, axis=1), tl.sum(a12, axis=1),
            tl.sum(a00, axis=1), tl.sum(a11, axis=1), tl.sum(a22, axis=1))


@triton.jit
def _div_rn(x, y):
    """x / y rounded to nearest. On a GPU an fp32 ``/`` compiles to the
    approximate div.full.f32 (~2 ulp), and ``tl.div_rn`` takes fp32 only; an
    fp64 ``/`` is already div.rn.f64."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def _sqrt_rn(x):
    """sqrt rounded to nearest: fp32 ``tl.sqrt`` is sqrt.approx.ftz.f32 on a GPU."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _similarities(d01, d02, d12, q0, q1, q2, COSINE: tl.constexpr):
    """Similarities and the unclamped norms |e| (ones for dot).

    Cosine uses correctly rounded sqrt and division (also on a GPU) so that
    for D = 1 the norm is exactly |x| and s = x_a x_b / (|x_a| |x_b|) is
    exactly +-1, which the gradient relies on (``_grad_sims``).
    """
    if COSINE:
        eps = tl.full(q0.shape, COSINE_EPS, q0.dtype)  # exact in float64, unlike a literal
        l0 = _sqrt_rn(q0)
        l1 = _sqrt_rn(q1)
        l2 = _sqrt_rn(q2)
        n0 = tl.maximum(l0, eps)
        n1 = tl.maximum(l1, eps)
        n2 = tl.maximum(l2, eps)
        return _div_rn(d01, n0 * n1), _div_rn(d02, n0 * n2), _div_rn(d12, n1 * n2), l0, l1, l2
    one = tl.full(d01.shape, 1.0, d01.dtype)
    return d01, d02, d12, one, one, one


@triton.jit
def _log_or_zero(p):
    """log p where p > 0, else 0: finite, so p * (log p - x) is exactly 0 at p == 0
    (the limit of p log p) and no 0 * inf is ever evaluated."""
    return tl.log(tl.where(p > 0, p, 1.0))


@triton.jit
def _logaddexp(a, b):
    """log(exp a + exp b) for b finite and a possibly -inf."""
    mx = tl.maximum(a, b)
    mn = tl.minimum(a, b)
    return mx + tl.log(1.0 + tl.exp(mn - mx))


@triton.jit
def _objective(s0, s1, s2, offs_t, mask_t, temp, target_ptr, choice_ptr,
               MODE: tl.constexpr, HAS_CHOICE: tl.constexpr):
    """Per-triplet loss and dL/ds (pair order [01, 02, 12]) for one tile."""
    z0 = s0 / temp
    z1 = s1 / temp
    z2 = s2 / temp
    mx = tl.maximum(tl.maximum(z0, z1), z2)
    # log q = (z - max) - log sum exp(z - max), shifted first: z - (max + log sum) would round
    # max + log sum at the magnitude of z and lose log sum (~1) entirely once |z| ~ 1e7 (fp32).
    d0 = z0 - mx
    d1 = z1 - mx
    d2 = z2 - mx
    lsum = tl.log(tl.exp(d0) + tl.exp(d1) + tl.exp(d2))
    lq0 = d0 - lsum
    lq1 = d1 - lsum
    lq2 = d2 - lsum
    q0 = tl.exp(lq0)
    q1 = tl.exp(lq1)
    q2 = tl.exp(lq2)
    if MODE == MODE_HARD:
        if HAS_CHOICE:
            c = tl.load(choice_ptr + offs_t, mask=mask_t, other=0)
        else:
            c = tl.zeros(offs_t.shape, tl.int64)
        loss = -tl.where(c == 0, lq0, tl.where(c == 1, lq1, lq2))
        dz0 = q0 - tl.where(c == 0, 1.0, 0.0)
        dz1 = q1 - tl.where(c == 1, 1.0, 0.0)
        dz2 = q2 - tl.where(c == 2, 1.0, 0.0)
    else:
        base = target_ptr + offs_t * 3
        p0 = tl.load(base, mask=mask_t, other=1.0)
        p1 = tl.load(base + 1, mask=mask_t, other=0.0)
        p2 = tl.load(base + 2, mask=mask_t, other=0.0)
        lp0 = _log_or_zero(p0)
        lp1 = _log_or_zero(p1)
        lp2 = _log_or_zero(p2)
        if MODE == MODE_KL:
            # Terms with p == 0 contribute exactly 0 (lp is finite there).
            loss = p0 * (lp0 - lq0) + p1 * (lp1 - lq1) + p2 * (lp2 - lq2)
            dz0 = q0 - p0
            dz1 = q1 - p1
            dz2 = q2 - p2
        else:
            # log m = logaddexp(log p, log q) - log 2; log q is always finite
            # (taken from log-softmax), so p == 0 never yields 0 * inf.
            ln2 = tl.log(tl.full(s0.shape, 2.0, s0.dtype))
            lm0 = _logaddexp(tl.where(p0 > 0, lp0, float("-inf")), lq0) - ln2
            lm1 = _logaddexp(tl.where(p1 > 0, lp1, float("-inf")), lq1) - ln2
            lm2 = _logaddexp(tl.where(p2 > 0, lp2, float("-inf")), lq2) - ln2
            kl_pm = p0 * (lp0 - lm0) + p1 * (lp1 - lm1) + p2 * (lp2 - lm2)
            kl_qm = q0 * (lq0 - lm0) + q1 * (lq1 - lm1) + q2 * (lq2 - lm2)
            loss = 0.5 * kl_pm + 0.5 * kl_qm
            g0 = 0.5 * (lq0 - lm0)
            g1 = 0.5 * (lq1 - lm1)
            g2 = 0.5 * (lq2 - lm2)
            gq = q0 * g0 + q1 * g1 + q2 * g2
            dz0 = q0 * (g0 - gq)
            dz1 = q1 * (g1 - gq)
            dz2 = q2 * (g2 - gq)
    return loss, dz0 / temp, dz1 / temp, dz2 / temp


@triton.jit
def _grad_sims(s01, s02, s12):
    """The similarities the cosine gradient uses: s, or exactly +-1 where
    |s| is within 4 units of rounding (u = 2**-24, or 2**-53 for fp64) of 1.

    ds_ab/de_a = (u_b - s_ab u_a) / n_a (``_scatter_rows_cos``) is exactly 0
    for parallel rows only if u_b = +-u_a and s_ab = +-1 exactly. For
    e_b = 2**k e_a (any D) u_b = +-u_a exactly (the sums of squares scale by
    4**k, the sqrt and the division by 2**k, all exactly), but
    s = d / (n_a n_b) = q_a / fl(n_a**2) with n_a = fl(sqrt(q_a)), and
    fl(n_a**2) = q_a (1 + d1)**2 (1 + d2), |d| <= u: the quotient lies in
    [1 - 3u, 1 + 3u] and, rounded (spacing u below 1, 2u above), in
    [1 - 3u, 1 + 4u]. Rounding such s to +-1 moves the gradient by at most
    4u |c| / n_a along u_a, less than the rounding error s carries anyway
    (its dots are sums of D products). For D = 1, s is +-1 already.
    """
    if s01.dtype == tl.float64:
        tol = tl.full(s01.shape, 4 * 2.0 ** -53, s01.dtype)
    else:
        tol = tl.full(s01.shape, 4 * 2.0 ** -24, s01.dtype)
    h01 = tl.where(tl.abs(tl.abs(s01) - 1.0) <= tol, tl.where(s01 > 0, 1.0, -1.0), s01)
    h02 = tl.where(tl.abs(tl.abs(s02) - 1.0) <= tol, tl.where(s02 > 0, 1.0, -1.0), s02)
    h12 = tl.where(tl.abs(tl.abs(s12) - 1.0) <= tol, tl.where(s12 > 0, 1.0, -1.0), s12)
    return h01, h02, h12


@triton.jit
def _row_pointers(emb_ptr, stride, grad_ptr, r0, r1, r2, D: tl.constexpr):
    """The three rows of a tile in ``emb`` and in the gradient buffer, which is
    contiguous (N, D); the row indices are int64, so r * D cannot overflow."""
    return (emb_ptr + r0 * stride, emb_ptr + r1 * stride, emb_ptr + r2 * stride,
            grad_ptr + r0 * D, grad_ptr + r1 * D, grad_ptr + r2 * D)


@triton.jit
def _scatter_rows(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, c01, c02, c12,
                  D: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Dot similarities: second pass over D, atomically add c_ab e_b to dE[a]."""
    p0, p1, p2, g0p, g1p, g2p = _row_pointers(emb_ptr, stride, grad_ptr, r0, r1, r2, D)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = mask_t[:, None] & (offs_d < D)[None, :]
        x0 = tl.load(p0[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x1 = tl.load(p1[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x2 = tl.load(p2[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        g0 = c01[:, None] * x1 + c02[:, None] * x2
        g1 = c01[:, None] * x0 + c12[:, None] * x2
        g2 = c02[:, None] * x0 + c12[:, None] * x1
        tl.atomic_add(g0p[:, None] + offs_d[None, :], g0, mask=m, sem="relaxed")
        tl.atomic_add(g1p[:, None] + offs_d[None, :], g1, mask=m, sem="relaxed")
        tl.atomic_add(g2p[:, None] + offs_d[None, :], g2, mask=m, sem="relaxed")


@triton.jit
def _scatter_rows_cos(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, c01, c02, c12, h01, h02, h12,
                      l0, l1, l2, D: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """Cosine similarities: second pass over D, atomically add the row gradients.

    With u = e / n, s_ab = u_a . u_b and dn_a/de_a = u_a,
        ds_ab/de_a = u_b / n_a - (u_a . u_b) u_a / n_a = (u_b - s_ab u_a) / n_a,
    so dE[a] += (c_ab / n_a) (u_b - s_ab u_a) for each other slot b; the
    s_ab u_a term is absent where n_a is clamped at COSINE_EPS (n_a is then a
    constant). Equal to A_ab e_b - B_a e_a with A = c / (n_a n_b),
    B = sum_b c_ab s_ab / n_a**2, but that form cancels two terms of size
    |c| / n_a to rounding noise for (near-)parallel rows, huge for tiny
    norms, where the true gradient is 0. Here each pair's bracket is exactly
    0 for parallel rows: u is a correctly rounded division (so u_b = +-u_a
    exactly) and h = ``_grad_sims`` is exactly +-1. Cost: one division per
    element read (3 per triplet and column).

    h: similarities from ``_grad_sims``; l: the unclamped norms.
    """
    eps = tl.full(l0.shape, COSINE_EPS, l0.dtype)
    n0 = tl.maximum(l0, eps)
    n1 = tl.maximum(l1, eps)
    n2 = tl.maximum(l2, eps)
    k01_0 = c01 / n0
    k02_0 = c02 / n0
    k01_1 = c01 / n1
    k12_1 = c12 / n1
    k02_2 = c02 / n2
    k12_2 = c12 / n2
    # torch's clamp_min passes the gradient where |e| >= eps (NaN compares false).
    h01_0 = tl.where(l0 >= eps, h01, 0.0)
    h02_0 = tl.where(l0 >= eps, h02, 0.0)
    h01_1 = tl.where(l1 >= eps, h01, 0.0)
    h12_1 = tl.where(l1 >= eps, h12, 0.0)
    h02_2 = tl.where(l2 >= eps, h02, 0.0)
    h12_2 = tl.where(l2 >= eps, h12, 0.0)
    p0, p1, p2, g0p, g1p, g2p = _row_pointers(emb_ptr, stride, grad_ptr, r0, r1, r2, D)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = mask_t[:, None] & (offs_d < D)[None, :]
        u0 = _div_rn(tl.load(p0[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC), n0[:, None])
        u1 = _div_rn(tl.load(p1[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC), n1[:, None])
        u2 = _div_rn(tl.load(p2[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC), n2[:, None])
        g0 = k01_0[:, None] * (u1 - h01_0[:, None] * u0) + k02_0[:, None] * (u2 - h02_0[:, None] * u0)
        g1 = k01_1[:, None] * (u0 - h01_1[:, None] * u1) + k12_1[:, None] * (u2 - h12_1[:, None] * u1)
        g2 = k02_2[:, None] * (u0 - h02_2[:, None] * u2) + k12_2[:, None] * (u1 - h12_2[:, None] * u2)
        tl.atomic_add(g0p[:, None] + offs_d[None, :], g0, mask=m, sem="relaxed")
        tl.atomic_add(g1p[:, None] + offs_d[None, :], g1, mask=m, sem="relaxed")
        tl.atomic_add(g2p[:, None] + offs_d[None, :], g2, mask=m, sem="relaxed")


@triton.jit
def _store_table(tab_ptr, offs_t, mask_t, c01, c02, c12):
    """Dot similarities: write the (B, 3) table ``[c01, c02, c12]``."""
    base = tab_ptr + offs_t * _COLS_DOT
    tl.store(base, c01, mask=mask_t)
    tl.store(base + 1, c02, mask=mask_t)
    tl.store(base + 2, c12, mask=mask_t)


@triton.jit
def _store_table_cos(tab_ptr, offs_t, mask_t, c01, c02, c12, h01, h02, h12, l0, l1, l2):
    """Cosine: write the (B, 9) table ``[c01, c02, c12, h01, h02, h12, l0, l1, l2]``
    (h from ``_grad_sims``, l the unclamped norms): all ``segment_kernel``
    needs to form ``_scatter_rows_cos``'s terms for any slot of the triplet."""
    base = tab_ptr + offs_t * _COLS_COS
    tl.store(base, c01, mask=mask_t)
    tl.store(base + 1, c02, mask=mask_t)
    tl.store(base + 2, c12, mask=mask_t)
    tl.store(base + 3, h01, mask=mask_t)
    tl.store(base + 4, h02, mask=mask_t)
    tl.store(base + 5, h12, mask=mask_t)
    tl.store(base + 6, l0, mask=mask_t)
    tl.store(base + 7, l1, mask=mask_t)
    tl.store(base + 8, l2, mask=mask_t)


@triton.jit
def _row_grads(emb_ptr, stride, grad_ptr, tab_ptr, offs_t, r0, r1, r2, mask_t, c01, c02, c12, s01, s02, s12,
               l0, l1, l2, D: tl.constexpr, COSINE: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr,
               BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row gradients of a tile from c = dL/ds: atomics (GRAD 1) or the table (GRAD 2)."""
    if COSINE:
        h01, h02, h12 = _grad_sims(s01, s02, s12)
        if GRAD == 1:
            _scatter_rows_cos(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, c01, c02, c12, h01, h02, h12,
                              l0, l1, l2, D, ACC, BLOCK_T, BLOCK_D)
        else:
            _store_table_cos(tab_ptr, offs_t, mask_t, c01, c02, c12, h01, h02, h12, l0, l1, l2)
    else:
        if GRAD == 1:
            _scatter_rows(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, c01, c02, c12, D, ACC, BLOCK_T, BLOCK_D)
        else:
            _store_table(tab_ptr, offs_t, mask_t, c01, c02, c12)


@triton.jit
def similarities_kernel(emb_ptr, stride, trip_ptr, sims_ptr, B,
                        D: tl.constexpr, COSINE: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """sims[b] = [s01, s02, s12]; persistent over tiles of BLOCK_T triplets."""
    nprog = tl.num_programs(0)
    num_tiles = tl.cdiv(B, BLOCK_T)
    tile = tl.program_id(0)
    while tile < num_tiles:
        offs_t, mask_t, r0, r1, r2 = _tile_rows(trip_ptr, tile, B, BLOCK_T)
        d01, d02, d12, q0, q1, q2 = _row_stats(emb_ptr, stride, r0, r1, r2, mask_t, D, COSINE, ACC,
                                               BLOCK_T, BLOCK_D)
        s01, s02, s12, l0, l1, l2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
        out = sims_ptr + offs_t * 3
        tl.store(out, s01, mask=mask_t)
        tl.store(out + 1, s02, mask=mask_t)
        tl.store(out + 2, s12, mask=mask_t)
        tile += nprog


@triton.jit
def fused_kernel(emb_ptr, stride, trip_ptr, target_ptr, choice_ptr, rowscale_ptr, params_ptr,
                 loss_ptr, dsim_ptr, grad_ptr, tab_ptr, B,
                 D: tl.constexpr, MODE: tl.constexpr, COSINE: tl.constexpr, HAS_CHOICE: tl.constexpr,
                 HAS_ROWSCALE: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Loss, dL/ds and (GRAD) the row gradients, one read of the rows per pass.

    params_ptr holds [temperature, grad_scale] in the accumulation dtype. The
    row gradient of triplet b is scaled by grad_scale * rowscale[b].
    """
    temp = tl.load(params_ptr)
    grad_scale = tl.load(params_ptr + 1)
    nprog = tl.num_programs(0)
    num_tiles = tl.cdiv(B, BLOCK_T)
    tile = tl.program_id(0)
    while tile < num_tiles:
        offs_t, mask_t, r0, r1, r2 = _tile_rows(trip_ptr, tile, B, BLOCK_T)
        d01, d02, d12, q0, q1, q2 = _row_stats(emb_ptr, stride, r0, r1, r2, mask_t, D, COSINE, ACC,
                                               BLOCK_T, BLOCK_D)
        s01, s02, s12, l0, l1, l2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
        loss, c01, c02, c12 = _objective(s01, s02, s12, offs_t, mask_t, temp, target_ptr, choice_ptr,
                                         MODE, HAS_CHOICE)
        tl.store(loss_ptr + offs_t, loss, mask=mask_t)
        out = dsim_ptr + offs_t * 3
        tl.store(out, c01, mask=mask_t)
        tl.store(out + 1, c02, mask=mask_t)
        tl.store(out + 2, c12, mask=mask_t)
        if GRAD != 0:
            scale = tl.zeros(c01.shape, c01.dtype) + grad_scale
            if HAS_ROWSCALE:
                scale = scale * tl.load(rowscale_ptr + offs_t, mask=mask_t, other=0.0)
            _row_grads(emb_ptr, stride, grad_ptr, tab_ptr, offs_t, r0, r1, r2, mask_t, c01 * scale, c02 * scale,
                       c12 * scale, s01, s02, s12, l0, l1, l2, D, COSINE, GRAD, ACC, BLOCK_T, BLOCK_D)
        tile += nprog


@triton.jit
def scatter_kernel(emb_ptr, stride, trip_ptr, coef_ptr, grad_ptr, tab_ptr, B,
                   D: tl.constexpr, COSINE: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row gradients for a given (B, 3) coef = dL/ds (GRAD 1: atomics, 2: table)."""
    nprog = tl.num_programs(0)
    num_tiles = tl.cdiv(B, BLOCK_T)
    tile = tl.program_id(0)
    while tile < num_tiles:
        offs_t, mask_t, r0, r1, r2 = _tile_rows(trip_ptr, tile, B, BLOCK_T)
        base = coef_ptr + offs_t * 3
        c01 = tl.load(base, mask=mask_t, other=0.0)
        c02 = tl.load(base + 1, mask=mask_t, other=0.0)
        c12 = tl.load(base + 2, mask=mask_t, other=0.0)
        if COSINE:
            # Cosine needs the norms and similarities: one extra pass over D.
            d01, d02, d12, q0, q1, q2 = _row_stats(emb_ptr, stride, r0, r1, r2, mask_t, D, COSINE, ACC,
                                                   BLOCK_T, BLOCK_D)
            s01, s02, s12, l0, l1, l2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
        else:
            s01, s02, s12, l0, l1, l2 = c01, c02, c12, c01, c02, c12  # unused
        _row_grads(emb_ptr, stride, grad_ptr, tab_ptr, offs_t, r0, r1, r2, mask_t, c01, c02, c12, s01, s02, s12,
                   l0, l1, l2, D, COSINE, GRAD, ACC, BLOCK_T, BLOCK_D)
        tile += nprog


@triton.jit
def _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md, acc, n_r, own_r, u_r,
                   COSINE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """Add BLOCK_E sorted entries (triplet, slot) of one output row r to acc.

    Cosine (``_scatter_rows_cos``): entry (b, s) adds, for both other slots o,
    (c_so / n_r) (u_o - h_so u_r), without the h term when n_r is clamped
    (own_r False); n_r, u_r = e_r / n_r and own_r are the program's.
    """
    offs_e = e + tl.arange(0, BLOCK_E)
    me = offs_e < end
    ent = tl.load(order_ptr + offs_e, mask=me, other=0).to(tl.int64)
    b = ent // 3
    s = ent - b * 3
    # The other two slots of slot s, and the pair index of (s, o) = s + o - 1.
    o1 = tl.where(s == 0, 1, 0)
    o2 = tl.where(s == 2, 1, 2)
    r1 = tl.load(trip_ptr + b * 3 + o1, mask=me, other=0).to(tl.int64)
    r2 = tl.load(trip_ptr + b * 3 + o2, mask=me, other=0).to(tl.int64)
    m = me[:, None] & md[None, :]
    x1 = tl.load(emb_ptr + r1[:, None] * stride + offs_d[None, :], mask=m, other=0.0).to(ACC)
    x2 = tl.load(emb_ptr + r2[:, None] * stride + offs_d[None, :], mask=m, other=0.0).to(ACC)
    if COSINE:
        row = tab_ptr + b * _COLS_COS
        c1 = tl.load(row + (s + o1 - 1), mask=me, other=0.0)
        c2 = tl.load(row + (s + o2 - 1), mask=me, other=0.0)
        h1 = tl.where(own_r, tl.load(row + 3 + (s + o1 - 1), mask=me, other=0.0), 0.0)
        h2 = tl.where(own_r, tl.load(row + 3 + (s + o2 - 1), mask=me, other=0.0), 0.0)
        eps = tl.full(c1.shape, COSINE_EPS, c1.dtype)
        n1 = tl.maximum(tl.load(row + 6 + o1, mask=me, other=1.0), eps)
        n2 = tl.maximum(tl.load(row + 6 + o2, mask=me, other=1.0), eps)
        k1 = c1 / n_r
        k2 = c2 / n_r
        u1 = _div_rn(x1, n1[:, None])
        u2 = _div_rn(x2, n2[:, None])
        acc += k1[:, None] * (u1 - h1[:, None] * u_r[None, :]) + k2[:, None] * (u2 - h2[:, None] * u_r[None, :])
    else:
        c1 = tl.load(tab_ptr + b * _COLS_DOT + (s + o1 - 1), mask=me, other=0.0)
        c2 = tl.load(tab_ptr + b * _COLS_DOT + (s + o2 - 1), mask=me, other=0.0)
        acc += c1[:, None] * x1 + c2[:, None] * x2
    return acc


@triton.jit
def _round_to_bf16(x):
    """fp32 x rounded to the nearest bf16 value (ties to even), still as fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    # NaN payloads could carry into the sign bit: keep NaN as it is.
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def segment_kernel(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, seg_ptr, rows_ptr, out_ptr,
                   D: tl.constexpr, COSINE: tl.constexpr, ACC: tl.constexpr, INTERPRET: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
    """Deterministic gradient: one program per (unique row, D block), no atomics.

    ``order`` lists the 3B entries ``3 b + slot`` stably sorted by row;
    entries ``seg[i] .. seg[i+1]`` belong to row ``rows[i]``. The program sums
    them in that fixed order in ACC registers and writes the row once, in
    ``out``'s dtype, so the result is bitwise reproducible and ``out`` may be
    bf16/fp16 without any fp32 (N, D) buffer.
    """
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    start = tl.load(seg_ptr + pid_r)
    end = tl.load(seg_ptr + pid_r + 1)
    r = tl.load(rows_ptr + pid_r).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < D
    acc = tl.zeros([BLOCK_E, BLOCK_D], ACC)
    if COSINE:
        # Row r's unclamped norm, from its first entry (every triplet that
        # holds r computed the same value), and its unit row.
        ent = tl.load(order_ptr + start).to(tl.int64)
        b0 = ent // 3
        l_r = tl.load(tab_ptr + b0 * _COLS_COS + 6 + (ent - b0 * 3))
        eps = tl.full(l_r.shape, COSINE_EPS, l_r.dtype)
        n_r = tl.maximum(l_r, eps)
        own_r = l_r >= eps  # the s u_r term exists (NaN compares false)
        xr = tl.load(emb_ptr + r * stride + offs_d, mask=md, other=0.0).to(ACC)
        u_r = _div_rn(xr, n_r)
    else:
        n_r = tl.full([], 1.0, ACC)
        own_r = False
        u_r = tl.zeros([BLOCK_D], ACC)
    if INTERPRET:
        # The interpreter cannot run range() over loaded bounds (DEVELOPERS.md).
        e = start
        while e < end:
            acc = _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md, acc, n_r,
                                 own_r, u_r, COSINE, ACC, BLOCK_E)
            e += BLOCK_E
    else:
        for e in range(start, end, BLOCK_E):
            acc = _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md, acc, n_r,
                                 own_r, u_r, COSINE, ACC, BLOCK_E)
    g = tl.sum(acc, axis=0)
    if INTERPRET:
        if out_ptr.dtype.element_ty == tl.bfloat16:
            # The interpreter's fp32 -> bf16 cast truncates; round to nearest
            # even here so the cast below is exact (DEVELOPERS.md).
            g = _round_to_bf16(g.to(tl.float32))
    tl.store(out_ptr + r * D + offs_d, g.to(out_ptr.dtype.element_ty), mask=md)
