"""triplet_loss on every backend against the float64 reference: loss and gradient,
every reduction with and without weights, both similarities, with and without
``odd``, temperatures 0.01..100, every dtype, repeated indices."""

import itertools

import pytest
import torch
from backends import DTYPES, assert_matches, backend_params, random_problem, seed_of
from reference import hard_loss64, loss_and_grad64

import fastalign

REDUCTIONS = ["mean", "sum", "none"]
TEMPERATURES = [0.01, 1.0, 100.0, 0.3, 7.0, 1.0]


def _run(backend, emb, trip, grad_out=None, **kw):
    e = emb.clone().requires_grad_(True)
    out = fastalign.triplet_loss(e, trip, backend=backend, **kw)
    out.backward(grad_out.to(out.dtype) if grad_out is not None else None)
    return out.detach(), e.grad


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("use_odd", [False, True])
def test_triplet_loss_matches_reference(backend, dtype, similarity, use_odd):
    emb, trip = random_problem(dtype=dtype, seed=seed_of(dtype, similarity, use_odd))
    b = trip.shape[0]
    odd = torch.randint(0, 3, (b,)) if use_odd else None
    for i, (reduction, weighted) in enumerate(itertools.product(REDUCTIONS, [False, True])):
        t = TEMPERATURES[i]
        weight = torch.rand(b) + 0.5 if weighted else None
        grad_out = torch.randn(b) if reduction == "none" else None
        kw = dict(odd=odd, temperature=t, similarity=similarity, reduction=reduction, weight=weight)
        ref_loss, ref_grad = loss_and_grad64(hard_loss64, emb, trip, grad_out=grad_out, **kw)
        loss, grad = _run(backend, emb, trip, grad_out, **kw)
        t_loss, t_grad = _run("torch", emb, trip, grad_out, **kw)
        what = f"{backend} {similarity} {reduction} w={weighted} T={t}"
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert grad.dtype == dtype and grad.shape == emb.shape
        assert_matches(loss, t_loss, ref_loss, dtype, "loss " + what)
        assert_matches(grad, t_grad, ref_grad, dtype, "grad " + what)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_loss_gradcheck(backend, similarity, reduction):
    # gradcheck evaluates the op 2 * N * D times: keep it small for the Triton interpreter.
    emb, trip = random_problem(n=6, d=3, b=8, dtype=torch.float64)
    odd = torch.randint(0, 3, (8,))
    weight = torch.rand(8, dtype=torch.float64)
    e = emb.requires_grad_(True)
    fn = lambda x: fastalign.triplet_loss(x, trip, odd=odd, temperature=0.7, similarity=similarity,
                                          reduction=reduction, weight=weight, backend=backend)
    assert torch.autograd.gradcheck(fn, (e,))


@pytest.mark.parametrize("backend", backend_params())
def test_triplet_loss_default_is_column_two_odd(backend):
    emb, trip = random_problem()
    odd2 = torch.full((trip.shape[0],), 2)
    a = fastalign.triplet_loss(emb, trip, backend=backend)
    b = fastalign.triplet_loss(emb, trip, odd=odd2, backend=backend)
    # rotating each row so that a different column is odd must match odd=position
    perm = trip[:, [2, 0, 1]]  # the odd item now sits in column 0
    c = fastalign.triplet_loss(emb, perm, odd=torch.zeros_like(odd2), backend=backend)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params())
def test_triplet_loss_int32_and_noncontiguous(backend):
    emb, trip = random_problem(d=9)
    wide = torch.randn(emb.shape[0], 20)
    wide[:, 3:12] = emb
    strided = wide[:, 3:12]  # row stride 20 > D
    colmajor = emb.t().contiguous().t()  # stride(1) != 1
    trip4 = torch.cat([trip, trip[:, :1]], 1)[:, :3]  # non-contiguous triplets
    ref = fastalign.triplet_loss(emb, trip, reduction="none", backend="torch")
    for e, t in [(strided, trip), (colmajor, trip), (emb, trip.int()), (emb, trip4)]:
        out = fastalign.triplet_loss(e, t, reduction="none", backend=backend)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backend_params())
def test_triplet_loss_empty_batch(backend):
    emb = torch.randn(5, 4, requires_grad=True)
    trip = torch.empty(0, 3, dtype=torch.long)
    for reduction in ["mean", "sum"]:
        out = fastalign.triplet_loss(emb, trip, reduction=reduction, backend=backend)
        assert out.shape == () and float(out) == 0.0
        out.backward()
        assert torch.equal(emb.grad, torch.zeros_like(emb))
        emb.grad = None
    assert fastalign.triplet_loss(emb, trip, reduction="none", backend=backend).shape == (0,)


@pytest.mark.parametrize("backend", backend_params())
def test_triplet_loss_nan_propagates_or_raises(backend):
    emb, trip = random_problem()
    emb[trip[7, 0]] = float("nan")
    out = fastalign.triplet_loss(emb, trip, reduction="none", backend=backend)
    assert torch.isnan(out[7])
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastalign.triplet_loss(emb, trip, check_finite=True, backend=backend)


def test_triplet_loss_module_matches_functional():
    emb, trip = random_problem()
    mod = fastalign.TripletLoss(temperature=0.5, similarity="cosine", reduction="sum")
    assert torch.equal(mod(emb, trip), fastalign.triplet_loss(emb, trip, temperature=0.5, similarity="cosine",
                                                              reduction="sum"))
    assert "temperature=0.5" in repr(mod)
