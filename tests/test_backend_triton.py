"""The Triton backend against the independent float64 reference (tests/reference.py).

Without a GPU the kernels run on CPU tensors through the Triton interpreter
(``TRITON_INTERPRET=1``, set here and by conftest before triton is imported), so
sizes are tiny. The ``gpu``-marked tests at the end repeat the checks on CUDA
tensors at larger sizes (``pytest -m gpu``), including offsets past 2**31.

Tolerances: the reference runs in float64 on the *same* (already rounded)
inputs, so the only differences are float32 accumulation (float64 for
float64 inputs) and, for the gradient, the final cast to ``emb.dtype``.
Errors are measured relative to ``max(1, max |reference|)``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from backends import parallel_problem  # noqa: E402
from reference import distill_loss64, hard_loss64, loss_and_grad64, sims64  # noqa: E402

import fastalign  # noqa: E402
from fastalign.kernels.contract import MODES  # noqa: E402
from fastalign.kernels.triton import TritonKernels, TritonOptions  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Relative tolerance of a loss value (accumulation only) and of a gradient
# (accumulation plus one rounding to emb.dtype).
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# (reduction, weighted, temperature) combinations; every dtype sees T = 0.01 and 100.
COMBOS = {
    torch.float64: [("mean", False, 0.01), ("mean", True, 1.0), ("sum", False, 100.0),
                    ("sum", True, 0.3), ("none", False, 7.0), ("none", True, 1.0)],
    torch.float32: [("mean", True, 0.01), ("sum", False, 100.0), ("none", True, 1.0)],
    torch.float16: [("mean", True, 100.0), ("none", False, 0.01)],
    torch.bfloat16: [("sum", True, 0.01), ("none", True, 100.0)],
}
CASES = ["hard", "hard_odd", "kl", "jsd"]


def _err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).abs().max()) if ref.numel() else 0.0


def _close(x: torch.Tensor, ref: torch.Tensor, rtol: float, what: str, allowed: float = 0.0) -> None:
    """``|x - ref| <= allowed + rtol * max(1, |ref|)``; ``allowed`` is the torch backend's own error."""
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    if ref.numel() == 0:
        return
    scale = max(1.0, float(ref.double().abs().max()))
    err = _err(x, ref)
    assert err <= allowed + rtol * scale, f"{what}: max error {err:.3g} > {allowed + rtol * scale:.3g}"


def _problem(n, d, b, dtype, device="cpu", seed=0, scale=None):
    """Random rows and triplets with indices repeated within and across triplets."""
    g = torch.Generator().manual_seed(seed)
    # Rows of norm ~1 keep s/T in a range where T = 0.01 is still informative.
    scale = (1.0 / max(1, d) ** 0.5) if scale is None else scale
    emb = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    trip = torch.randint(0, n, (b, 3), generator=g)
    trip[0] = torch.tensor([1, 1, 2])  # repeated within a triplet
    trip[1] = torch.tensor([3, 3, 3])
    trip[2: min(b, 7), 0] = 5  # repeated across triplets
    odd = torch.randint(0, 3, (b,), generator=g)
    probs = torch.softmax(torch.randn(b, 3, generator=g, dtype=torch.float64) * 2, dim=1)
    probs[0] = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)  # exact zeros in the target
    probs[1] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    weight = torch.rand(b, generator=g, dtype=torch.float64) + 0.5
    grad_out = torch.randn(b, generator=g, dtype=torch.float64)
    to = dict(device=device)
    return (emb.to(**to), trip.to(**to), odd.to(**to), probs.to(**to), weight.to(**to), grad_out.to(**to))


def _public_loss(case, e, trip, odd, probs, t, sim, reduction, weight, backend="triton"):
    if case.startswith("hard"):
        return fastalign.triplet_loss(e, trip, odd=odd if case == "hard_odd" else None, temperature=t,
                                      similarity=sim, reduction=reduction, weight=weight, backend=backend)
    return fastalign.triplet_distill_loss(e, trip, target_probs=probs, temperature=t, divergence=case,
                                          similarity=sim, reduction=reduction, weight=weight, backend=backend)


