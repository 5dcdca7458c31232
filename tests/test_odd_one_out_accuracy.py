"""odd_one_out_accuracy: argmax of the pair similarities, ties count as wrong."""

import numpy as np
import pytest
import torch
from backends import backend_params, random_problem
from reference import sims64

import fastalign


def _numpy_accuracy(emb, trip, odd=None):
    s = sims64(emb, trip).numpy()
    c = np.zeros(len(s), dtype=int) if odd is None else 2 - odd.numpy()
    correct = []
    for row, ci in zip(s, c):
        others = [row[k] for k in range(3) if k != ci]
        correct.append(row[ci] > max(others))
    return np.mean(correct), np.array(correct)


@pytest.mark.parametrize("backend", backend_params())
def test_accuracy_matches_numpy(backend):
    emb, trip = random_problem(b=200, dtype=torch.float64)
    odd = torch.randint(0, 3, (200,))
    for o in [None, odd]:
        acc = fastalign.odd_one_out_accuracy(emb, trip, odd=o, backend=backend)
        ref, ref_rows = _numpy_accuracy(emb, trip, o)
        assert acc == pytest.approx(ref, abs=1e-12)
        rows = fastalign.odd_one_out_accuracy(emb, trip, odd=o, backend=backend, reduction="none")
        assert np.array_equal(rows.numpy(), ref_rows)


@pytest.mark.parametrize("backend", backend_params())
def test_ties_count_as_wrong(backend):
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # all three identical -> every pair ties -> wrong; [0, 1, 3] -> s01 strictly largest -> right
    trip = torch.tensor([[0, 1, 2], [0, 1, 3], [3, 3, 0]])
    rows = fastalign.odd_one_out_accuracy(emb, trip, backend=backend, reduction="none")
    assert rows.tolist() == [False, True, True]
    assert fastalign.odd_one_out_accuracy(emb, trip, backend=backend) == pytest.approx(2 / 3)


def test_accuracy_empty_is_nan():
    assert np.isnan(fastalign.odd_one_out_accuracy(torch.randn(3, 2), torch.empty(0, 3, dtype=torch.long)))


def test_accuracy_bad_odd():
    emb, trip = random_problem()
    with pytest.raises(ValueError, match="triplet position"):
        fastalign.odd_one_out_accuracy(emb, trip, odd=torch.full((trip.shape[0],), 3))
