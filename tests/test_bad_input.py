"""Bad input gets a clear error on every backend, never a crash or garbage."""

import pytest
import torch
from backends import backend_params, random_problem

import fastalign


def _calls(emb, trip, backend, **kw):
    p = torch.full((trip.shape[0], 3), 1 / 3)
    return [
        lambda: fastalign.triplet_similarities(emb, trip, backend=backend),
        lambda: fastalign.odd_one_out_probs(emb, trip, backend=backend),
        lambda: fastalign.triplet_loss(emb, trip, backend=backend, **kw),
        lambda: fastalign.triplet_distill_loss(emb, trip, target_probs=p, backend=backend, **kw),
        lambda: fastalign.odd_one_out_accuracy(emb, trip, backend=backend),
    ]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("bad", [-1, 40, 10**12])
def test_out_of_range_index_names_the_row(backend, bad):
    emb, trip = random_problem(n=40)
    trip[17, 1] = bad
    for call in _calls(emb, trip, backend):
        with pytest.raises(ValueError, match=r"row 17 .* outside \[0, 40\)"):
            call()


@pytest.mark.parametrize(
    "emb, trip, exc, match",
    [
        (torch.randn(4, 3), torch.zeros(5, 2, dtype=torch.long), ValueError, r"shape \(B, 3\)"),
        (torch.randn(4, 3), torch.zeros(5, 3, 1, dtype=torch.long), ValueError, r"shape \(B, 3\)"),
        (torch.randn(4, 3), torch.zeros(5, 3), TypeError, "int32 or int64"),
        (torch.randn(4), torch.zeros(5, 3, dtype=torch.long), ValueError, r"2-D \(N, D\)"),
        (torch.randint(0, 3, (4, 3)), torch.zeros(5, 3, dtype=torch.long), TypeError, "float64/float32"),
        (torch.randn(4, 0), torch.zeros(5, 3, dtype=torch.long), ValueError, "D >= 1"),
        ([[1.0]], torch.zeros(5, 3, dtype=torch.long), TypeError, "torch.Tensor"),
    ],
)
def test_shapes_and_dtypes(emb, trip, exc, match):
    for call in _calls(emb, trip, None):
        with pytest.raises(exc, match=match):
            call()


