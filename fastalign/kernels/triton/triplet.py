"""Triton kernels of the triplet contract (``fastalign.kernels.contract``).

Every kernel works on a tile of ``BLOCK_T`` triplets at a time and walks D in
blocks of ``BLOCK_D`` columns, so no (B, 3, D) intermediate ever exists:

1. ``_row_stats`` gathers the three rows of each triplet one D block at a time
   (elementwise multiply-and-sum in the accumulation dtype, never ``tl.dot``:
   see DEVELOPERS.md, "Triton interpreter limits") and returns the three pair
   dots and, for cosine, the three squared norms;
2. ``_objective`` turns the similarities into the per-triplet loss and
   ``dL/ds`` (hard, KL or JSD, exactly as the contract states);
3. ``_pair_coefs`` turns ``c = dL/ds`` into per-row coefficients so that
   ``dE[a] += A_ab e_b - Bself_a e_a`` (dot: ``A = c``, ``Bself = 0``);
4. ``_scatter_rows`` walks D a second time and atomically adds the three row
   gradients (fp32, or fp64 for fp64 inputs) into the zeroed (N, D) buffer, or,
   in deterministic mode, the coefficients are written to a (B, 6) table and
   ``segment_kernel`` reduces them per output row with no atomics.

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
GRAD_TABLE = 2  # write the (B, 6) coefficient table for the segmented reduction

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
def _similarities(d01, d02, d12, q0, q1, q2, COSINE: tl.constexpr):
    """Similarities and the clamped norms (ones for dot)."""
    if COSINE:
        eps = tl.full(q0.shape, COSINE_EPS, q0.dtype)  # exact in float64, unlike a literal
        n0 = tl.maximum(tl.sqrt(q0), eps)
        n1 = tl.maximum(tl.sqrt(q1), eps)
        n2 = tl.maximum(tl.sqrt(q2), eps)
        return d01 / (n0 * n1), d02 / (n0 * n2), d12 / (n1 * n2), n0, n1, n2
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
    lse = mx + tl.log(tl.exp(z0 - mx) + tl.exp(z1 - mx) + tl.exp(z2 - mx))
    lq0 = z0 - lse
    lq1 = z1 - lse
    lq2 = z2 - lse
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
def _pair_coefs(c01, c02, c12, s01, s02, s12, n0, n1, n2, q0, q1, q2, COSINE: tl.constexpr):
    """Per-row gradient coefficients: dE[a] += A_ab e_b - Bself_a e_a.

    cosine: ds_ab/de_a = e_b / (n_a n_b) - s_ab e_a / n_a**2; the second term
    vanishes where the norm is clamped (n treated as a constant there).
    """
    if COSINE:
        eps = tl.full(q0.shape, COSINE_EPS, q0.dtype)
        a01 = c01 / (n0 * n1)
        a02 = c02 / (n0 * n2)
        a12 = c12 / (n1 * n2)
        b0 = tl.where(q0 >= eps * eps, (c01 * s01 + c02 * s02) / (n0 * n0), 0.0)
        b1 = tl.where(q1 >= eps * eps, (c01 * s01 + c12 * s12) / (n1 * n1), 0.0)
        b2 = tl.where(q2 >= eps * eps, (c02 * s02 + c12 * s12) / (n2 * n2), 0.0)
        return a01, a02, a12, b0, b1, b2
    zero = tl.zeros(c01.shape, c01.dtype)
    return c01, c02, c12, zero, zero, zero


@triton.jit
def _scatter_rows(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, a01, a02, a12, b0, b1, b2,
                  D: tl.constexpr, COSINE: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Second pass over D: atomically add the three row gradients of a tile."""
    p0 = emb_ptr + r0 * stride
    p1 = emb_ptr + r1 * stride
    p2 = emb_ptr + r2 * stride
    # The gradient buffer is contiguous (N, D); r * D is 64-bit.
    g0p = grad_ptr + r0 * D
    g1p = grad_ptr + r1 * D
    g2p = grad_ptr + r2 * D
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        m = mask_t[:, None] & (offs_d < D)[None, :]
        x0 = tl.load(p0[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x1 = tl.load(p1[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        x2 = tl.load(p2[:, None] + offs_d[None, :], mask=m, other=0.0).to(ACC)
        g0 = a01[:, None] * x1 + a02[:, None] * x2
        g1 = a01[:, None] * x0 + a12[:, None] * x2
        g2 = a02[:, None] * x0 + a12[:, None] * x1
        if COSINE:
            g0 -= b0[:, None] * x0
            g1 -= b1[:, None] * x1
            g2 -= b2[:, None] * x2
        tl.atomic_add(g0p[:, None] + offs_d[None, :], g0, mask=m, sem="relaxed")
        tl.atomic_add(g1p[:, None] + offs_d[None, :], g1, mask=m, sem="relaxed")
        tl.atomic_add(g2p[:, None] + offs_d[None, :], g2, mask=m, sem="relaxed")


@triton.jit
def _store_table(tab_ptr, offs_t, mask_t, a01, a02, a12, b0, b1, b2):
    """Write the (B, 6) coefficient table [A01, A02, A12, B0, B1, B2]."""
    base = tab_ptr + offs_t * 6
    tl.store(base, a01, mask=mask_t)
    tl.store(base + 1, a02, mask=mask_t)
    tl.store(base + 2, a12, mask=mask_t)
    tl.store(base + 3, b0, mask=mask_t)
    tl.store(base + 4, b1, mask=mask_t)
    tl.store(base + 5, b2, mask=mask_t)


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
        s01, s02, s12, n0, n1, n2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
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
        s01, s02, s12, n0, n1, n2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
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
            a01, a02, a12, b0, b1, b2 = _pair_coefs(c01 * scale, c02 * scale, c12 * scale, s01, s02, s12,
                                                    n0, n1, n2, q0, q1, q2, COSINE)
            if GRAD == 1:
                _scatter_rows(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, a01, a02, a12, b0, b1, b2,
                              D, COSINE, ACC, BLOCK_T, BLOCK_D)
            else:
                _store_table(tab_ptr, offs_t, mask_t, a01, a02, a12, b0, b1, b2)
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
            s01, s02, s12, n0, n1, n2 = _similarities(d01, d02, d12, q0, q1, q2, COSINE)
            a01, a02, a12, b0, b1, b2 = _pair_coefs(c01, c02, c12, s01, s02, s12, n0, n1, n2, q0, q1, q2,
                                                    COSINE)
        else:
            a01, a02, a12 = c01, c02, c12
            b0 = tl.zeros(c01.shape, c01.dtype)
            b1 = b0
            b2 = b0
        if GRAD == 1:
            _scatter_rows(emb_ptr, stride, grad_ptr, r0, r1, r2, mask_t, a01, a02, a12, b0, b1, b2,
                          D, COSINE, ACC, BLOCK_T, BLOCK_D)
        else:
            _store_table(tab_ptr, offs_t, mask_t, a01, a02, a12, b0, b1, b2)
        tile += nprog


@triton.jit
def _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md, acc, selfc,
                   COSINE: tl.constexpr, ACC: tl.constexpr, BLOCK_E: tl.constexpr):
    """Add BLOCK_E sorted entries (triplet, slot) of one output row to acc."""
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
    c1 = tl.load(tab_ptr + b * 6 + (s + o1 - 1), mask=me, other=0.0)
    c2 = tl.load(tab_ptr + b * 6 + (s + o2 - 1), mask=me, other=0.0)
    m = me[:, None] & md[None, :]
    x1 = tl.load(emb_ptr + r1[:, None] * stride + offs_d[None, :], mask=m, other=0.0).to(ACC)
    x2 = tl.load(emb_ptr + r2[:, None] * stride + offs_d[None, :], mask=m, other=0.0).to(ACC)
    acc += c1[:, None] * x1 + c2[:, None] * x2
    if COSINE:
        selfc += tl.load(tab_ptr + b * 6 + 3 + s, mask=me, other=0.0)
    return acc, selfc


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
    selfc = tl.zeros([BLOCK_E], ACC)
    if INTERPRET:
        # The interpreter cannot run range() over loaded bounds (DEVELOPERS.md).
        e = start
        while e < end:
            acc, selfc = _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md,
                                        acc, selfc, COSINE, ACC, BLOCK_E)
            e += BLOCK_E
    else:
        for e in range(start, end, BLOCK_E):
            acc, selfc = _segment_block(emb_ptr, stride, trip_ptr, tab_ptr, order_ptr, e, end, offs_d, md,
                                        acc, selfc, COSINE, ACC, BLOCK_E)
    g = tl.sum(acc, axis=0)
    if COSINE:
        xr = tl.load(emb_ptr + r * stride + offs_d, mask=md, other=0.0).to(ACC)
        g -= tl.sum(selfc, axis=0) * xr
    if INTERPRET:
        if out_ptr.dtype.element_ty == tl.bfloat16:
            # The interpreter's fp32 -> bf16 cast truncates; round to nearest
            # even here so the cast below is exact (DEVELOPERS.md).
            g = _round_to_bf16(g.to(tl.float32))
    tl.store(out_ptr + r * D + offs_d, g.to(out_ptr.dtype.element_ty), mask=md)
