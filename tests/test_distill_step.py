"""The two-pass (gradient-cached) step against a naive single-pass step and an
independent float64 reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_distill_fixtures import TinyCNN, TinyViT

from fastalign.distill import FeatureStudent, StepBatch, StepOptions, single_pass_step, two_pass_step


def _batch(n_items=20, n_trip=50, seed=0, with_human=False, probs=False):
    gen = torch.Generator().manual_seed(seed)
    trip = torch.stack([torch.randperm(n_items, generator=gen)[:3] for _ in range(n_trip)])
    sims = torch.randn(n_trip, 3, generator=gen)
    human = torch.stack([torch.randperm(n_items, generator=gen)[:3] for _ in range(7)]) if with_human else None
    return trip, sims, human


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("arch", ["cnn", "vit"])
@pytest.mark.parametrize("divergence", ["jsd", "kl"])
def test_two_pass_equals_naive_with_dropout(arch, divergence):
    torch.manual_seed(0)
    model = TinyCNN(dropout=0.3) if arch == "cnn" else TinyViT(dropout=0.2)
    model.train()
    twin = copy.deepcopy(model)
    trip, sims, human = _batch(with_human=True)
    x = torch.randn(20, 3, 8, 8)
    batch = StepBatch(inputs=x, triplets=trip, target_sims=sims, human=human)
    opts = StepOptions(micro_batch=6, divergence=divergence, temperature=0.5, human_weight=0.3)
    torch.manual_seed(123)
    res_two = two_pass_step(model, batch, opts)
    rng_after_two = torch.get_rng_state()
    torch.manual_seed(123)
    res_one = single_pass_step(twin, batch, opts)
    assert torch.equal(rng_after_two, torch.get_rng_state())  # both consume the RNG identically
    assert res_two.loss == pytest.approx(res_one.loss, rel=1e-6)
    g2, g1 = _grads(model), _grads(twin)
    naive_bn = [b.clone() for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)
                for b in (m.running_mean, m.running_var)]
    assert len(g2) == len(g1) > 0
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Dropout really was on: a different seed gives different gradients.
    twin.zero_grad()
    torch.manual_seed(999)
    single_pass_step(twin, batch, opts)
    assert any(not torch.allclose(a, b) for a, b in zip(g1, _grads(twin)))
    if arch == "cnn":  # BatchNorm running stats are updated once per step, exactly as in the naive step
        bn2 = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
        assert int(bn2.num_batches_tracked) == 4  # 20 items / micro-batch 6 -> 4 forwards, not 8
        torch.testing.assert_close(bn2.running_mean, naive_bn[0])
        torch.testing.assert_close(bn2.running_var, naive_bn[1])


def _reference_loss(emb, trip, sims, teacher_t, t, divergence, human=None, human_w=0.0, human_t=1.0):
    """Independent float64 statement of the step's objective (gather + log-softmax)."""
    e = emb.double()
    a, b, c = e[trip[:, 0]], e[trip[:, 1]], e[trip[:, 2]]
    s = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
    logq = torch.log_softmax(s / t, 1)
    p = torch.softmax(sims.double() / teacher_t, 1)
    if divergence == "kl":
        loss = (p * (torch.log(p) - logq)).sum(1).mean()
    else:
        q = logq.exp()
        m = (p + q) / 2
        loss = (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean()
    if human is not None and human_w:
        a, b, c = e[human[:, 0]], e[human[:, 1]], e[human[:, 2]]
        s = torch.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], 1)
        loss = loss + human_w * (-torch.log_softmax(s / human_t, 1)[:, 0]).mean()
    return loss


