"""The evaluation module on a CUDA device gives the CPU numbers (run with -m gpu)."""

import numpy as np
import pytest
import torch

from fastalign.eval import EvalOptions, FewShotOptions, evaluate_representation, kendall_tau_a, rdm_upper

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _close(a, b, tol):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=tol)
    else:
        assert a == b


def test_report_on_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    n = 200
    emb = rng.normal(size=(n, 16))  # float64: device results agree to rounding
    t = np.stack([rng.choice(n, 3, replace=False) for _ in range(3000)])
    t = np.concatenate([t, t[:300, [1, 0, 2]]])
    cats = (rng.random((n, 6)) < 0.3).astype(np.uint8)
    human = emb[:, :8] + 0.1 * rng.normal(size=(n, 8))
    labels = rng.integers(0, 5, n)
    opts = EvalOptions(few_shot=FewShotOptions(shots=(1, 5), episodes=8, probe="centroid"), few_shot_probes=("centroid",))
    kw = dict(categories=cats, human_rdm_emb=human, few_shot_labels=labels, similarity="cosine", temperature=0.3,
              options=opts)
    cpu = evaluate_representation(torch.tensor(emb), t, **kw)
    gpu = evaluate_representation(torch.tensor(emb, device="cuda"), t, **kw)
    _close(cpu, gpu, 1e-5)


def test_big_rdm_and_tau_on_cuda():
    x = torch.randn(12000, 32, device="cuda")
    u = rdm_upper(x, "cosine", chunk_size=1024)
    assert u.device.type == "cuda" and u.numel() == 12000 * 11999 // 2
    v = u + 0.1 * torch.randn_like(u)
    sub = torch.randperm(u.numel(), device="cuda")[:3000]
    assert kendall_tau_a(u[sub], v[sub]) == pytest.approx(kendall_tau_a(u[sub].cpu(), v[sub].cpu()), abs=1e-12)
    assert -1.0 <= kendall_tau_a(u, v) <= 1.0
