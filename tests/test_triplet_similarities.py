"""triplet_similarities and odd_one_out_probs against the float64 reference."""

import pytest
import torch
from backends import DTYPES, assert_matches, backend_params, random_problem
from reference import sims64

import fastalign


def _sims_and_grad(backend, emb, trip, similarity, grad_out):
    e = emb.clone().requires_grad_(True)
    s = fastalign.triplet_similarities(e, trip, similarity=similarity, backend=backend)
    s.backward(grad_out.to(s.dtype))
    return s.detach(), e.grad


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("d", [1, 3, 17, 130])
def test_triplet_similarities_matches_reference(backend, dtype, similarity, d):
    emb, trip = random_problem(d=d, dtype=dtype)
    grad_out = torch.randn(trip.shape[0], 3)
    e64 = emb.detach().double().clone().requires_grad_(True)
    ref = sims64(e64, trip, similarity)
    (ref_grad,) = torch.autograd.grad(ref, e64, grad_out.double())
    s, g = _sims_and_grad(backend, emb, trip, similarity, grad_out)
    ts, tg = _sims_and_grad("torch", emb, trip, similarity, grad_out)
    assert s.shape == (trip.shape[0], 3)
    assert_matches(s, ts, ref.detach(), dtype, "sims")
    assert_matches(g, tg, ref_grad, dtype, "grad")


@pytest.mark.parametrize("backend", backend_params())
def test_pair_order_is_s01_s02_s12(backend):
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [5.0, 7.0]])
    trip = torch.tensor([[0, 1, 3], [3, 2, 1]])
    s = fastalign.triplet_similarities(emb, trip, backend=backend)
    expected = torch.tensor([[2.0, 5.0, 10.0], [21.0, 10.0, 0.0]])
    assert torch.equal(s, expected)


@pytest.mark.parametrize("backend", backend_params())
def test_odd_one_out_probs(backend):
    emb, trip = random_problem()
    for t in [0.01, 1.0, 100.0]:
        for similarity in ["dot", "cosine"]:
            p = fastalign.odd_one_out_probs(emb, trip, temperature=t, similarity=similarity, backend=backend)
            ref = torch.softmax(sims64(emb, trip, similarity) / t, dim=1)
            torch.testing.assert_close(p.double(), ref, rtol=0, atol=1e-5)
    # q[0] is P(item 2 is odd): items 0 and 1 identical, item 2 far away
    emb2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    p = fastalign.odd_one_out_probs(emb2, torch.tensor([[0, 1, 2]]), temperature=0.1, backend=backend)
    assert p[0, 0] > 0.99


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cosine_with_clamped_norms(backend, dtype):
    """Rows whose norm is below the clamp (1e-8), including all-zero rows: the norm is a constant there."""
    emb, trip = random_problem(dtype=dtype)
    emb[3] = emb[3] * 1e-10
    emb[4] = 0.0
    trip[7] = torch.tensor([3, 4, 5])
    trip[8] = torch.tensor([4, 4, 1])
    grad_out = torch.randn(trip.shape[0], 3)
    e64 = emb.detach().double().clone().requires_grad_(True)
    ref = sims64(e64, trip, "cosine")
    (ref_grad,) = torch.autograd.grad(ref, e64, grad_out.double())
    s, g = _sims_and_grad(backend, emb, trip, "cosine", grad_out)
    ts, tg = _sims_and_grad("torch", emb, trip, "cosine", grad_out)
    assert_matches(s, ts, ref.detach(), dtype, "sims")
    assert_matches(g, tg, ref_grad, dtype, "grad")
    assert float((tg.double() - ref_grad).abs().max()) <= 1e-6 * float(ref_grad.abs().max())