def test_device_mismatch():
    emb = torch.randn(4, 3, device="meta")
    with pytest.raises(ValueError, match="move both to one device"):
        fastalign.triplet_loss(emb, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("backend", backend_params())
def test_bad_target_probs(backend):
    emb, trip = random_problem()
    b = trip.shape[0]
    good = torch.full((b, 3), 1 / 3)
    cases = {
        "negative": good.clone().index_put_((torch.tensor([4]), torch.tensor([0])), torch.tensor(-0.1)),
        "nan": good.clone().index_put_((torch.tensor([4]), torch.tensor([1])), torch.tensor(float("nan"))),
        "sum": good.clone().index_put_((torch.tensor([4]), torch.tensor([2])), torch.tensor(0.9)),
    }
    for _name, p in cases.items():
        with pytest.raises(ValueError, match="target_probs row 4"):
            fastalign.triplet_distill_loss(emb, trip, target_probs=p, backend=backend)
    with pytest.raises(ValueError, match=r"target_probs must have shape"):
        fastalign.triplet_distill_loss(emb, trip, target_probs=good[:-1], backend=backend)
    with pytest.raises(ValueError, match="exactly one"):
        fastalign.triplet_distill_loss(emb, trip, backend=backend)
    with pytest.raises(ValueError, match="exactly one"):
        fastalign.triplet_distill_loss(emb, trip, target_probs=good, target_sims=good, backend=backend)


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(t):
    emb, trip = random_problem()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fastalign.triplet_loss(emb, trip, temperature=t)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fastalign.triplet_distill_loss(emb, trip, target_sims=torch.zeros(trip.shape[0], 3), teacher_temperature=t)
    with pytest.raises(ValueError):
        fastalign.TripletLoss(temperature=t)


def test_bad_options():
    emb, trip = random_problem()
    with pytest.raises(ValueError, match="reduction must be one of"):
        fastalign.triplet_loss(emb, trip, reduction="avg")
    with pytest.raises(ValueError, match="similarity must be one of"):
        fastalign.triplet_loss(emb, trip, similarity="l2")
    with pytest.raises(ValueError, match="divergence must be one of"):
        fastalign.TripletDistillLoss(divergence="ce")
    with pytest.raises(ValueError, match="unknown backend"):
        fastalign.triplet_loss(emb, trip, backend="tpu")
    with pytest.raises(ValueError, match="triplet position"):
        fastalign.triplet_loss(emb, trip, odd=torch.full((trip.shape[0],), 5))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        fastalign.triplet_loss(emb, trip, weight=torch.ones(3))


def test_unavailable_backend_says_why(monkeypatch):
    report = fastalign.backends()
    assert set(report["backends"]) >= {"torch", "cpu", "triton", "cuda"}
    for name, info in report["backends"].items():
        assert info["available"] or info["reason"], name
    if not report["backends"]["cuda"]["available"]:
        emb, trip = random_problem()
        with pytest.raises((ValueError, RuntimeError)):
            fastalign.triplet_loss(emb, trip, backend="cuda")


def test_env_var_selects_backend(monkeypatch):
    emb, trip = random_problem()
    monkeypatch.setenv("FASTALIGN_BACKEND", "nonexistent")
    with pytest.raises(ValueError, match="unknown backend 'nonexistent'"):
        fastalign.triplet_loss(emb, trip)
    monkeypatch.setenv("FASTALIGN_BACKEND", "torch")
    assert torch.isfinite(fastalign.triplet_loss(emb, trip))


# ---------------------------------------------------------------- weights and probability rows


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
@pytest.mark.parametrize("op", ["hard", "distill"])
def test_bad_weight_is_refused(op, bad):
    emb = torch.randn(6, 4)
    trip = torch.tensor([[0, 1, 2], [3, 4, 5]])
    w = torch.tensor([1.0, bad])
    with pytest.raises(ValueError, match=r"weight\[1\]"):
        if op == "hard":
            fastalign.triplet_loss(emb, trip, weight=w, backend="torch")
        else:
            fastalign.triplet_distill_loss(emb, trip, target_probs=torch.full((2, 3), 1 / 3), weight=w, backend="torch")


def test_float32_rounded_probabilities_pass_as_float64():
    torch.manual_seed(0)
    p64 = torch.softmax(torch.randn(64, 3), dim=1).double()
    p64[:, 0] += 5e-8  # what three float32 roundings can do to a row sum: beyond the old 1e-9
    emb = torch.randn(20, 5, dtype=torch.float64)
    trip = torch.randint(0, 20, (64, 3))
    loss = fastalign.triplet_distill_loss(emb, trip, target_probs=p64, backend="torch")
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="probability vector"):
        fastalign.triplet_distill_loss(emb, trip, target_probs=p64 * (1 + 1e-4), backend="torch")


@pytest.mark.parametrize("backend", backend_params())
def test_bad_target_sims_are_named(backend):
    """NaN / +Inf teacher similarities are reported as target_sims (the op softmaxes them itself);
    -Inf is a similarity of probability 0, and a row of -Inf alone has no distribution."""
    emb, trip = random_problem()
    b = trip.shape[0]
    for bad in (float("nan"), float("inf")):
        s = torch.zeros(b, 3)
        s[4, 1] = bad
        with pytest.raises(ValueError, match=r"target_sims row 4 .* NaN or \+Inf"):
            fastalign.triplet_distill_loss(emb, trip, target_sims=s, backend=backend)
    s = torch.zeros(b, 3)
    s[4] = float("-inf")
    with pytest.raises(ValueError, match="target_sims row 4 is all -Inf"):
        fastalign.triplet_distill_loss(emb, trip, target_sims=s, backend=backend)
    s[4, 0] = 0.0  # one finite pair: p = [1, 0, 0], a valid target
    p = torch.full((b, 3), 1 / 3)
    p[4] = torch.tensor([1.0, 0.0, 0.0])
    s[s != float("-inf")] = 0.0
    got = fastalign.triplet_distill_loss(emb, trip, target_sims=s, backend=backend)
    want = fastalign.triplet_distill_loss(emb, trip, target_probs=p, backend=backend)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("t", [torch.tensor(2.0), torch.tensor(2.0, requires_grad=True), "1", True, None])