def _reference(case, emb, trip, odd, probs, t, sim, reduction, weight, grad_out):
    if case.startswith("hard"):
        return loss_and_grad64(hard_loss64, emb, trip, odd=odd if case == "hard_odd" else None, temperature=t,
                               similarity=sim, reduction=reduction, weight=weight, grad_out=grad_out)
    return loss_and_grad64(distill_loss64, emb, trip, target_probs=probs, temperature=t, divergence=case,
                           similarity=sim, reduction=reduction, weight=weight, grad_out=grad_out)


def _check_public(case, sim, dtype, n, d, b, device="cpu", seed=0, combos=None):
    """Loss and gradient through fastalign's public API against the reference
    for each (reduction, weighted, temperature) in ``combos``."""
    emb, trip, odd, probs, weight64, grad_out = _problem(n, d, b, dtype, device, seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for reduction, weighted, t in combos if combos is not None else COMBOS[dtype]:
        weight = weight64.to(acc) if weighted else None
        go = grad_out if reduction == "none" else None
        e = emb.clone().requires_grad_(True)
        out = _public_loss(case, e, trip, odd, probs.to(acc), t, sim, reduction, weight)
        out.backward(None if go is None else go.to(out.dtype))
        ref_loss, ref_grad = _reference(case, emb, trip, odd, probs, t, sim, reduction, weight, go)
        what = f"{case} {sim} {dtype} {reduction} w={weighted} T={t} D={d}"
        assert out.dtype == acc and e.grad.dtype == dtype
        # The project's tolerance rule: no worse than the torch backend's own
        # error in this dtype, plus the stated slack.
        t_e = emb.clone().requires_grad_(True)
        t_out = _public_loss(case, t_e, trip, odd, probs.to(acc), t, sim, reduction, weight, backend="torch")
        t_out.backward(None if go is None else go.to(t_out.dtype))
        _close(out.detach(), ref_loss, LOSS_RTOL[dtype], "loss " + what, _err(t_out.detach(), ref_loss))
        _close(e.grad, ref_grad, GRAD_RTOL[dtype], "grad " + what, _err(t_e.grad, ref_grad))


@pytest.fixture(params=[False, True], ids=["atomic", "deterministic"])
def grad_mode(request):
    """Run a test with torch's deterministic flag off (atomics) and on (segmented)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)


# --------------------------------------------------------------- CPU (interpreter)


@interp
def test_backend_registered_on_cpu_under_interpreter():
    info = fastalign.backends()["backends"]["triton"]
    assert info["available"], info["reason"]
    assert "cpu" in info["devices"]


@interp
@pytest.mark.parametrize("dtype_d", [(t, 17) for t in DTYPES] + [(torch.float32, d) for d in (1, 3, 130)],
                         ids=lambda p: f"{str(p[0])[6:]}-D{p[1]}")
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_similarities(dtype_d, similarity):
    dtype, d = dtype_d
    emb, trip, *_ = _problem(12, d, 30, dtype, seed=d)
    emb[7] = 0  # a zero row: cosine clamps its norm
    trip[8] = torch.tensor([7, 7, 2])
    for deterministic in (False, True):
        sims = TritonKernels(deterministic=deterministic).similarities(emb, trip, similarity == "cosine")
        assert sims.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        _close(sims, sims64(emb, trip, similarity), LOSS_RTOL[dtype], f"sims {similarity} {dtype} D={d}")
    probs = fastalign.odd_one_out_probs(emb, trip, temperature=0.5, similarity=similarity, backend="triton")
    _close(probs, torch.softmax(sims64(emb, trip, similarity) / 0.5, 1), LOSS_RTOL[dtype] * 2, "probs")


@interp
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("case", CASES)
def test_loss_and_grad_every_option(case, similarity, dtype):
    """Atomic gradients: every mode x similarity x dtype x reduction/weight, T 0.01..100."""
    _check_public(case, similarity, dtype, n=10, d=7, b=27, seed=CASES.index(case))


@interp
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("case", CASES)
def test_loss_and_grad_deterministic(case, similarity):
    """The segmented (no-atomics) gradient, via torch's deterministic flag."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _check_public(case, similarity, torch.float32, n=10, d=7, b=27, seed=CASES.index(case),
                      combos=[("sum", True, 0.01), ("none", True, 100.0)])
        _check_public(case, similarity, torch.float64, n=10, d=7, b=27, seed=CASES.index(case),
                      combos=[("mean", True, 0.3)])
    finally:
        torch.use_deterministic_algorithms(before)


