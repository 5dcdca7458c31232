"""torch.compile of a model using the losses: no graph break, same result as eager."""

import pytest
import torch
from backends import backend_params

import fastalign


class TinyStudent(torch.nn.Module):
    def __init__(self, d_in=12, d_out=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, 16), torch.nn.GELU(), torch.nn.Linear(16, d_out))
        self.loss = fastalign.TripletDistillLoss(divergence="jsd", temperature=2.0)

    def forward(self, x, triplets, target_sims):
        return self.loss(self.net(x), triplets, target_sims=target_sims)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.values[0] in ("torch", "cpu")])
def test_compiled_model_matches_eager(backend, monkeypatch):
    monkeypatch.setenv("FASTALIGN_BACKEND", backend)
    torch._dynamo.reset()
    model = TinyStudent()
    x = torch.randn(30, 12)
    trip = torch.randint(0, 30, (50, 3))
    sims = torch.randn(50, 3)
    eager = model(x, trip, sims)
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    out = compiled(x, trip, sims)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for g, ge in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-6)


def test_compiled_hard_loss_reduction_none():
    torch._dynamo.reset()
    emb = torch.randn(20, 6, requires_grad=True)
    trip = torch.randint(0, 20, (40, 3))

    def f(e):
        return (fastalign.triplet_loss(e, trip, reduction="none", backend="torch") ** 2).sum()

    out = torch.compile(f, fullgraph=True)(emb)
    (g,) = torch.autograd.grad(out, emb)
    ref = f(emb)
    (gr,) = torch.autograd.grad(ref, emb)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, gr)


def test_opcheck():
    """torch.library's own consistency checks of the registered ops (fake, autograd, schema)."""
    emb = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    trip = torch.randint(0, 10, (12, 3))
    torch.library.opcheck(torch.ops.fastalign.triplet_similarities.default, (emb, trip, False, "torch"))
    p = torch.softmax(torch.randn(12, 3, dtype=torch.float64), 1)
    sims = torch.randn(12, 3, dtype=torch.float64)
    for reduction in (0, 2):
        for target, teacher_t in ((p, 0.0), (sims, 0.7)):  # probabilities, or similarities softmaxed in the op
            torch.library.opcheck(
                torch.ops.fastalign.triplet_objective.default,
                (emb, trip, target, None, None, 1, True, 1.5, teacher_t, reduction, "torch", True, False),
            )