def test_temperature_must_be_a_python_number(t):
    """A tensor would be read with float() and silently detached (a learnable temperature would
    get no gradient); strings and bools are not numbers."""
    emb, trip = random_problem()
    with pytest.raises(TypeError, match="temperature must be a"):
        fastalign.triplet_loss(emb, trip, temperature=t)
    with pytest.raises(TypeError, match="temperature must be a"):
        fastalign.TripletDistillLoss(temperature=t)
    with pytest.raises(TypeError, match="teacher_temperature must be a"):
        fastalign.triplet_distill_loss(emb, trip, target_sims=torch.zeros(trip.shape[0], 3), teacher_temperature=t)


def test_numpy_scalar_temperatures_are_numbers():
    import numpy as np

    emb, trip = random_problem()
    for t in (np.float32(2.0), np.float64(2.0), 2):
        torch.testing.assert_close(fastalign.triplet_loss(emb, trip, temperature=t),
                                   fastalign.triplet_loss(emb, trip, temperature=2.0))


def test_loss_modules_check_backend_when_built():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        fastalign.TripletLoss(backend="gpu")
    with pytest.raises(TypeError, match="backend must be a string"):
        fastalign.TripletDistillLoss(backend=3)


@pytest.mark.parametrize("backend", backend_params())
def test_accuracy_of_nan_embeddings_is_an_error(backend):
    """NaN compares false: a NaN row used to count as a tie (wrong) and give a plausible accuracy."""
    emb, trip = random_problem(n=40)
    emb[int(trip[7, 1])] = float("nan")
    with pytest.raises(ValueError, match=r"triplets row \d+ .* NaN or Inf similarity"):
        fastalign.odd_one_out_accuracy(emb, trip, backend=backend)
    with pytest.raises(ValueError, match="NaN or Inf similarity"):
        fastalign.odd_one_out_accuracy(emb, trip, backend=backend, reduction="none")


def test_eval_accuracy_of_nan_embeddings_is_an_error():
    import numpy as np

    from fastalign.eval import triplet_accuracy

    e = np.random.default_rng(0).standard_normal((4, 3))
    e[0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf similarity"):
        triplet_accuracy(e, np.array([[0, 1, 2], [1, 2, 3]]))


@pytest.mark.parametrize("std", [torch.zeros(3), -torch.ones(3), torch.tensor([1.0, float("nan"), 1.0]),
                                 torch.tensor(float("inf")), 0.0, -2.0, float("nan"), float("inf")])
def test_affine_transform_refuses_bad_std(std):
    x, W, b = torch.randn(5, 3), torch.randn(3, 2), torch.zeros(2)
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        fastalign.affine_transform(x, W, b, 0.0, std)
    # the caller that checked std itself may skip the check (no device sync)
    z = fastalign.affine_transform(x, W, b, 0.0, torch.full((3,), 2.0), check_std=False)
    torch.testing.assert_close(z, (x / 2) @ W + b)


def test_affine_transform_refuses_non_tensor_weights():
    x = torch.randn(5, 3)
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        fastalign.affine_transform(x, torch.randn(3, 2).numpy())
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        fastalign.affine_transform(x, torch.randn(3, 2), [0.0, 0.0])