@interp
@pytest.mark.parametrize("d", [1, 3, 17, 130])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_odd_d(d, similarity, grad_mode):
    case = "hard_odd" if similarity == "dot" else "jsd"
    _check_public(case, similarity, torch.float32, n=9, d=d, b=20, seed=d,
                  combos=[("mean", True, 0.5), ("none", False, 2.0)])


def test_parallel_problem_needs_exact_similarities():
    """The claim behind backends.parallel_problem's v, w: n**2 != q after rounding."""
    np = pytest.importorskip("numpy")
    for t in (np.float32, np.float64):
        for q in (6.0, 7.0):
            n = np.sqrt(t(q))
            assert t(q) / (n * n) != 1, (t, q)


@interp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("d", [1, 6])
def test_cosine_parallel_rows_with_tiny_norms(d, dtype):
    """Parallel rows have a cosine gradient of exactly 0; the kernels give exactly 0.

    Formed as A e_b - B e_a, the two terms (each ~|c| / n_a, up to 1e7 here)
    would cancel only to rounding noise (~1 in fp32), far outside the
    tolerance that the norm-1 rows set. The float64 reference is itself only
    rounding noise on those rows (~1e-9, above the float64 tolerance), so it
    is checked to be ~0 there and compared with the kernels on the other rows.
    """
    emb, trip, probs, coef = parallel_problem(d, dtype, seed=20 + d)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rtol = LOSS_RTOL[dtype]  # kernel outputs: accumulation only
    _, ref = loss_and_grad64(distill_loss64, emb, trip, target_probs=probs, temperature=0.5, divergence="kl",
                             similarity="cosine", reduction="sum",
                             weight=torch.full((trip.shape[0],), 0.3, dtype=torch.float64))
    e64 = emb.to(torch.float64, copy=True).requires_grad_(True)
    (ref_sc,) = torch.autograd.grad((sims64(e64, trip, "cosine") * coef).sum(), e64)
    zero = slice(0, 12) if d == 1 else slice(0, 8)  # rows whose true gradient is 0
    rest = slice(12, 12) if d == 1 else slice(8, 12)
    assert max(float(ref[zero].abs().max()), float(ref_sc[zero].abs().max())) < 1e-6
    for deterministic in (False, True):
        k = TritonKernels(deterministic=deterministic)
        what = f"D={d} {dtype} det={deterministic}"
        _, _, grad = k.fused(emb, trip, probs.to(acc), None, None, MODES["kl"], True, 0.5, 0.3, True)
        sc = k.scatter(emb, trip, coef.to(acc), True)
        for name, x, r in (("fused", grad, ref), ("scatter", sc, ref_sc)):
            assert int(torch.count_nonzero(x[zero])) == 0, f"{name} {what}: {x[zero].abs().max():.3g}"
            _close(x[rest], r[rest], rtol, f"{name} {what}")
    # Through the public API, with the cast to emb.dtype (as the GPU test does).
    for deterministic in (False, True):
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            e = emb.clone().requires_grad_(True)
            fastalign.triplet_distill_loss(e, trip, target_probs=probs.to(acc), temperature=0.5, similarity="cosine",
                                           reduction="mean", backend="triton").backward()
        finally:
            torch.use_deterministic_algorithms(before)
        _, ref_mean = loss_and_grad64(distill_loss64, emb, trip, target_probs=probs, temperature=0.5,
                                      similarity="cosine", reduction="mean")
        assert e.grad.dtype == dtype and int(torch.count_nonzero(e.grad[zero])) == 0
        _close(e.grad[rest], ref_mean[rest], GRAD_RTOL[dtype], f"public D={d} {dtype} det={deterministic}")


@interp
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_scatter_against_reference(similarity):
    """scatter(coef) = d/demb sum_bp coef[b, p] s_bp, in both gradient modes."""
    emb, trip, *_ = _problem(11, 9, 25, torch.float64, seed=3)
    coef = torch.randn(25, 3, dtype=torch.float64)
    e = emb.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad((sims64(e, trip, similarity) * coef).sum(), e)
    for deterministic in (False, True):
        grad = TritonKernels(deterministic=deterministic).scatter(emb, trip, coef, similarity == "cosine")
        _close(grad, ref, 1e-12, f"scatter {similarity} det={deterministic}")


