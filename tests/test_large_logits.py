"""Large, nearly tied similarities: every backend's log-softmax must shift before it subtracts.

With |s| ~ 4e6 and more, ``z - (max + log sum)`` rounds ``max + log sum`` at the magnitude of
``z`` and loses ``log sum`` (about 1): the Triton kernel once gave a KL of 0.198 at s ~ 4e6 and
-0.802 at s ~ 4e8 where the answer is 0.2968. The reference here is float64 arithmetic on the
float32 similarities the backend itself computed, so only the loss math is compared.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastalign  # noqa: E402

BACKENDS = [name for name, info in fastalign.backends()["backends"].items()
            if info["available"] and "cpu" in info["devices"]]
assert "torch" in BACKENDS, BACKENDS


def _problem(scale: float):
    # s01 = a^2, s02 = s12 = a (a + eps): tied to within a few units at |s| = scale.
    a = scale ** 0.5
    emb = torch.tensor([[a], [a], [a + 2.0 / a]], dtype=torch.float32)
    trip = torch.tensor([[0, 1, 2]])
    target = torch.tensor([[0.6, 0.3, 0.1]])
    return emb, trip, target


@pytest.mark.parametrize("scale", [4e6, 4e8])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_and_hard_loss_at_large_nearly_tied_similarities(backend, scale):
    emb, trip, target = _problem(scale)
    s = fastalign.triplet_similarities(emb, trip, backend=backend).double()
    logq = torch.log_softmax(s, dim=1)
    kl_ref = float((target.double() * (target.double().log() - logq)).sum())
    hard_ref = float(-logq[0, 0])
    kl = fastalign.triplet_distill_loss(emb, trip, target_probs=target, divergence="kl", backend=backend)
    hard = fastalign.triplet_loss(emb, trip, backend=backend)
    assert kl_ref > 0.05  # the case is not degenerate: the ties leave a real divergence
    assert float(kl) == pytest.approx(kl_ref, rel=1e-4, abs=1e-5)
    assert float(hard) == pytest.approx(hard_ref, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_loss_gradient_at_large_similarities(backend):
    emb, trip, _ = _problem(4e6)
    e = emb.clone().requires_grad_(True)
    fastalign.triplet_loss(e, trip, backend=backend).backward()
    # dL/ds = softmax(s) - onehot(0), from float64 on the backend's own similarities.
    s = fastalign.triplet_similarities(emb, trip, backend=backend).double()
    ds = torch.softmax(s, 1)[0] - torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    a0, a1, a2 = emb.double()[:, 0]
    # s01 = e0 e1, s02 = e0 e2, s12 = e1 e2 (D = 1).
    ref = torch.stack([ds[0] * a1 + ds[1] * a2, ds[0] * a0 + ds[2] * a2, ds[1] * a0 + ds[2] * a1])
    assert float(ref.abs().max()) > 1.0
    torch.testing.assert_close(e.grad.double()[:, 0], ref, rtol=1e-3, atol=1e-2)
