"""Property-based checks over random N, D, B, with repeated indices and D that is
not a multiple of any vector width."""

import pytest
import torch
from backends import backend_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import distill_loss64, hard_loss64, loss_and_grad64

import fastalign

problems = st.tuples(
    st.integers(1, 30),  # N
    st.integers(1, 70),  # D
    st.integers(0, 40),  # B
    st.integers(0, 2**31 - 1),  # seed
    st.sampled_from(["dot", "cosine"]),
    st.sampled_from(["hard", "kl", "jsd"]),
    st.sampled_from(["mean", "sum", "none"]),
)


@pytest.mark.parametrize("backend", backend_params())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems)
def test_random_problems_match_reference(backend, problem):
    n, d, b, seed, similarity, mode, reduction = problem
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    trip = torch.randint(0, n, (b, 3), generator=g)  # small N forces repeats
    grad_out = torch.randn(b, generator=g, dtype=torch.float64) if reduction == "none" else None
    if mode == "hard":
        kw = dict(similarity=similarity, reduction=reduction, temperature=0.5)
        ref_loss, ref_grad = loss_and_grad64(hard_loss64, emb, trip, grad_out=grad_out, **kw)
        fn = fastalign.triplet_loss
    else:
        p = torch.softmax(torch.randn(b, 3, generator=g, dtype=torch.float64), 1)
        kw = dict(target_probs=p, divergence=mode, similarity=similarity, reduction=reduction)
        ref_loss, ref_grad = loss_and_grad64(distill_loss64, emb, trip, grad_out=grad_out, **kw)
        fn = fastalign.triplet_distill_loss
    e = emb.clone().requires_grad_(True)
    out = fn(e, trip, backend=backend, **kw)
    out.backward(grad_out)
    torch.testing.assert_close(out, ref_loss, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(e.grad, ref_grad, rtol=1e-9, atol=1e-9)