@interp
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_fused_kernel_contract(similarity):
    """fused(): unweighted loss and dsim, grad = grad_scale * sum_b rowscale_b dloss_b."""
    emb, trip, odd, probs, weight, _ = _problem(10, 6, 26, torch.float64, seed=4)
    cosine = similarity == "cosine"
    # A row whose norm is clamped at COSINE_EPS: its norm gets no gradient there.
    emb[9] = torch.randn(6, dtype=torch.float64) * 1e-10
    trip[5] = torch.tensor([9, 2, 4])
    trip[6] = torch.tensor([3, 9, 9])
    choice = (2 - odd).contiguous()
    s = sims64(emb, trip, similarity).requires_grad_(True)
    ref_loss = -torch.log_softmax(s / 0.7, 1).gather(1, choice[:, None]).squeeze(1)
    (ref_dsim,) = torch.autograd.grad(ref_loss.sum(), s)
    _, ref_grad = loss_and_grad64(hard_loss64, emb, trip, odd=odd, temperature=0.7, similarity=similarity,
                                  reduction="sum", weight=weight * 0.25)
    for deterministic in (False, True):
        k = TritonKernels(deterministic=deterministic)
        loss, dsim, grad = k.fused(emb, trip, None, choice, weight, MODES["hard"], cosine, 0.7, 0.25, True)
        _close(loss, ref_loss.detach(), 1e-12, "loss")
        _close(dsim, ref_dsim, 1e-12, "dsim")
        _close(grad, ref_grad, 1e-12, f"grad det={deterministic}")
        loss2, dsim2, none = k.fused(emb, trip, probs, None, None, MODES["kl"], cosine, 0.7, 1.0, False)
        assert none.numel() == 0 and torch.isfinite(loss2).all() and dsim2.shape == (26, 3)


@interp
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_deterministic_bitwise_and_equal_to_atomic(similarity):
    emb, trip, odd, probs, weight, _ = _problem(8, 19, 70, torch.float32, seed=5)
    trip[10:30] = trip[10]  # many contributions to the same rows
    args = (emb, trip, probs.float(), None, weight.float(), MODES["jsd"], similarity == "cosine", 0.5, 0.1, True)
    det = TritonKernels(deterministic=True)
    runs = [det.fused(*args) for _ in range(2)]
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b), "deterministic mode is not bitwise reproducible"
    atomic = TritonKernels(deterministic=False).fused(*args)
    for name, a, b in zip(("loss", "dsim", "grad"), runs[0], atomic):
        _close(a, b, 1e-5, f"deterministic vs atomic {name}")
    # Through the public API with torch's global flag.
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            e = emb.clone().requires_grad_(True)
            fastalign.triplet_loss(e, trip, odd=odd, similarity=similarity, backend="triton").backward()
            grads.append(e.grad)
        assert torch.equal(grads[0], grads[1])
    finally:
        torch.use_deterministic_algorithms(before)


@interp
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_segment_gradient_writes_bf16_without_fp32_buffer(similarity):
    """bf16 output of the segmented reduction = the fp32 result rounded once."""
    emb, trip, *_ = _problem(9, 21, 30, torch.bfloat16, seed=6)
    coef = torch.randn(30, 3)
    k = TritonKernels(deterministic=True)
    # Cosine: [c, s, |e|] per triplet; similarities in [-1, 1], norms around 1.
    table = torch.cat([coef, torch.rand(30, 3) * 2 - 1, torch.rand(30, 3) + 0.5], 1) if similarity == "cosine" else coef
    g32 = k.segment_gradient(emb, trip, table, similarity == "cosine", torch.float32)
    g16 = k.segment_gradient(emb, trip, table, similarity == "cosine", torch.bfloat16)
    assert g16.dtype == torch.bfloat16
    assert torch.equal(g16, g32.to(torch.bfloat16))


