"""Inversion counts: the compiled kernel and the NumPy fallback against the O(n^2) definition."""

import sys

import numpy as np
import pytest
import torch

from fastalign.eval import count_inversions as eval_count_inversions
from fastalign.eval import kendall_tau_a
from fastalign.kernels import cpu as cpu_kernels  # the kernel itself, below the op
from fastalign.ops import count_inversions
from fastalign.ops import inversions as inversions_module

compiled = pytest.mark.skipif(not inversions_module.compiled_available(),
                              reason="fastalign._cpu is not built (or predates count_inversions)")
PATHS = [pytest.param("cpu", marks=compiled), "numpy", "torch"]


def inversions_brute(y) -> int:
    y = np.asarray(y)
    return int(sum(int((y[i] > y[i + 1:]).sum()) for i in range(len(y) - 1)))


def cases(seed: int):
    """Fresh random inputs with many ties, plus the structured ones."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (0, 1, 2, 3, 15, 16, 17, 31, 33, 48, 100, 257, 1000, 2049):
        out.append(rng.integers(0, max(2, n // 8), n))  # many ties
        out.append(rng.integers(-2**62, 2**62, n))  # wider than 32 bits
        out.append(rng.integers(-3, 3, n))  # negative values
        out.append(np.arange(n))  # sorted: none
        out.append(np.arange(n)[::-1])  # reverse sorted: all n (n - 1) / 2, a negative-stride view
        out.append(np.full(n, 7))  # all equal: none
    return out


@pytest.mark.parametrize("path", PATHS)
def test_every_path_matches_the_definition(path):
    seed = np.random.SeedSequence().entropy % 2**32
    for y in cases(seed):
        assert count_inversions(torch.from_numpy(y.copy()), path=path) == inversions_brute(y), (path, seed, y.size)
        assert count_inversions(y, path=path) == inversions_brute(y), (path, seed, y.size)  # NumPy, views too


@compiled
def test_kernel_matches_the_definition_for_every_thread_count():
    seed = np.random.SeedSequence().entropy % 2**32
    for y in cases(seed):
        t = torch.from_numpy(y.copy())
        for threads in (1, 2, 3, 5):
            assert cpu_kernels.count_inversions(t, num_threads=threads) == inversions_brute(y), (seed, y.size, threads)


@compiled
def test_reverse_sorted_counts_every_pair():
    for n in (2, 17, 1000, 65_537):
        y = torch.arange(n, 0, -1)
        assert count_inversions(y, path="cpu") == n * (n - 1) // 2
        assert count_inversions(y, path="numpy") == n * (n - 1) // 2


@compiled
@pytest.mark.slow
def test_paths_agree_on_two_million_values():
    rng = np.random.default_rng()
    n = 2_000_000
    for y in (rng.permutation(n), rng.integers(0, 1000, n), rng.integers(-2**40, 2**40, n)):
        t = torch.from_numpy(y)
        got = count_inversions(t, path="cpu")
        assert got == count_inversions(t, path="numpy")
        assert 0 < got < n * (n - 1) // 2


def test_fallback_without_the_extension(monkeypatch):
    # None in sys.modules makes `import fastalign._cpu` raise ImportError, as without a build.
    monkeypatch.setitem(sys.modules, "fastalign._cpu", None)
    calls = []
    levels = inversions_module.inversions_levels

    def spy(y, key_bits=31):
        calls.append(y.size)
        return levels(y, key_bits)

    monkeypatch.setattr(inversions_module, "inversions_levels", spy)
    assert not inversions_module.compiled_available()
    y = np.random.default_rng().integers(0, 50, 500)
    assert count_inversions(torch.from_numpy(y)) == inversions_brute(y)
    assert eval_count_inversions(torch.from_numpy(y)) == inversions_brute(y)
    assert calls == [500, 500]
    with pytest.raises(ImportError, match="fastalign._cpu"):
        count_inversions(torch.from_numpy(y), path="cpu")


def test_kendall_tau_a_is_the_same_on_every_path(monkeypatch):
    rng = np.random.default_rng()
    x = rng.integers(0, 20, 3000).astype(np.float32)  # ties in both: the joint-key branch
    y = (x + rng.integers(0, 10, 3000)).astype(np.float32)
    z = rng.normal(size=3000)  # no ties: the permutation branch
    auto = [kendall_tau_a(x, y), kendall_tau_a(z, y)]
    monkeypatch.setitem(sys.modules, "fastalign._cpu", None)
    assert [kendall_tau_a(x, y), kendall_tau_a(z, y)] == auto


@pytest.mark.parametrize("path", PATHS)
def test_inputs_are_converted_or_refused(path):
    y = np.random.default_rng().integers(0, 9, (40, 3))
    strided = torch.from_numpy(y)[:, 1]  # not contiguous: copied
    assert count_inversions(strided, path=path) == inversions_brute(y[:, 1])
    assert count_inversions(y[:, 1].astype(np.int32), path=path) == inversions_brute(y[:, 1])  # NumPy, int32
    assert count_inversions(torch.tensor([True, False, True, False]), path=path) == 3
    big = np.array([2**64 - 1, 0, 2**63, 5], dtype=np.uint64)  # above int64: ranked, not wrapped
    assert count_inversions(big, path=path) == 4
    assert count_inversions(torch.zeros(0, dtype=torch.int64), path=path) == 0
    assert count_inversions(torch.tensor([5]), path=path) == 0
    with pytest.raises(ValueError, match="integers"):
        count_inversions(torch.tensor([1.0, 0.0]), path=path)
    with pytest.raises(ValueError, match="integers"):
        count_inversions(np.array([1.5, 0.5]), path=path)
    with pytest.raises(ValueError, match="1-D"):
        count_inversions(torch.zeros(3, 3, dtype=torch.int64), path=path)
    with pytest.raises(ValueError, match="path must be"):
        count_inversions(strided, path="fortran")
