"""Decay-to-init Adam and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from fastalign.distill import DecayToInitAdam, lr_at


def test_zero_gradient_decays_exponentially_to_init():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    theta0 = p.detach().clone()
    opt = DecayToInitAdam([p], lr=0.05, weight_decay=2.0)
    with torch.no_grad():
        p.add_(torch.randn(5, 3, dtype=torch.float64))  # move away from theta0
    d0 = (p - theta0).detach().clone()
    lr, wd = 0.05, 2.0
    for t in range(1, 26):
        p.grad = torch.zeros_like(p)
        opt.step()
        # closed form: d_t = d_0 * (1 - lr * wd)^t
        torch.testing.assert_close(p - theta0, d0 * (1 - lr * wd) ** t, rtol=1e-12, atol=1e-14)


def test_none_gradient_also_decays():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = DecayToInitAdam([p], lr=0.1, weight_decay=1.0)
    with torch.no_grad():
        p.fill_(3.0)
    opt.step()  # p.grad is None
    torch.testing.assert_close(p.detach(), torch.full((3,), 1.0 + 2.0 * 0.9, dtype=torch.float64))


def test_without_decay_matches_torch_adam():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    ours = DecayToInitAdam([a], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0)
    ref = torch.optim.Adam([b], lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(10):
        g = torch.randn(4, 4, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)


def test_decay_term_added_to_adam_update():
    """One step by hand: theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd * (theta - theta0))."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = DecayToInitAdam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    with torch.no_grad():
        p.copy_(torch.tensor([1.5, -1.0], dtype=torch.float64))
    g = torch.tensor([0.3, -0.2], dtype=torch.float64)
    p.grad = g.clone()
    before = p.detach().clone()
    opt.step()
    m_hat, v_hat = g, g * g  # bias-corrected first step
    expect = before - 0.1 * (m_hat / (v_hat.sqrt() + 1e-8) + 0.5 * (before - torch.tensor([1.0, -2.0],
                                                                                      dtype=torch.float64)))
    torch.testing.assert_close(p.detach(), expect)


def test_named_state_round_trip_and_shape_check():
    p = torch.nn.Parameter(torch.randn(3))
    opt = DecayToInitAdam([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    tensors, steps = opt.named_state({p: "w"})
    q = torch.nn.Parameter(torch.zeros(3))
    opt2 = DecayToInitAdam([q], lr=0.1)
    opt2.load_named_state({q: "w"}, tensors, steps)
    for kind in ("theta0", "exp_avg", "exp_avg_sq"):
        assert torch.equal(opt2.state[q][kind], opt.state[p][kind])
    assert opt2.state[q]["step"] == 1
    r = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        DecayToInitAdam([r]).load_named_state({r: "w"}, tensors, steps)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(eps=0.0), dict(weight_decay=-0.1), dict(betas=(1.0, 0.9))])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        DecayToInitAdam([torch.nn.Parameter(torch.zeros(1))], **bad)


def test_schedule_warmup_then_cosine():
    peak, warm, total = 3e-5, 10, 110
    assert lr_at(0, peak, warm, total) == pytest.approx(peak / warm)
    assert lr_at(9, peak, warm, total) == pytest.approx(peak)
    assert lr_at(10, peak, warm, total) == pytest.approx(peak)
    assert lr_at(60, peak, warm, total) == pytest.approx(peak * 0.5)  # half-way down the cosine
    assert lr_at(110, peak, warm, total) == pytest.approx(0.0, abs=1e-18)
    assert lr_at(110, peak, warm, total, min_lr_ratio=0.1) == pytest.approx(0.1 * peak)
    for s in range(35, 40):
        expect = 0.5 * peak * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert lr_at(s, peak, warm, total) == pytest.approx(expect)
    assert lr_at(0, peak, 0, total) == pytest.approx(peak)