@interp
def test_row_stride_int32_indices_and_persistent_loop():
    """A row stride > D, int32 triplets, and one program looping over every tile."""
    wide, trip, odd, *_ = _problem(10, 24, 50, torch.float32, seed=7)
    emb = wide[:, 3:16]  # stride(0) = 24, D = 13
    assert emb.stride(0) == 24 and emb.stride(1) == 1
    trip32 = trip.to(torch.int32)
    _, ref_grad = loss_and_grad64(hard_loss64, emb, trip, odd=odd, temperature=0.5)
    choice = (2 - odd).contiguous()
    for opts in (TritonOptions(interpret_programs=1), TritonOptions(interpret_programs=4)):
        for deterministic in (False, True):
            k = TritonKernels(deterministic=deterministic, options=opts)
            _, _, grad = k.fused(emb, trip32, None, choice, None, MODES["hard"], False, 0.5, 1 / 50, True)
            _close(grad, ref_grad, 1e-4, f"strided {opts} det={deterministic}")
            _close(k.similarities(emb, trip32, True), sims64(emb, trip, "cosine"), 1e-5, "strided sims")


@interp
def test_empty_batch():
    emb = torch.randn(5, 4)
    trip = torch.zeros(0, 3, dtype=torch.long)
    for deterministic in (False, True):
        k = TritonKernels(deterministic=deterministic)
        assert k.similarities(emb, trip, False).shape == (0, 3)
        loss, dsim, grad = k.fused(emb, trip, None, None, None, MODES["hard"], True, 1.0, 1.0, True)
        assert loss.shape == (0,) and dsim.shape == (0, 3)
        assert torch.equal(grad, torch.zeros(5, 4))
        assert torch.equal(k.scatter(emb, trip, torch.zeros(0, 3), False), torch.zeros(5, 4))
    e = emb.clone().requires_grad_(True)
    out = fastalign.triplet_loss(e, trip, backend="triton")
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(e.grad, torch.zeros(5, 4))


@interp
def test_untuned_launch_matches_tuned():
    emb, trip, odd, probs, *_ = _problem(10, 21, 30, torch.float32, seed=10)
    args = (emb, trip, probs.float(), None, None, MODES["kl"], True, 0.5, 1.0, True)
    tuned = TritonKernels(deterministic=False).fused(*args)
    fixed = TritonKernels(deterministic=False, options=TritonOptions(autotune=False)).fused(*args)
    for a, b in zip(tuned, fixed):
        _close(a, b, 1e-6, "autotune=False")
    coef = torch.randn(30, 3)
    _close(TritonKernels(options=TritonOptions(autotune=False)).scatter(emb, trip, coef, False),
           TritonKernels().scatter(emb, trip, coef, False), 1e-6, "scatter autotune=False")


def test_kernels_compile_for_a_gpu_without_one():
    """The real compiler (frontend, LLVM, ptxas) accepts the kernels for sm_90,
    catching what the interpreter cannot (it runs the kernels as Python)."""
    pytest.importorskip("triton.backends.nvidia")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "fastalign.kernels.triton.compile_check", "--arch", "90"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failure(s)" in proc.stdout


def test_options_are_checked():
    with pytest.raises(ValueError, match="programs_per_sm"):
        TritonOptions(programs_per_sm=0)
    with pytest.raises(ValueError, match="interpret_programs"):
        TritonOptions(interpret_programs=2.5)
    with pytest.raises(TypeError, match="deterministic"):
        TritonKernels(deterministic="yes")
    with pytest.raises(TypeError, match="autotune"):
        TritonOptions(autotune=1)


# ------------------------------------------------------------------------ GPU

gpu = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA device, compiled Triton")


# Compile time dominates these tests (every constexpr variant and, on first use
# per D and dtype, every autotune config is one compile), so they cover every
# option with few variants rather than the full product.


@gpu
@cuda
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("case", CASES)
def test_gpu_loss_and_grad(case, similarity):
    """Every mode on CUDA tensors (autotuned, atomic gradients), fp32 and bf16."""
    for dtype in (torch.float32, torch.bfloat16):
        _check_public(case, similarity, dtype, n=2000, d=768, b=4096, device="cuda", seed=CASES.index(case))


@gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=lambda t: str(t)[6:])
def test_gpu_other_dtypes(dtype):
    _check_public("kl", "cosine", dtype, n=2000, d=768, b=4096, device="cuda", seed=11)


