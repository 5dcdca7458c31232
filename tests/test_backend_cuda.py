"""Tests of the CUDA C++ backend (``fastalign/kernels/cuda.py`` + ``csrc/cuda``).

The ``gpu``-marked tests (``python -m pytest -m gpu tests/test_backend_cuda.py``)
run the kernels on a CUDA device against the float64 autograd reference of
``tests/reference.py``. They fail, rather than skip, when a device is present
but the extension is missing, so a broken build cannot pass unnoticed. The
unmarked tests run anywhere: the backend either loads or is reported
unavailable with a reason, and the pure-torch helpers are checked on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backends import parallel_problem
from reference import distill_loss64, hard_loss64, loss_and_grad64, sims64

import fastalign
from fastalign.kernels import cuda as cuda_mod
from fastalign.kernels.contract import MODE_HARD, MODE_JSD, MODE_KL

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MODES = ["hard", "hard_odd", "kl", "jsd"]


# ------------------------------------------------------------------ CPU tests


def test_backend_loads_or_reports_why():
    info = fastalign.backends()["backends"]["cuda"]
    if info["available"]:
        assert torch.cuda.is_available()
        assert info["reason"] is None
        return
    reason = info["reason"]
    assert isinstance(reason, str) and reason
    assert any(key in reason for key in ("not built", "does not load", "no CUDA device")), reason
    with pytest.raises((ImportError, RuntimeError)) as excinfo:
        cuda_mod.CudaKernels()
    assert str(excinfo.value) in reason


def test_unbuilt_extension_message_names_the_build_switch():
    try:
        cuda_mod.load_extension()
    except ImportError as exc:
        msg = str(exc)
        assert "FASTALIGN_BUILD_CUDA=1" in msg or "does not load" in msg, msg
    else:  # built: the module exposes the launchers the wrapper calls
        ext = cuda_mod.load_extension()
        for name in ("triplet", "segment_reduce", "synchronize", "device_count", "error_string"):
            assert callable(getattr(ext, name)), name
        assert ext.runtime_version() > 0


def test_built_extension_raises_on_launch_without_device():
    try:
        ext = cuda_mod.load_extension()
    except ImportError:
        pytest.skip("fastalign._cuda is not built here")
    if ext.device_count() > 0:
        pytest.skip("a CUDA device is present; covered by the gpu tests")
    # A launch with no usable device must come back as a Python exception, not a crash.
    with pytest.raises(RuntimeError, match="fastalign._cuda.triplet failed"):
        ext.triplet(emb=0, dtype=ext.F32, n=1, d=4, row_stride=4, triplets=0, itype=ext.I64, b=1, target=0,
                    choice=0, rowscale=0, coef_in=0, task=ext.TASK_SIMS, mode=0, cosine=False, temperature=1.0,
                    grad_scale=1.0, sims=0, loss=0, dsim=0, grad=0, amat=0, device=0, stream=0)


def _check_segments(flat: torch.Tensor):
    perm, rows, offsets = cuda_mod.segments(flat)
    values = flat.cpu().numpy()
    expect_rows = np.unique(values)
    np.testing.assert_array_equal(rows.cpu().numpy(), expect_rows)
    assert offsets[0] == 0 and offsets[-1] == flat.numel()
    assert perm.dtype == torch.int64 and offsets.dtype == torch.int64
    for s, row in enumerate(expect_rows):
        seg = perm[offsets[s]:offsets[s + 1]].cpu().numpy()
        # Stable: the entries of a row in increasing entry order.
        np.testing.assert_array_equal(seg, np.flatnonzero(values == row))


def test_segments_group_entries_by_row_in_stable_order():
    _check_segments(torch.tensor([5, 2, 5, 0, 2, 5, 7, 7, 7]))
    _check_segments(torch.randint(0, 40, (3 * 500,)))
    _check_segments(torch.tensor([3]))


def test_segments_of_nothing():
    perm, rows, offsets = cuda_mod.segments(torch.empty(0, dtype=torch.int64))
    assert perm.numel() == 0 and rows.numel() == 0
    assert offsets.tolist() == [0]


# ------------------------------------------------------------------ GPU helpers

gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def kern(cuda_device):
    # sync=True: an asynchronous fault is raised at the call that caused it.
    return cuda_mod.CudaKernels(sync=True)


@pytest.fixture(scope="module")
def kern_det(cuda_device):
    return cuda_mod.CudaKernels(deterministic=True, sync=True)


def _emb(n, d, dtype, scale=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    e = e * (scale if scale is not None else 1.5 / d ** 0.5)  # similarities of order 1
    return e.to(dtype).cuda()


def _triplets(n, b, itype=torch.int64, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, n, (b, 3), generator=g)
    if b >= 4:  # repeated indices within a triplet
        t[0] = torch.tensor([0, 0, 1])
        t[1] = torch.tensor([2, 2, 2])
        t[2] = torch.tensor([1, 3, 1])
    return t.to(itype).cuda()


def _target(b, seed=2):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(b, 3, generator=g, dtype=torch.float64), dim=1)
    p[::4, 1] = 0.0  # exact zeros: 0 log 0 terms and logaddexp(-inf, .) in JSD
    p = p / p.sum(1, keepdim=True)
    p[1::7] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # one-hot rows
    return p.cuda()


def _odd(b, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (b,), generator=g).cuda()


def _tol(dtype):
    """(rtol, atol as a fraction of the reference's scale) for accumulation-dtype outputs."""
    return (1e-9, 1e-11) if dtype == torch.float64 else (2e-4, 2e-5)


def _close(got, ref, dtype, what, rtol=None, frac=None, per_row=False):
    """Element-wise ``|got - ref| <= rtol |ref| + frac * max|ref|``.

    ``max|ref|`` is taken per row when ``per_row`` (gradients: a row's size
    depends on how many triplets it appears in), else over the whole tensor.
    """
    r, f = _tol(dtype)
    r = rtol if rtol is not None else r
    f = frac if frac is not None else f
    got = got.double().cpu()
    ref = ref.double().cpu()
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    if ref.numel() == 0:
        return
    scale = ref.abs().amax(dim=-1, keepdim=True) if (per_row and ref.dim() == 2) else ref.abs().max()
    bound = r * ref.abs() + f * scale + (1e-300 if dtype == torch.float64 else 1e-30)
    err = (got - ref).abs()
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: max error {float(err.max()):.3g} exceeds tolerance by {worst:.3g}x"


def _per_triplet_loss64(s, mode, target, choice, temperature):
    """Independent float64 loss of the similarities (for dL/ds by autograd)."""
    logq = torch.log_softmax(s / temperature, dim=1)
    if mode == MODE_HARD:
        c = torch.zeros(s.shape[0], dtype=torch.long, device=s.device) if choice is None else choice
        return -logq.gather(1, c[:, None]).squeeze(1)
    p = target.double()
    q = logq.exp()

    def kl(x, logx, logy):
        return torch.where(x > 0, x * (logx - logy), torch.zeros_like(x)).sum(1)

    logp = torch.log(p)
    if mode == MODE_KL:
        return kl(p, logp, logq)
    logm = torch.log(0.5 * (p + q))
    return 0.5 * kl(p, logp, logm) + 0.5 * kl(q, logq, logm)


def _mode_args(mode_name, b):
    if mode_name == "hard":
        return MODE_HARD, None, None, None
    if mode_name == "hard_odd":
        odd = _odd(b)
        return MODE_HARD, None, (2 - odd).long(), odd
    target = _target(b)
    return (MODE_KL if mode_name == "kl" else MODE_JSD), target, None, None


def _reference(emb, trip, mode_name, mode, target, choice, odd, cosine, temperature, rowscale):
    """float64 (loss (B,), dsim (B, 3), grad of sum_b rowscale_b L_b)."""
    sim = "cosine" if cosine else "dot"
    if mode == MODE_HARD:
        fn = hard_loss64
        kwargs = dict(odd=odd, temperature=temperature, similarity=sim)
    else:
        fn = distill_loss64
        kwargs = dict(target_probs=target, temperature=temperature, similarity=sim,
                      divergence="kl" if mode == MODE_KL else "jsd")
    loss, _ = loss_and_grad64(fn, emb, trip, reduction="none", **kwargs)
    _, grad = loss_and_grad64(fn, emb, trip, reduction="sum", weight=rowscale, **kwargs)
    s = sims64(emb, trip, sim).detach().requires_grad_(True)
    per = _per_triplet_loss64(s, mode, target, choice, temperature)
    (dsim,) = torch.autograd.grad(per.sum(), s)
    return loss, dsim, grad


# ------------------------------------------------------------------ GPU tests


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("d", [1, 3, 8, 33, 130, 1152])
def test_similarities_match_float64(kern, dtype, cosine, d):
    emb = _emb(60, d, dtype)
    for itype in (torch.int32, torch.int64):
        trip = _triplets(60, 257, itype)
        got = kern.similarities(emb, trip, cosine)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        ref = sims64(emb, trip, "cosine" if cosine else "dot")
        _close(got, ref, dtype, f"sims d={d}")


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode_name", MODES)
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_matches_float64(kern, kern_det, dtype, mode_name, cosine, deterministic):
    k = kern_det if deterministic else kern
    # Vary D (vector path, scalar tail, small-D groups), index dtype and weights across cases.
    case = DTYPES.index(dtype) + 4 * MODES.index(mode_name) + 16 * int(cosine)
    d = (5, 64, 100, 257, 1024)[case % 5]
    itype = (torch.int32, torch.int64)[(case + case // 4) % 2]
    n, b = 40, 300
    emb = _emb(n, d, dtype, seed=case)
    trip = _triplets(n, b, itype, seed=case + 1)
    mode, target, choice, odd = _mode_args(mode_name, b)
    rowscale = None
    if case % 3:
        rowscale = torch.rand(b, dtype=torch.float64, generator=torch.Generator().manual_seed(case)).cuda()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    temperature, grad_scale = 0.7, 1.0 / b
    loss, dsim, grad = k.fused(
        emb, trip, None if target is None else target.to(acc), choice,
        None if rowscale is None else rowscale.to(acc), mode, cosine, temperature, grad_scale, True,
    )
    assert loss.dtype == acc and dsim.dtype == acc and grad.dtype == acc and grad.shape == emb.shape
    rloss, rdsim, rgrad = _reference(emb, trip, mode_name, mode, target, choice, odd, cosine, temperature, rowscale)
    _close(loss, rloss, dtype, "loss")
    _close(dsim, rdsim, dtype, "dsim")
    _close(grad, rgrad * grad_scale, dtype, "grad", per_row=True, rtol=(1e-8 if dtype == torch.float64 else 1e-3),
           frac=(1e-10 if dtype == torch.float64 else 1e-4))

    # Without a gradient: same loss and dsim, an empty gradient.
    loss2, dsim2, grad2 = k.fused(
        emb, trip, None if target is None else target.to(acc), choice,
        None if rowscale is None else rowscale.to(acc), mode, cosine, temperature, grad_scale, False,
    )
    assert grad2.numel() == 0
    assert torch.equal(loss2, loss) and torch.equal(dsim2, dsim)

    # scatter(dsim * scale) is the same gradient.
    coef = dsim * grad_scale * (1.0 if rowscale is None else rowscale.to(acc)[:, None])
    sgrad = k.scatter(emb, trip, coef, cosine)
    _close(sgrad, rgrad * grad_scale, dtype, "scatter", per_row=True, rtol=(1e-8 if dtype == torch.float64 else 1e-3),
           frac=(1e-10 if dtype == torch.float64 else 1e-4))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_clamped_norm_is_a_constant(kern, dtype):
    # Row 0 has norm 5e-9 < COSINE_EPS: the contract treats its norm as the
    # constant eps, which the autograd reference does through clamp_min.
    emb = _emb(6, 16, torch.float64)
    emb[0] = emb[0] / emb[0].norm() * 5e-9
    emb = emb.to(dtype)
    trip = torch.tensor([[0, 1, 2], [3, 0, 4], [5, 2, 0], [1, 2, 3]], device="cuda")
    mode, target, choice, odd = _mode_args("kl", 4)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    loss, dsim, grad = kern.fused(emb, trip, target.to(acc), None, None, mode, True, 1.0, 1.0, True)
    rloss, rdsim, rgrad = _reference(emb, trip, "kl", mode, target, None, None, True, 1.0, None)
    _close(loss, rloss, dtype, "loss")
    _close(grad, rgrad, dtype, "grad", per_row=True, rtol=1e-3 if dtype == torch.float32 else 1e-8)


@gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("d", [1, 6, 8, 37])
def test_cosine_parallel_rows_with_tiny_norms(kern, kern_det, d, dtype):
    """Parallel rows have a cosine gradient of exactly 0; both gradient paths give exactly 0.

    Formed as A e_b - B e_a, the two terms (each ~|c| / n_a, up to 1e7 here)
    would cancel only to rounding noise (~1 in fp32), far outside the
    tolerance that the norm-1 rows set. D = 8 takes the 16-byte loads and,
    for fp32/bf16, the sm_90 float4 atomics; D = 6 and 37 the scalar path.
    The float64 reference is itself only rounding noise on the parallel rows
    (~1e-9), so it is checked to be ~0 there and compared on the other rows.
    """
    emb, trip, probs, coef = parallel_problem(d, dtype, seed=20 + d, device="cuda")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tol = dict(rtol=1e-8, frac=1e-10) if dtype == torch.float64 else dict(rtol=1e-3, frac=1e-4)
    w = torch.full((trip.shape[0],), 0.3, dtype=torch.float64, device=emb.device)
    _, ref = loss_and_grad64(distill_loss64, emb, trip, target_probs=probs, temperature=0.5, divergence="kl",
                             similarity="cosine", reduction="sum", weight=w)
    e64 = emb.to(torch.float64, copy=True).requires_grad_(True)
    (ref_sc,) = torch.autograd.grad((sims64(e64, trip, "cosine") * coef).sum(), e64)
    zero = slice(0, 12) if d == 1 else slice(0, 8)  # rows whose true gradient is 0
    rest = slice(12, 12) if d == 1 else slice(8, 12)
    assert max(float(ref[zero].abs().max()), float(ref_sc[zero].abs().max())) < 1e-6
    for k in (kern, kern_det):  # float64 always takes the deterministic path
        what = f"D={d} {dtype} det={k is kern_det}"
        _, _, grad = k.fused(emb, trip, probs.to(acc), None, None, MODE_KL, True, 0.5, 0.3, True)
        sc = k.scatter(emb, trip, coef.to(acc), True)
        for name, x, r in (("fused", grad, ref), ("scatter", sc, ref_sc)):
            assert int(torch.count_nonzero(x[zero])) == 0, f"{name} {what}: {float(x[zero].abs().max()):.3g}"
            _close(x[rest], r[rest], dtype, f"{name} {what}", per_row=True, **tol)
    # Through the public API, with the cast to emb.dtype.
    for deterministic in (False, True):
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            e = emb.clone().requires_grad_(True)
            fastalign.triplet_distill_loss(e, trip, target_probs=probs.to(acc), temperature=0.5, similarity="cosine",
                                           reduction="mean", backend="cuda").backward()
        finally:
            torch.use_deterministic_algorithms(before)
        _, ref_mean = loss_and_grad64(distill_loss64, emb, trip, target_probs=probs, temperature=0.5,
                                      similarity="cosine", reduction="mean")
        assert e.grad.dtype == dtype and int(torch.count_nonzero(e.grad[zero])) == 0
        _close(e.grad[rest], ref_mean[rest], dtype, f"public D={d} {dtype} det={deterministic}", per_row=True,
               **(tol if dtype != torch.bfloat16 else dict(rtol=1e-2, frac=1e-3)))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cosine_width_one_gradient_is_exactly_zero(kern, kern_det, dtype):
    """D = 1 among many random rows (the H200 failure of the old A e_b - B e_a
    form): every cosine is exactly +-1, so every gradient is exactly 0."""
    g = torch.Generator().manual_seed(11)
    sign = torch.randint(0, 2, (200, 1), generator=g, dtype=torch.float64) * 2 - 1
    emb = (sign * (torch.rand(200, 1, generator=g, dtype=torch.float64) + 0.1) * 1e-5).to(dtype).cuda()
    assert bool(emb.ne(0).all())  # >= 1e-6: a float16 subnormal, but not 0
    trip = _triplets(200, 500)
    target = _target(500)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for k in (kern, kern_det):
        sims = k.similarities(emb, trip, True)
        assert bool((sims.abs() == 1).all())
        _, _, grad = k.fused(emb, trip, target.to(acc), None, None, MODE_JSD, True, 0.7, 1.0, True)
        assert int(torch.count_nonzero(grad)) == 0, f"{dtype} det={k is kern_det}: {float(grad.abs().max()):.3g}"
        sc = k.scatter(emb, trip, torch.randn(500, 3, generator=g, dtype=torch.float64).to(acc).cuda(), True)
        assert int(torch.count_nonzero(sc)) == 0


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_strided_and_misaligned_rows(kern, dtype):
    d = 37
    n, b = 30, 200
    base = _emb(n, d + 10, dtype)
    trip = _triplets(n, b)
    mode, target, _, _ = _mode_args("jsd", b)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    views = {
        "padded": base[:, :d],         # aligned base, odd row stride d + 10 = 47: scalar path
        "offset": base[:, 1:d + 1],    # base pointer not 16-byte aligned
        "contiguous": base[:, :d].contiguous(),
    }
    padded16 = torch.zeros(n, 64, dtype=dtype, device="cuda")
    padded16[:, :d] = base[:, :d]
    views["aligned_stride"] = padded16[:, :d]  # 16-byte aligned rows, stride 64: vector path + tail
    for name, emb in views.items():
        assert emb.stride(1) == 1
        loss, dsim, grad = kern.fused(emb, trip, target.to(acc), None, None, mode, True, 0.5, 1.0, True)
        rloss, rdsim, rgrad = _reference(emb, trip, "jsd", mode, target, None, None, True, 0.5, None)
        _close(loss, rloss, dtype, f"loss {name}")
        _close(grad, rgrad, dtype, f"grad {name}", per_row=True, rtol=1e-3 if dtype != torch.float64 else 1e-8,
               frac=1e-4 if dtype != torch.float64 else 1e-10)
        _close(kern.similarities(emb, trip, False), sims64(emb, trip), dtype, f"sims {name}")
    # The padded and aligned views hold the contiguous rows: same values through every load path.
    contiguous = kern.similarities(views["contiguous"], trip, True)
    for name in ("padded", "aligned_stride"):
        _close(kern.similarities(views[name], trip, True), contiguous, dtype, f"cosine sims {name}")


@gpu
def test_empty_batch(kern):
    emb = _emb(5, 8, torch.float32)
    trip = torch.empty(0, 3, dtype=torch.int64, device="cuda")
    assert kern.similarities(emb, trip, False).shape == (0, 3)
    loss, dsim, grad = kern.fused(emb, trip, None, None, None, MODE_HARD, False, 1.0, 1.0, True)
    assert loss.shape == (0,) and dsim.shape == (0, 3)
    assert grad.shape == emb.shape and not grad.any()
    assert not kern.scatter(emb, trip, dsim, True).any()


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cosine", [False, True])
def test_deterministic_mode_is_bitwise_reproducible(kern, kern_det, dtype, cosine):
    # Few rows, many triplets: every row collects hundreds of contributions.
    n, d, b = 50, 257, 20000
    emb = _emb(n, d, dtype)
    trip = _triplets(n, b)
    mode, target, _, _ = _mode_args("kl", b)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = (emb, trip, target.to(acc), None, None, mode, cosine, 1.0, 1.0 / b, True)
    first = kern_det.fused(*args)[2]
    for _ in range(3):
        assert torch.equal(kern_det.fused(*args)[2], first)
    # The global switch selects the same path in the default kernels.
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(kern.fused(*args)[2], first)
        coef = torch.rand(b, 3, device="cuda", dtype=acc)
        s1 = kern.scatter(emb, trip, coef, cosine)
        assert torch.equal(kern.scatter(emb, trip, coef, cosine), s1)
    finally:
        torch.use_deterministic_algorithms(False)
    # And the atomic path agrees to rounding.
    _close(kern.fused(*args)[2], first, dtype, "atomic vs deterministic", rtol=1e-4, frac=1e-5, per_row=True)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_public_ops_on_cuda_backend(cuda_device, dtype, reduction):
    n, d, b = 64, 96, 500
    emb = _emb(n, d, dtype)
    trip = _triplets(n, b)
    odd = _odd(b)
    weight = torch.rand(b, device="cuda")
    grad_out = torch.randn(b, device="cuda", dtype=torch.float64) if reduction == "none" else None
    tol = dict(rtol=1e-4, frac=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, frac=1e-3)

    e = emb.clone().requires_grad_(True)
    out = fastalign.triplet_loss(e, trip, odd=odd, temperature=0.5, similarity="cosine", reduction=reduction,
                                 weight=weight, backend="cuda")
    out.backward(None if grad_out is None else grad_out.to(out.dtype))
    ref, rgrad = loss_and_grad64(hard_loss64, emb, trip, odd=odd, temperature=0.5, similarity="cosine",
                                 reduction=reduction, weight=weight, grad_out=grad_out)
    _close(out.detach().reshape(-1), ref.reshape(-1), torch.float32, "hard loss")
    assert e.grad.dtype == dtype
    _close(e.grad, rgrad, dtype, "hard grad", per_row=True, **tol)

    target = _target(b)
    e = emb.clone().requires_grad_(True)
    out = fastalign.triplet_distill_loss(e, trip, target_probs=target.float(), divergence="jsd", reduction=reduction,
                                         backend="cuda")
    out.backward(None if grad_out is None else grad_out.to(out.dtype))
    ref, rgrad = loss_and_grad64(distill_loss64, emb, trip, target_probs=target.float(), divergence="jsd",
                                 reduction=reduction, grad_out=grad_out)
    _close(out.detach().reshape(-1), ref.reshape(-1), torch.float32, "jsd loss")
    _close(e.grad, rgrad, dtype, "jsd grad", per_row=True, **tol)


@gpu
def test_public_similarities_probs_accuracy_on_cuda_backend(cuda_device):
    emb = _emb(64, 48, torch.float32)
    trip = _triplets(64, 300, torch.int32)
    e = emb.clone().requires_grad_(True)
    sims = fastalign.triplet_similarities(e, trip, similarity="dot", backend="cuda")
    ref = sims64(emb, trip)
    _close(sims.detach(), ref, torch.float32, "sims")
    w = torch.randn(300, 3, device="cuda")
    (sims * w).sum().backward()
    _, rgrad = loss_and_grad64(lambda x, t: (sims64(x, t) * w.double()).sum(), emb, trip)
    _close(e.grad, rgrad, torch.float32, "sims grad", rtol=1e-3, frac=1e-4, per_row=True)
    probs = fastalign.odd_one_out_probs(emb, trip, temperature=0.3, backend="cuda")
    _close(probs, torch.softmax(ref / 0.3, dim=1), torch.float32, "probs", rtol=1e-4, frac=1e-5)
    acc = fastalign.odd_one_out_accuracy(emb, trip, backend="cuda")
    s = sims.detach()
    assert acc == pytest.approx(float((s[:, 0] > s[:, 1:].amax(1)).double().mean()))


@gpu
@pytest.mark.slow
def test_offsets_beyond_2_pow_31_elements(kern):
    n, d = 2_200_000, 1024  # 2.25e9 elements: row offsets overflow int32
    free, _ = torch.cuda.mem_get_info()
    need = n * d * (2 + 4) + (6 << 30)  # bf16 rows, one fp32 gradient at a time, temporaries
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU, {free / 2**30:.1f} available")
    emb = torch.empty(n, d, dtype=torch.bfloat16, device="cuda")
    emb.normal_(0.0, 1.0 / d ** 0.5)
    pool = torch.tensor([0, 5, n // 2, 2_097_152, 2_097_153, 2_150_000, n - 2, n - 1], device="cuda")
    g = torch.Generator().manual_seed(7)
    trip = pool[torch.randint(0, pool.numel(), (96, 3), generator=g).cuda()]
    trip[0] = torch.tensor([n - 1, n - 1, 0])
    b = trip.shape[0]
    target = _target(b).float()
    uniq, local = torch.unique(trip, return_inverse=True)
    sub = emb[uniq]
    for cosine in (False, True):
        sims = kern.similarities(emb, trip, cosine)
        _close(sims, sims64(sub, local, "cosine" if cosine else "dot"), torch.bfloat16, "sims")
        rloss, _, rgrad = _reference(sub, local, "kl", MODE_KL, target, None, None, cosine, 1.0, None)
        for k in (kern, cuda_mod.CudaKernels(deterministic=True, sync=True)):
            loss, _, grad = k.fused(emb, trip, target, None, None, MODE_KL, cosine, 1.0, 1.0, True)
            _close(loss, rloss, torch.bfloat16, "loss")
            _close(grad[uniq], rgrad, torch.bfloat16, "grad", per_row=True, rtol=1e-3, frac=1e-4)
            touched = grad.ne(0).any(dim=1)
            assert int(touched.sum()) <= uniq.numel()
            assert bool(touched[uniq].any())
            del grad, touched
            torch.cuda.empty_cache()