@pytest.mark.parametrize("divergence", ["jsd", "kl"])
def test_feature_student_two_pass_matches_float64_reference(divergence):
    feats = torch.randn(20, 5)
    student = FeatureStudent(feats, head="linear", out_dim=4)
    trip, sims, human = _batch(with_human=True, seed=2)
    items = torch.arange(20)
    batch = StepBatch(inputs=items, triplets=trip, target_sims=sims, human=human)
    opts = StepOptions(micro_batch=7, divergence=divergence, temperature=0.7, teacher_temperature=0.5,
                       human_weight=0.4, human_temperature=2.0)
    res = two_pass_step(student, batch, opts)
    ref_head = copy.deepcopy(student.head).double()
    ref = _reference_loss(ref_head(feats.double()), trip, sims, 0.5, 0.7, divergence, human, 0.4, 2.0)
    ref.backward()
    assert res.loss == pytest.approx(float(ref.detach()), rel=1e-5)
    for p, r in zip(student.head.parameters(), ref_head.parameters()):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-4, atol=1e-7)


def test_target_probs_equal_target_sims():
    feats = torch.randn(12, 3)
    trip, sims, _ = _batch(n_items=12, n_trip=30, seed=4)
    opts = StepOptions(micro_batch=5, divergence="jsd", temperature=1.0, teacher_temperature=2.0)
    a = FeatureStudent(feats, out_dim=3)
    b = copy.deepcopy(a)
    two_pass_step(a, StepBatch(inputs=torch.arange(12), triplets=trip, target_sims=sims), opts)
    probs = torch.softmax(sims / 2.0, 1)
    two_pass_step(b, StepBatch(inputs=torch.arange(12), triplets=trip, target_probs=probs), opts)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs_and_is_close():
    torch.manual_seed(1)
    model = TinyCNN(dropout=0.0)
    twin = copy.deepcopy(model)
    trip, sims, _ = _batch()
    batch = StepBatch(inputs=torch.randn(20, 3, 8, 8), triplets=trip, target_sims=sims)
    two_pass_step(model, batch, StepOptions(micro_batch=8, temperature=0.5, amp=True))
    two_pass_step(twin, batch, StepOptions(micro_batch=8, temperature=0.5, amp=False))
    a = torch.cat([g.flatten() for g in _grads(model)])
    b = torch.cat([g.flatten() for g in _grads(twin)])
    assert torch.isfinite(a).all()
    # bf16 keeps ~3 significant digits: compare relative to the whole gradient's scale.
    assert float((a - b).norm()) <= 0.1 * float(b.norm())


def test_activation_checkpointing_same_gradients():
    from fastalign.distill.student import Student, enable_activation_checkpointing

    torch.manual_seed(2)
    backbone = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                   torch.nn.Linear(8, 6), torch.nn.Tanh())
    model = Student(backbone, None)
    twin = copy.deepcopy(model)
    enable_activation_checkpointing(model)
    trip, sims, _ = _batch()
    batch = StepBatch(inputs=torch.randn(20, 5), triplets=trip, target_sims=sims)
    opts = StepOptions(micro_batch=6, temperature=0.5)
    torch.manual_seed(7)
    two_pass_step(model, batch, opts)
    torch.manual_seed(7)
    two_pass_step(twin, batch, opts)
    for a, b in zip(_grads(model), _grads(twin)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_empty_micro_batch_remainder_and_single_item_batches():
    feats = torch.randn(9, 3)
    student = FeatureStudent(feats, out_dim=2)
    trip, sims, _ = _batch(n_items=9, n_trip=10, seed=8)
    res = two_pass_step(student, StepBatch(inputs=torch.arange(9), triplets=trip, target_sims=sims),
                        StepOptions(micro_batch=1))
    assert np.isfinite(res.loss) and res.items == 9 and res.triplets == 10


def test_step_without_items_is_a_no_op():
    """All images of a step failed to load: no forward, no gradient, loss 0."""
    model = TinyCNN()
    empty = StepBatch(inputs=torch.empty(0, 3, 8, 8), triplets=torch.empty(0, 3, dtype=torch.long),
                      target_sims=torch.empty(0, 3))
    for fn in (two_pass_step, single_pass_step):
        res = fn(model, empty, StepOptions())
        assert res.loss == 0.0 and res.items == 0 and res.triplets == 0
        assert all(p.grad is None for p in model.parameters())