@gpu
@cuda
@pytest.mark.parametrize("case_sim", [("hard_odd", "dot"), ("jsd", "cosine")], ids=lambda p: "-".join(p))
def test_gpu_deterministic_matches_reference(case_sim):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _check_public(*case_sim, torch.bfloat16, n=2000, d=768, b=4096, device="cuda", seed=12)
    finally:
        torch.use_deterministic_algorithms(before)


@gpu
@cuda
@pytest.mark.parametrize("d", [1, 3, 17, 130, 1152])
def test_gpu_odd_d_and_large_n(d):
    _check_public("kl", "cosine", torch.bfloat16, n=100_000, d=d, b=20_000, device="cuda", seed=d,
                  combos=[("mean", True, 0.1), ("none", False, 1.0)])
    _check_public("hard_odd", "dot", torch.float32, n=100_000, d=d, b=20_000, device="cuda", seed=d,
                  combos=[("sum", False, 1.0)])


@gpu
@cuda
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_gpu_deterministic_bitwise(similarity):
    emb, trip, odd, probs, weight, _ = _problem(3000, 1152, 200_000, torch.bfloat16, device="cuda", seed=8)
    args = (emb, trip, probs.float(), None, weight.float(), MODES["kl"], similarity == "cosine", 0.1, 1e-3, True)
    det = TritonKernels(deterministic=True)
    first = det.fused(*args)
    for _ in range(3):
        again = det.fused(*args)
        for a, b in zip(first, again):
            assert torch.equal(a, b), "deterministic mode is not bitwise reproducible on the GPU"
    atomic = TritonKernels(deterministic=False, options=TritonOptions(autotune=False)).fused(*args)
    for name, a, b in zip(("loss", "dsim", "grad"), first, atomic):
        _close(a, b, 1e-4, f"deterministic vs atomic {name}")
    coef = torch.randn(trip.shape[0], 3, device="cuda")
    s1 = det.scatter(emb, trip, coef, similarity == "cosine")
    assert torch.equal(s1, det.scatter(emb, trip, coef, similarity == "cosine"))


@gpu
@cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_gpu_offsets_past_2_31(deterministic):
    """Rows beyond element 2**31 of emb (and of the fp32 gradient) are addressed correctly."""
    d = 1024
    n = 2 ** 31 // d + 4096  # N * D > 2**31
    try:
        emb = torch.empty(n, d, dtype=torch.bfloat16, device="cuda")
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for N * D > 2**31")
    g = torch.Generator(device="cuda").manual_seed(9)
    hi = torch.arange(n - 300, n, device="cuda")
    lo = torch.arange(0, 300, device="cuda")
    rows = torch.cat([lo, hi])
    emb[rows] = (torch.randn(rows.numel(), d, device="cuda", generator=g) / 32).to(torch.bfloat16)
    b = 5000
    pick = torch.randint(0, rows.numel(), (b, 3), device="cuda", generator=g)
    trip = rows[pick]
    odd = torch.randint(0, 3, (b,), device="cuda", generator=g)
    # Fixed block shapes: tuning would re-zero the 8.6 GB gradient for every trial.
    k = TritonKernels(deterministic=deterministic, options=TritonOptions(autotune=False))
    for cosine in (False, True):
        sim = "cosine" if cosine else "dot"
        loss, dsim, grad = k.fused(emb, trip, None, (2 - odd).contiguous(), None, MODES["hard"], cosine,
                                   0.5, 1.0 / b, True)
        # Reference on the compact sub-embedding (a float64 copy of all of emb would not fit).
        sub = emb[rows].double().cpu()
        ref_loss, ref_grad = loss_and_grad64(hard_loss64, sub, pick.cpu(), odd=odd.cpu(), temperature=0.5,
                                             similarity=sim, reduction="none", grad_out=torch.full((b,), 1.0 / b))
        _close(loss.cpu(), ref_loss, 1e-4, f"loss past 2**31 {sim}")
        _close(grad[rows].cpu(), ref_grad, 1e-4, f"grad past 2**31 {sim}")
        assert int(torch.count_nonzero(grad[300:n - 300])) == 0
        _close(k.similarities(emb, trip, cosine).cpu(), sims64(sub, pick.cpu(), sim), 1e-4, "sims past 2**31")
        del grad
