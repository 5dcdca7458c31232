"""Weighted correlations of resamples (``fastalign.eval.weighted``) equal those of the expanded
vectors, and the measured-RDM bootstrap built on them gives the intervals of the resample loop
it replaced (each resample's pairs expanded, then correlated)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st
import torch

from fastalign.common.seeds import derive_rng
from fastalign.eval import weighted as W
from fastalign.eval.correlation import kendall_tau_a, pearson, spearman
from fastalign.eval.human_rdm import (
    _BOOT_STREAM,
    _interval,
    _model_rdm,
    compare_to_subjects,
    human_rdm_report,
    resampled_pairs,
)
from fastalign.io.rdm import read_human_rdm

MEADOWS = Path(__file__).parent / "data" / "meadows-118" / "Meadows_myExp_v_v1_arrangement_1D.mat"


def _cases(seed, n_cases=25):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        p = int(rng.integers(3, 50))
        x = rng.normal(size=p) if i % 3 == 0 else rng.integers(0, 5, p).astype(float)  # ties, or none
        y = rng.integers(0, 4, p).astype(float)
        rows = rng.integers(0, 3, (4, p)).astype(float)
        w = rng.integers(0, 4, (4, p)).astype(float)
        yield x, y, rows, w


def _expanded(w_row):
    return np.repeat(np.arange(w_row.size), w_row.astype(int))


def test_weighted_correlations_equal_the_expanded_vectors():
    checked = 0
    for x, y, rows, w in _cases(0):
        xs, ys = W.sorted_vector(x), W.sorted_vector(y)
        tau_fixed, tau_rows = W.weighted_tau_a(xs, ys, w), W.weighted_tau_a(xs, rows, w)
        pear = W.weighted_pearson(xs, ys, w)
        spear = W.weighted_pearson(W.weighted_ranks(xs, w), W.weighted_ranks(ys, w), w)
        ranks_rows = W.weighted_ranks(rows, w)
        for b in range(w.shape[0]):
            rep = _expanded(w[b])
            if rep.size < 3:
                continue
            xe, ye, re = x[rep], y[rep], rows[b][rep]
            assert tau_fixed[b] == pytest.approx(kendall_tau_a(xe, ye), abs=1e-12)
            assert tau_rows[b] == pytest.approx(kendall_tau_a(xe, re), abs=1e-12)
            np.testing.assert_allclose(ranks_rows[b][rep], st.rankdata(re))
            for got, ref in ((pear[b], pearson(xe, ye)), (spear[b], spearman(xe, ye))):
                assert (np.isnan(got) and np.isnan(ref)) or got == pytest.approx(ref, abs=1e-12)
            checked += 1
    assert checked > 50


def test_weighted_inversions_equal_the_pairwise_definition():
    rng = np.random.default_rng(1)
    for p in (1, 2, 3, 7, 8, 33):
        dense = rng.integers(0, 5, p)
        rows = rng.integers(0, 5, (3, p))
        w = rng.integers(0, 5, (3, p)).astype(float)
        for values, shared in ((dense, True), (rows, False)):
            got = W._inversions(values, w)
            for b in range(3):
                v = values if shared else values[b]
                ref = sum(w[b, i] * w[b, j] for i in range(p) for j in range(i + 1, p) if v[i] > v[j])
                assert got[b] == ref


def _loop_bootstrap(model, human, valid, methods, n_boot, seed):
    """The bootstrap before the weighted form: expand every resample's pairs and correlate them."""
    n = model.shape[0]
    rng = derive_rng(seed, _BOOT_STREAM)
    draws = {m: {"pooled": [], "subject_mean": []} for m in methods}
    for _ in range(n_boot):
        a, b = resampled_pairs(torch.from_numpy(rng.integers(0, n, n)), valid)
        if a.numel() < 3:
            continue
        mv, hv = model[a, b], human[:, a, b]
        for m in methods:
            res = compare_to_subjects(mv, hv, m)
            draws[m]["pooled"].append(res["pooled"])
            draws[m]["subject_mean"].append(res["subject_mean"])
    return {m: {k: _interval(v) for k, v in d.items()} for m, d in draws.items()}


def test_bootstrap_intervals_equal_the_resample_loop():
    human = read_human_rdm(str(MEADOWS))
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(human.n_stimuli, 6)).astype(np.float32) + human.rdms[0][:, :6].astype(np.float32)
    methods = ("spearman", "pearson", "kendall_tau_a")
    rep = human_rdm_report(emb, human, metric="euclidean", methods=methods, n_bootstrap=12, seed=4)
    full = torch.from_numpy(human.rdms)
    ref = _loop_bootstrap(_model_rdm(emb, None, "euclidean", 2048), full, torch.isfinite(full).all(0), methods, 12, 4)
    for m in methods:
        for kind in ("pooled", "subject_mean"):
            np.testing.assert_allclose(rep[m]["ci95"][kind], ref[m][kind], rtol=0, atol=1e-12)


def test_bootstrap_with_masked_pairs_equals_the_resample_loop():
    human = read_human_rdm(str(MEADOWS))
    rdms = human.rdms.copy()
    rdms[:, 3, 7] = rdms[:, 7, 3] = np.nan  # one pair not measured in any subject
    masked = replace(human, rdms=rdms)
    emb = np.random.default_rng(2).normal(size=(human.n_stimuli, 4)).astype(np.float32)
    rep = human_rdm_report(emb, masked, metric="cosine", methods=("kendall_tau_a",), n_bootstrap=8, seed=1)
    full = torch.from_numpy(rdms)
    ref = _loop_bootstrap(_model_rdm(emb, None, "cosine", 2048), full, torch.isfinite(full).all(0),
                          ("kendall_tau_a",), 8, 1)
    for kind in ("pooled", "subject_mean"):
        np.testing.assert_allclose(rep["kendall_tau_a"]["ci95"][kind], ref["kendall_tau_a"][kind], atol=1e-12)
