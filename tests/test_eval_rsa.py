"""RSA, correlations and CKA against scipy / numpy references."""

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.spatial.distance import pdist

from fastalign.eval import (
    compare_rdms,
    count_inversions,
    kendall_tau_a,
    linear_cka,
    pearson,
    rank_vector,
    rankdata,
    rdm,
    rdm_reference,
    rdm_upper,
    rsa,
    spearman,
    upper_triangle,
)
from fastalign.eval.correlation import _inversions_levels, _inversions_merge


def tau_a_brute(x, y):
    """O(n^2) tau-a: ties count as neither concordant nor discordant, denominator n(n-1)/2."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    s = 0.0
    for i in range(n - 1):
        s += (np.sign(x[i] - x[i + 1:]) * np.sign(y[i] - y[i + 1:])).sum()
    return s / (n * (n - 1) / 2)


def inversions_brute(y):
    y = np.asarray(y)
    return int(sum((y[i] > y[i + 1:]).sum() for i in range(len(y) - 1)))


@pytest.mark.parametrize("n", [2, 3, 5, 64, 100, 257])
def test_tau_a_matches_brute_force_with_ties(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, n).astype(float)
    y = rng.integers(0, 3, n).astype(float)
    assert kendall_tau_a(x, y) == pytest.approx(tau_a_brute(x, y), abs=1e-12)


def test_tau_a_equals_scipy_tau_b_without_ties():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    y = x + rng.normal(size=500)
    assert kendall_tau_a(x, y) == pytest.approx(st.kendalltau(x, y)[0], abs=1e-12)
    assert kendall_tau_a(x, x) == pytest.approx(1.0)
    assert kendall_tau_a(x, -x) == pytest.approx(-1.0)


def test_tau_a_all_tied_is_zero():
    assert kendall_tau_a(np.ones(10), np.arange(10.0)) == 0.0


@pytest.mark.parametrize("n", [1, 2, 7, 33, 200])
def test_count_inversions(n):
    y = torch.from_numpy(np.random.default_rng(n).integers(0, 6, n))
    assert count_inversions(y) == inversions_brute(y.numpy())


@pytest.mark.parametrize("n", [2, 3, 5, 8, 9, 31, 64, 257, 1000])
def test_count_inversions_every_path_matches_the_definition(n):
    """The CPU level sort (int32 keys, values re-ranked per block when keys run out of bits,
    int64 keys), the torch merge sort of the GPU path, and values that need dense ranks first."""
    rng = np.random.default_rng(n)
    y = rng.integers(0, max(2, n // 3), n)
    ref = inversions_brute(y)
    for key_bits in (6, 9, 12, 31, 63):
        assert _inversions_levels(y, key_bits) == ref
    assert _inversions_merge(torch.from_numpy(y)) == ref
    wide = rng.integers(-2**62, 2**62, n)
    assert count_inversions(torch.from_numpy(wide)) == inversions_brute(wide)


def test_ranked_vectors_give_the_same_correlations():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 30, 400).astype(np.float32)
    y = (x + rng.normal(size=400)).astype(np.float32)
    rx, ry = rank_vector(x), rank_vector(y)
    assert rx.n_distinct == len(np.unique(x)) and rx.tied_pairs == sum(c * (c - 1) // 2 for c in np.unique(
        x, return_counts=True)[1])
    np.testing.assert_allclose(rx.ranks.numpy(), st.rankdata(x))
    for f in (kendall_tau_a, spearman, pearson):
        assert f(rx, ry) == pytest.approx(f(x, y), abs=1e-15)
        assert f(rx, y) == pytest.approx(f(x, y), abs=1e-15)


def test_rsa_against_a_reference_equals_rsa_against_the_embedding():
    rng = np.random.default_rng(6)
    a, h = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    ref = rdm_reference(h, "dot")
    assert rsa(a, ref, "cosine") == rsa(a, h, "cosine", "dot")
    with pytest.raises(ValueError, match="differs"):
        rsa(a, ref, "cosine", "euclidean")
    with pytest.raises(ValueError, match="rows"):
        rsa(a[:30], ref, "cosine")


def test_rankdata_pearson_spearman_vs_scipy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 20, 300).astype(float)
    y = x + rng.normal(size=300)
    np.testing.assert_allclose(rankdata(x).numpy(), st.rankdata(x))
    assert pearson(x, y) == pytest.approx(st.pearsonr(x, y)[0], abs=1e-12)
    assert spearman(x, y) == pytest.approx(st.spearmanr(x, y)[0], abs=1e-12)
    # torch float32 input on the same path
    assert spearman(torch.tensor(x, dtype=torch.float32), torch.tensor(y)) == pytest.approx(
        st.spearmanr(x, y.astype(np.float32))[0], abs=1e-6)


def test_float32_ranks_vs_scipy_with_signed_zeros_infinities_and_ties():
    """float32 vectors rank by one integer sort of packed (value bits, index) keys: every sign,
    -0.0 against +0.0 (equal), the infinities, subnormals and heavy ties must rank as scipy does."""
    rng = np.random.default_rng()
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-45, -1e-45, 1.0, -1.0], np.float32)
    for x in (rng.normal(size=5000).astype(np.float32), rng.integers(-4, 4, 5000).astype(np.float32),
              np.concatenate([special, special, rng.normal(size=50).astype(np.float32)]), special[:1]):
        np.testing.assert_array_equal(rankdata(torch.from_numpy(x)).numpy(), st.rankdata(x))


def test_correlation_bad_input():
    assert np.isnan(pearson(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="same length"):
        spearman(np.arange(4.0), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        kendall_tau_a(np.array([1.0, np.nan, 2.0]), np.arange(3.0))
    with pytest.raises(ValueError, match="at least 2"):
        pearson(np.ones(1), np.ones(1))


@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean"])
def test_rdm_upper_matches_pdist(metric):
    x = np.random.default_rng(3).normal(size=(37, 6))
    got = rdm_upper(x, metric, chunk_size=5).numpy()
    np.testing.assert_allclose(got, pdist(x, metric), atol=1e-10)


def test_dot_rdm_is_negative_dot():
    x = np.random.default_rng(4).normal(size=(20, 3))
    full = rdm(x, "dot").numpy()
    np.testing.assert_allclose(full, -(x @ x.T), atol=1e-12)
    iu = np.triu_indices(20, 1)
    np.testing.assert_allclose(rdm_upper(x, "dot", chunk_size=3).numpy(), -(x @ x.T)[iu], atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean", "dot"])
def test_chunked_equals_full(metric):
    x = torch.randn(53, 8, dtype=torch.float64)
    full = rdm(x, metric, chunk_size=1000)
    assert torch.allclose(full, full.T)
    for chunk in (1, 4, 52, 53, 60):
        assert torch.allclose(rdm(x, metric, chunk_size=chunk), full)
        assert torch.allclose(rdm_upper(x, metric, chunk_size=chunk), upper_triangle(full))


def test_float32_rdm_close_to_pdist():
    x = np.random.default_rng(5).normal(size=(30, 10)).astype(np.float32)
    got = rdm_upper(x, "euclidean")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), pdist(x.astype(float)), rtol=1e-4, atol=1e-4)


def test_compare_and_rsa_vs_scipy():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(25, 5))
    b = a @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(25, 7))
    da, db = pdist(a, "cosine"), pdist(b, "euclidean")
    res = rsa(a, b, "cosine", "euclidean")
    assert res["spearman"] == pytest.approx(st.spearmanr(da, db)[0], abs=1e-10)
    assert res["pearson"] == pytest.approx(st.pearsonr(da, db)[0], abs=1e-10)
    assert res["kendall_tau_a"] == pytest.approx(tau_a_brute(da, db), abs=1e-10)
    square = rdm(a, "cosine").numpy()
    assert compare_rdms(square, db, "spearman") == pytest.approx(res["spearman"], abs=1e-10)


def test_rsa_errors():
    with pytest.raises(ValueError, match="metric"):
        rdm_upper(np.ones((3, 2)), "manhattan")
    with pytest.raises(ValueError, match="same objects"):
        rsa(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="method"):
        compare_rdms(np.arange(3.0), np.arange(3.0), "kendall")
    with pytest.raises(ValueError, match="chunk_size"):
        rdm(np.ones((3, 2)), "dot", chunk_size=0)


def cka_numpy(x, y):
    """Gram-matrix form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def test_linear_cka_vs_numpy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=(6, 3)) + rng.normal(size=(40, 3))
    assert linear_cka(x, y) == pytest.approx(cka_numpy(x, y), abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(linear_cka(np.ones((5, 2)), x[:5]))
    with pytest.raises(ValueError, match="same objects"):
        linear_cka(x, y[:10])
