"""triplet_distill_loss on every backend against the float64 reference: KL and
JSD, probability and similarity targets (with exact zeros), both similarities,
every reduction with and without weights, temperatures 0.01..100, every dtype."""

import itertools

import pytest
import torch
from backends import DTYPES, assert_matches, backend_params, random_problem, seed_of
from reference import distill_loss64, loss_and_grad64

import fastalign

REDUCTIONS = ["mean", "sum", "none"]
TEMPERATURES = [0.01, 1.0, 100.0, 0.3, 7.0, 1.0]


def _targets(b, kind, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "sims":
        return dict(target_sims=torch.randn(b, 3, generator=g) * 3, teacher_temperature=0.5)
    p = torch.softmax(torch.randn(b, 3, generator=g) * 2, dim=1)
    p[0] = torch.tensor([1.0, 0.0, 0.0])  # exact zeros: 0 log 0 = 0
    p[1] = torch.tensor([0.0, 0.5, 0.5])
    return dict(target_probs=p)


def _run(backend, emb, trip, grad_out=None, **kw):
    e = emb.clone().requires_grad_(True)
    out = fastalign.triplet_distill_loss(e, trip, backend=backend, **kw)
    out.backward(grad_out.to(out.dtype) if grad_out is not None else None)
    return out.detach(), e.grad


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", ["kl", "jsd"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("target_kind", ["probs", "sims"])
def test_triplet_distill_loss_matches_reference(backend, dtype, divergence, similarity, target_kind):
    seed = seed_of(dtype, divergence, similarity, target_kind)
    emb, trip = random_problem(dtype=dtype, seed=seed)
    b = trip.shape[0]
    target = _targets(b, target_kind, seed)
    for i, (reduction, weighted) in enumerate(itertools.product(REDUCTIONS, [False, True])):
        t = TEMPERATURES[i]
        weight = torch.rand(b) + 0.5 if weighted else None
        grad_out = torch.randn(b) if reduction == "none" else None
        kw = dict(temperature=t, divergence=divergence, similarity=similarity, reduction=reduction,
                  weight=weight, **target)
        ref_loss, ref_grad = loss_and_grad64(distill_loss64, emb, trip, grad_out=grad_out, **kw)
        loss, grad = _run(backend, emb, trip, grad_out, **kw)
        t_loss, t_grad = _run("torch", emb, trip, grad_out, **kw)
        what = f"{backend} {divergence} {similarity} {target_kind} {reduction} w={weighted} T={t}"
        assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all(), what
        assert grad.dtype == dtype
        assert_matches(loss, t_loss, ref_loss, dtype, "loss " + what)
        assert_matches(grad, t_grad, ref_grad, dtype, "grad " + what)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("divergence", ["kl", "jsd"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_triplet_distill_loss_gradcheck(backend, divergence, similarity):
    # gradcheck evaluates the op 2 * N * D times: keep it small for the Triton interpreter.
    emb, trip = random_problem(n=6, d=3, b=8, dtype=torch.float64)
    p = torch.softmax(torch.randn(8, 3, dtype=torch.float64), 1)
    e = emb.requires_grad_(True)
    for reduction in REDUCTIONS:
        fn = lambda x: fastalign.triplet_distill_loss(x, trip, target_probs=p, temperature=0.8, divergence=divergence,
                                                      similarity=similarity, reduction=reduction, backend=backend)
        assert torch.autograd.gradcheck(fn, (e,)), reduction


@pytest.mark.parametrize("backend", backend_params())
def test_distill_loss_is_zero_when_student_equals_teacher(backend):
    emb, trip = random_problem()
    sims = fastalign.triplet_similarities(emb, trip)
    for divergence in ["kl", "jsd"]:
        out = fastalign.triplet_distill_loss(emb, trip, target_sims=sims, teacher_temperature=2.0, temperature=2.0,
                                             divergence=divergence, reduction="none", backend=backend)
        assert out.abs().max() < 1e-5


def test_distill_module_alignet_defaults():
    emb, trip = random_problem()
    sims = torch.randn(trip.shape[0], 3)
    mod = fastalign.TripletDistillLoss(divergence="jsd", temperature=100.0, teacher_temperature=100.0)
    expected = fastalign.triplet_distill_loss(emb, trip, target_sims=sims, teacher_temperature=100.0,
                                              temperature=100.0, divergence="jsd")
    assert torch.equal(mod(emb, trip, target_sims=sims), expected)
