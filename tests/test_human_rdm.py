"""Measured human RDMs: readers, checks, and agreement with rsatoolbox on real data (tests/data/meadows-118)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastalign.eval.human_rdm import human_rdm_report, resampled_pairs
from fastalign.io.rdm import read_human_rdm, read_rdm_items, split_rdm_spec, vector_to_rdm

MEADOWS = Path(__file__).parent / "data" / "meadows-118" / "Meadows_myExp_v_v1_arrangement_1D.mat"
RSA_NAMES = {"spearman": "spearman", "pearson": "corr", "kendall_tau_a": "tau-a"}
PNG = b"\x89PNG\r\n\x1a\n"


def sym(rng, n):
    v = rng.random(n * (n - 1) // 2)
    return vector_to_rdm(v, "test"), v


@pytest.fixture(scope="module")
def meadows():
    return read_human_rdm(str(MEADOWS))


def test_meadows_export_reads_three_subjects(meadows):
    assert meadows.rdms.shape == (3, 118, 118)
    assert meadows.subjects == ["able_fly", "clean_koi", "cuddly_bunny"]
    assert meadows.stimuli[:2] == ["stim118.png", "stim117.png"]
    one = read_human_rdm(f"{MEADOWS}:rdmutv_clean_koi")
    assert one.subjects == ["clean_koi"] and np.array_equal(one.rdms[0], meadows.rdms[1])


@pytest.mark.parametrize("model_kind", ["random", "subject"])
def test_matches_rsatoolbox_on_meadows(meadows, model_kind):
    rsa = pytest.importorskip("rsatoolbox")
    from rsatoolbox.inference import boot_noise_ceiling
    from rsatoolbox.util.pooling import pool_rdm
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(0)
    iu = np.triu_indices(118, 1)
    if model_kind == "random":
        emb = rng.normal(size=(118, 6))
        model_vec = pdist(emb)
        rep = human_rdm_report(emb, meadows, metric="euclidean", n_bootstrap=0)
    else:
        # A human-like model: participant 0's arrangement embedded exactly (classical MDS) is too
        # much work; the RDM of 'clean_koi' plus noise, used directly as features of dimension 118.
        emb = meadows.rdms[1] + 0.002 * rng.random((118, 118))
        model_vec = pdist(emb, "correlation")
        rep = human_rdm_report(emb, meadows, metric="correlation", n_bootstrap=0)
    human = rsa.rdm.RDMs(np.stack([r[iu] for r in meadows.rdms]))
    model = rsa.rdm.RDMs(model_vec[None])
    for ours, theirs in RSA_NAMES.items():
        e = rep[ours]
        assert e["pooled"] == pytest.approx(rsa.rdm.compare(model, pool_rdm(human, theirs), theirs)[0, 0], abs=1e-6)
        per = rsa.rdm.compare(model, human, theirs)[0]
        assert e["per_subject"] == pytest.approx(list(per), abs=1e-6)
        assert e["subject_mean"] == pytest.approx(per.mean(), abs=1e-6)
        lo, up = boot_noise_ceiling(human, method=theirs)
        assert e["noise_ceiling"]["lower"] == pytest.approx(lo, abs=1e-6)
        assert e["noise_ceiling"]["upper"] == pytest.approx(up, abs=1e-6)
    assert rep["n_pairs"] == 6903 and rep["n_subjects"] == 3 and rep["n_stimuli"] == 118
    if model_kind == "subject":
        assert rep["spearman"]["subject_mean"] > rep["spearman"]["noise_ceiling"]["lower"]


def test_bootstrap_pairs_follow_rsatoolbox_subsample_pattern(meadows):
    rsa = pytest.importorskip("rsatoolbox")
    iu = np.triu_indices(118, 1)
    rdms = rsa.rdm.RDMs(np.stack([r[iu] for r in meadows.rdms]))
    idx = np.random.default_rng(3).integers(0, 118, 118)
    theirs = rdms.subsample_pattern("index", idx).get_vectors()
    theirs = theirs[:, ~np.isnan(theirs[0])]
    a, b = resampled_pairs(torch.from_numpy(idx), torch.ones(118, 118, dtype=torch.bool))
    ours = meadows.rdms[:, a.numpy(), b.numpy()]
    # The same multiset of pairs in the same order: subsample_pattern sorts the sample too.
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs)


def test_bootstrap_is_seeded_and_brackets_the_estimate(meadows):
    emb = meadows.rdms[0] + 0.001
    r1 = human_rdm_report(emb, meadows, metric="correlation", methods=("spearman",), n_bootstrap=40, seed=1)
    r2 = human_rdm_report(emb, meadows, metric="correlation", methods=("spearman",), n_bootstrap=40, seed=1)
    r3 = human_rdm_report(emb, meadows, metric="correlation", methods=("spearman",), n_bootstrap=40, seed=2)
    ci = r1["spearman"]["ci95"]
    assert ci == r2["spearman"]["ci95"] and ci != r3["spearman"]["ci95"]
    for kind in ("pooled", "subject_mean"):
        lo, hi = ci[kind]
        assert lo < r1["spearman"][kind] < hi
    assert r1["bootstrap"] == {"n": 40, "seed": 1, "unit": "stimuli", "level": 0.95}
    json.dumps(r1)


def test_formats_npy_npz_and_vectors(tmp_path):
    rng = np.random.default_rng(0)
    (m1, v1), (m2, v2) = sym(rng, 6), sym(rng, 6)
    np.save(tmp_path / "one.npy", m1)
    np.save(tmp_path / "stack.npy", np.stack([m1, m2]))
    np.save(tmp_path / "vec.npy", v1)
    np.save(tmp_path / "vecs.npy", np.stack([v1, v2]))
    np.savez(tmp_path / "z.npz", rdms=np.stack([m1, m2]), other=np.zeros(3), stimuli=np.array(list("abcdef")))
    for name, s in [("one.npy", 1), ("stack.npy", 2), ("vec.npy", 1), ("vecs.npy", 2)]:
        h = read_human_rdm(str(tmp_path / name))
        assert h.rdms.shape == (s, 6, 6) and np.allclose(h.rdms[0], m1)
    z = read_human_rdm(str(tmp_path / "z.npz"))
    assert z.rdms.shape == (2, 6, 6) and z.stimuli == list("abcdef")
    assert read_human_rdm(f"{tmp_path / 'z.npz'}:rdms").n_subjects == 2
    # row-major squareform order
    assert vector_to_rdm([1, 2, 3], "v").tolist() == [[0, 1, 2], [1, 0, 3], [2, 3, 0]]


def test_mat_struct_cell_and_3d(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    (m1, _), (m2, _) = sym(rng, 5), sym(rng, 5)
    struct = np.zeros((1, 2), dtype=[("RDM", "O"), ("name", "O")])
    struct[0, 0] = (m1, "alice")
    struct[0, 1] = (m2, "bob")
    cell = np.empty((2,), dtype=object)
    cell[0], cell[1] = m1, m2
    sio.savemat(tmp_path / "d.mat", {"RDMs": struct, "cells": cell, "cube": np.stack([m1, m2], axis=2)})
    s = read_human_rdm(f"{tmp_path / 'd.mat'}:RDMs")
    assert s.subjects == ["alice", "bob"] and np.allclose(s.rdms[1], m2)
    assert np.allclose(read_human_rdm(f"{tmp_path / 'd.mat'}:cells").rdms, [m1, m2])
    assert np.allclose(read_human_rdm(f"{tmp_path / 'd.mat'}:cube").rdms, [m1, m2])  # MATLAB N x N x S


def test_meadows_participants_in_another_order_are_aligned(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    m, v = sym(rng, 5)
    names = np.array(["s1", "s2", "s3", "s4", "s5"])
    perm = np.array([4, 2, 0, 1, 3])
    mp = m[np.ix_(perm, perm)]
    sio.savemat(tmp_path / "m.mat", {"rdmutv_p1": v[None], "stimuli_p1": names,
                                     "rdmutv_p2": mp[np.triu_indices(5, 1)][None], "stimuli_p2": names[perm]})
    h = read_human_rdm(str(tmp_path / "m.mat"))
    assert h.subjects == ["p1", "p2"] and np.allclose(h.rdms[0], h.rdms[1])


def test_spec_splits_at_last_colon_only_for_an_existing_file(tmp_path):
    f = tmp_path / "a.npz"
    f.write_bytes(b"")
    assert split_rdm_spec(f"{f}:x") == (f, "x")
    assert split_rdm_spec("things:spose49") == (Path("things:spose49"), None)
    assert split_rdm_spec(f"{tmp_path}/no:such") == (Path(f"{tmp_path}/no:such"), None)


@pytest.mark.parametrize("case", ["asym", "diag", "length", "mat_var", "nan", "small", "format"])
def test_bad_rdms_give_one_line_errors(tmp_path, case):
    rng = np.random.default_rng(0)
    m, v = sym(rng, 6)
    spec = str(tmp_path / "r.npy")
    if case == "asym":
        m[0, 1] += 0.01
        np.save(spec, m)
        match = "not symmetric"
    elif case == "diag":
        m[2, 2] = 0.5
        np.save(spec, m)
        match = "non-zero diagonal"
    elif case == "length":
        np.save(spec, v[:-1])
        match = "n\\(n-1\\)/2"
    elif case == "mat_var":
        sio = pytest.importorskip("scipy.io")
        sio.savemat(tmp_path / "r.mat", {"a": m})
        spec = f"{tmp_path / 'r.mat'}:b"
        match = "no variable 'b'"
    elif case == "nan":
        m[0, 1] = m[1, 0] = np.nan
        np.save(spec, m)
        match = "NaN"
    elif case == "small":
        np.save(spec, np.zeros((2, 2)))
        match = "at least 3 stimuli"
    else:
        spec = str(tmp_path / "r.csv")
        Path(spec).write_text("1,2\n")
        match = "unknown human RDM format"
    with pytest.raises(ValueError, match=match) as info:
        read_human_rdm(spec)
    assert "\n" not in str(info.value)


def test_nan_pairs_can_be_masked(tmp_path):
    rng = np.random.default_rng(4)
    m, _ = sym(rng, 8)
    m2 = m.copy()
    m2[0, 1] = m2[1, 0] = np.nan
    np.save(tmp_path / "r.npy", np.stack([m, m2]))
    h = read_human_rdm(str(tmp_path / "r.npy"), allow_nan=True)
    emb = rng.normal(size=(8, 3))
    rep = human_rdm_report(emb, h, metric="euclidean", n_bootstrap=5)
    assert rep["n_pairs"] == 27 and rep["n_pairs_masked"] == 1
    assert rep["spearman"]["pooled"] is not None


def test_rdm_items(tmp_path):
    (tmp_path / "idx.txt").write_text("3\n0\n2\n")
    assert read_rdm_items(str(tmp_path / "idx.txt"), 3, 4).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="out of range"):
        read_rdm_items(str(tmp_path / "idx.txt"), 3, 3)
    (tmp_path / "names.txt").write_text("dir/c.png\nA.jpg\n")
    assert read_rdm_items(str(tmp_path / "names.txt"), 2, 3, ["A.jpg", "b.jpg", "c.jpg"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="not in --file-names"):
        read_rdm_items(str(tmp_path / "names.txt"), 2, 3, ["x.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(ValueError, match="lists 2 entries"):
        read_rdm_items(str(tmp_path / "names.txt"), 3, 3, ["A.jpg", "b.jpg", "c.jpg"])



def test_cli_human_rdm_on_meadows(run_cli, tmp_path, meadows):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(5)
    # 130 feature rows: the 118 stimuli in shuffled order plus 12 others, named by file.
    names = list(meadows.stimuli) + [f"extra{i}.png" for i in range(12)]
    rng.shuffle(names)
    np.save(tmp_path / "f.npy", rng.normal(size=(130, 8)).astype(np.float32))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "items.txt").write_text("\n".join(meadows.stimuli) + "\n")
    np.savetxt(tmp_path / "t.txt", np.stack([rng.choice(130, 3, replace=False) for _ in range(40)]), fmt="%d")
    out = tmp_path / "r.json"
    rc, stdout, err = run_cli("--features", tmp_path / "f.npy", "--file-names", tmp_path / "names.txt",
                              "--triplets", tmp_path / "t.txt", "--human-rdm", MEADOWS, "--rdm-items",
                              tmp_path / "items.txt", "--rdm-bootstrap", "10", "--figures", tmp_path / "figs",
                              "--out", out)
    assert rc == 0, err
    (entry,) = json.loads(out.read_text())["human_rdms"]
    assert entry["n_stimuli"] == 118 and entry["n_subjects"] == 3 and entry["n_pairs"] == 6903
    assert entry["kendall_tau_a"]["noise_ceiling"]["upper"] > 0.3
    assert "human RDM spearman" in stdout
    assert (tmp_path / "figs" / "human_rdms.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("case", ["items_range", "no_items", "items_without_rdm"])
def test_cli_human_rdm_errors(run_cli, tmp_path, case):
    rng = np.random.default_rng(6)
    np.save(tmp_path / "f.npy", rng.normal(size=(10, 3)).astype(np.float32))
    np.savetxt(tmp_path / "t.txt", np.stack([rng.choice(10, 3, replace=False) for _ in range(5)]), fmt="%d")
    m, _ = sym(rng, 4)
    np.save(tmp_path / "h.npy", m)
    (tmp_path / "items.txt").write_text("0\n1\n2\n10\n")
    args = ["--features", tmp_path / "f.npy", "--triplets", tmp_path / "t.txt"]
    if case == "items_range":
        args += ["--human-rdm", tmp_path / "h.npy", "--rdm-items", tmp_path / "items.txt"]
    elif case == "no_items":
        args += ["--human-rdm", tmp_path / "h.npy"]
    else:
        args += ["--rdm-items", tmp_path / "items.txt"]
    rc, _, err = run_cli(*args)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fastalign evaluate: error:")


def test_cli_human_embedding_and_old_alias(run_cli, tmp_path):
    rng = np.random.default_rng(7)
    np.save(tmp_path / "f.npy", rng.normal(size=(12, 3)).astype(np.float32))
    np.save(tmp_path / "h.npy", rng.normal(size=(12, 2)))
    np.savetxt(tmp_path / "t.txt", np.stack([rng.choice(12, 3, replace=False) for _ in range(6)]), fmt="%d")
    reps = []
    for flag, metric_flag in (("--human-embedding", "--human-embedding-metric"), ("--rdm", "--human-rdm-metric")):
        out = tmp_path / f"{flag[2:]}.json"
        rc, _, err = run_cli("--features", tmp_path / "f.npy", "--triplets", tmp_path / "t.txt", flag,
                             tmp_path / "h.npy", metric_flag, "cosine", "--out", out)
        assert rc == 0, err
        reps.append(json.loads(out.read_text())["rsa"])
    assert reps[0] == reps[1] and reps[0]["human_metric"] == "cosine"
