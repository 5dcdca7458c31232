"""The benchmark's gathered-bytes floor moves the bytes it claims to move.

``fastalign._cpu._gather_scatter_floor`` is a timing floor (benchmarks/
bench_triplet_distill_loss.py, the ``floor`` case): with one thread it has no
race, so its output is checkable: every slot j of triplet b adds row
trip[b, (j + 1) % 3] into gradient row trip[b, j], and rows no triplet names
stay untouched by it (the caller zeroes nothing: first touch does).
"""

import pytest
import torch

_cpu = pytest.importorskip("fastalign._cpu")


@pytest.mark.parametrize("ahead", [0, 2])
def test_floor_adds_each_slots_neighbour_row(ahead):
    g = torch.Generator().manual_seed(1234)
    n, d, b = 50, 37, 400
    emb = torch.randn(n, d, generator=g)
    trip = torch.randint(0, n - 10, (b, 3), generator=g)  # rows n-10.. are never named
    trip[:5] = torch.tensor([3, 3, 3])  # repeated indices within a triplet
    grad = torch.full((n, d), float("nan"))  # uninitialised memory: first touch must zero it
    touched = torch.zeros(n, dtype=torch.uint8)
    _cpu._gather_scatter_floor(emb.data_ptr(), n, d, trip.data_ptr(), b, grad.data_ptr(), touched.data_ptr(), 1,
                               ahead)
    want = torch.zeros(n, d, dtype=torch.float64)
    for j in range(3):
        want.index_add_(0, trip[:, j], emb.double()[trip[:, (j + 1) % 3]])
    used = torch.zeros(n, dtype=torch.bool)
    used[trip.reshape(-1)] = True
    assert torch.equal(touched.bool(), used)
    torch.testing.assert_close(grad[used].double(), want[used], rtol=1e-5, atol=1e-5)
    assert (~used).sum() == 10 and torch.isnan(grad[~used]).all()  # never written: it moves the triplets' bytes only
