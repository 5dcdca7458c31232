"""Import/export: AligNet .npz (odd one out derived, never assumed) and THINGS text, plus their CLIs."""

import argparse
import sys

import numpy as np
import pytest

from fastalign.datasets.things import ROOT as THINGS_ROOT
from fastalign.triplets import TripletStore
from fastalign.triplets.alignet_io import (
    export_store,
    import_alignet_npz,
    import_store,
    import_things_txt,
)


def cli(argv):
    """Run a fastalign command the way ``fastalign.cli.main`` does (exit 2 + one line on user errors)."""
    try:
        from fastalign.cli.main import main

        return main(argv)
    except ModuleNotFoundError:
        # main's command table may list subcommands that are not written yet; test ours alone.
        from fastalign.cli import make_triplets, triplets_io
        from fastalign.cli.main import CLIError

        parser = argparse.ArgumentParser(prog="fastalign")
        sub = parser.add_subparsers(dest="command")
        make_triplets.register(sub)
        triplets_io.register(sub)
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except (CLIError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
            print(f"fastalign {args.command}: error: {exc}", file=sys.stderr)
            return 2


def ref_sims(emb, trip):
    e = emb.astype(np.float64)
    a, b, c = e[trip[:, 0]], e[trip[:, 1]], e[trip[:, 2]]
    return np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)


def alignet_file(path, n=500, items=60, seed=0):
    """A file shaped like AligNet's: rows sorted so s12 < s01 and s12 < s02 (s01 not always the largest)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(items, 5))
    trip = np.stack([rng.choice(items, 3, replace=False) for _ in range(n)])
    s = ref_sims(emb, trip)
    # put the least similar pair at (1, 2): item 0 is the one in the two larger pairs
    low = s.argmin(1)  # 0: pair (0,1), 1: pair (0,2), 2: pair (1,2)
    first = np.where(low == 0, trip[:, 2], np.where(low == 1, trip[:, 1], trip[:, 0]))
    rest = [np.setdiff1d(t, [f], assume_unique=True) for t, f in zip(trip, first)]
    rows = np.array([[f, *r[rng.permutation(2)]] for f, r in zip(first, rest)])
    sims = ref_sims(emb, rows)
    assert (sims[:, 2] < sims[:, 0]).all() and (sims[:, 2] < sims[:, 1]).all()
    assert (sims[:, 1] > sims[:, 0]).any(), "the fixture must contain rows where s02 is the largest"
    names = np.array([f"n{i:05d}/img_{i}.JPEG" for i in range(items)])
    np.savez(path, indices=rows, similarities=sims.astype(np.float32), filenames=names[rows])
    return emb, rows, sims, names


def test_alignet_import_derives_odd_one_out_and_keeps_sims(tmp_path):
    emb, rows, sims, names = alignet_file(tmp_path / "a.npz")
    st = import_alignet_npz(tmp_path / "a.npz", tmp_path / "s")
    idx, s = st.indices[:].astype(np.int64), st.sims[:]
    # item 2 is the odd one out: s01 the largest, and the sims belong to the reordered rows
    assert (s[:, 0] >= s[:, 1:].max(1)).all()
    np.testing.assert_allclose(s, ref_sims(emb, idx), rtol=1e-6, atol=1e-6)
    # values kept: each row holds the same three similarities as the file
    assert np.array_equal(np.sort(s, 1), np.sort(sims.astype(np.float32), 1))
    assert (np.sort(idx, 1) == np.sort(rows, 1)).all()
    moved = sims[:, 1] > sims[:, 0]
    assert (idx[moved, 2] == rows[moved, 1]).all() and (idx[~moved, 2] == rows[~moved, 2]).all()
    used = np.unique(rows)
    assert [st.item_names[i] for i in used] == names[used].tolist()


def test_alignet_export_round_trip(tmp_path):
    emb, rows, sims, names = alignet_file(tmp_path / "a.npz")
    st = import_alignet_npz(tmp_path / "a.npz", tmp_path / "s", temperature=0.5)
    assert st.probs is not None
    export_store(tmp_path / "s", tmp_path / "b.npz", "alignet-npz")
    with np.load(tmp_path / "b.npz") as z:
        assert (z["similarities"][:, 0] >= z["similarities"][:, 1:].max(1)).all()
        assert np.array_equal(z["indices"], st.indices[:])
        assert np.array_equal(z["filenames"], names[z["indices"]])
        np.testing.assert_allclose(z["similarities"], ref_sims(emb, z["indices"]), rtol=1e-6, atol=1e-6)
    st2 = import_alignet_npz(tmp_path / "b.npz", tmp_path / "s2")
    assert np.array_equal(st2.indices[:], st.indices[:]) and np.array_equal(st2.sims[:], st.sims[:])


def test_things_text_round_trip_on_bundled_triplets(tmp_path):
    src = THINGS_ROOT / "triplets" / "test_10.txt"
    original = np.loadtxt(src, dtype=np.int64, ndmin=2)[:, :3]
    st = import_things_txt(src, tmp_path / "s", num_items=1854, shard_size=20_000)
    assert len(st) == len(original) and st.num_items == 1854 and len(st.shards) == 3
    assert np.array_equal(st.indices[:], original)
    assert st.meta["hard_labels"] and (st.probs[:] == np.array([1, 0, 0], np.float32)).all()
    export_store(tmp_path / "s", tmp_path / "out.txt", "things-txt")
    assert np.array_equal(np.loadtxt(tmp_path / "out.txt", dtype=np.int64, ndmin=2), original)
    # a generated store exported as text keeps its odd one out in column 2
    import_store(tmp_path / "out.txt", tmp_path / "s3")
    assert np.array_equal(TripletStore.open(tmp_path / "s3").indices[:], original)


def test_import_errors(tmp_path):
    rows = np.array([[0, 1, 2], [3, 4, 5]])
    sims = np.array([[1.0, 2.0, 0.0], [1.0, 0.5, 0.0]])
    np.savez(tmp_path / "nosims.npz", indices=rows)
    with pytest.raises(ValueError, match="similarities"):
        import_alignet_npz(tmp_path / "nosims.npz", tmp_path / "x1")
    np.savez(tmp_path / "shape.npz", indices=rows, similarities=sims[:1])
    with pytest.raises(ValueError, match="shape"):
        import_alignet_npz(tmp_path / "shape.npz", tmp_path / "x2")
    np.savez(tmp_path / "nan.npz", indices=rows, similarities=sims * np.nan)
    with pytest.raises(ValueError, match="NaN"):
        import_alignet_npz(tmp_path / "nan.npz", tmp_path / "x3")
    np.savez(tmp_path / "rep.npz", indices=np.array([[0, 0, 2]]), similarities=sims[:1])
    with pytest.raises(ValueError, match="repeats"):
        import_alignet_npz(tmp_path / "rep.npz", tmp_path / "x4")
    bad_names = np.array([["a", "b", "c"], ["a", "e", "f"]])  # item 0 is "a", item 3 is also "a": fine
    np.savez(tmp_path / "ok.npz", indices=rows, similarities=sims, filenames=bad_names)
    import_alignet_npz(tmp_path / "ok.npz", tmp_path / "x5")
    clash = np.array([["a", "b", "c"], ["d", "e", "f"]])
    np.savez(tmp_path / "clash.npz", indices=np.array([[0, 1, 2], [0, 4, 5]]), similarities=sims, filenames=clash)
    with pytest.raises(ValueError, match="item 0 is named both"):
        import_alignet_npz(tmp_path / "clash.npz", tmp_path / "x6")
    np.savez(tmp_path / "obj.npz", indices=rows, similarities=sims, filenames=np.array(bad_names, dtype=object))
    with pytest.raises(ValueError, match="allow-pickle"):
        import_alignet_npz(tmp_path / "obj.npz", tmp_path / "x7")
    assert len(import_alignet_npz(tmp_path / "obj.npz", tmp_path / "x8", allow_pickle=True)) == 2
    with pytest.raises(FileExistsError):
        import_alignet_npz(tmp_path / "ok.npz", tmp_path / "x5")
    with pytest.raises(ValueError, match="format"):
        import_store(tmp_path / "file.csv", tmp_path / "x9")
    with pytest.raises(ValueError, match="num_items"):
        import_alignet_npz(tmp_path / "ok.npz", tmp_path / "x10", num_items=3)
    for d in ("x1", "x2", "x3", "x4", "x6", "x7", "x10"):
        assert not (tmp_path / d / "manifest.json").exists()


def test_cli_export_import(tmp_path, capsys):
    alignet_file(tmp_path / "a.npz")
    assert cli(["import-triplets", str(tmp_path / "a.npz"), "--out", str(tmp_path / "s")]) == 0
    assert cli(["export-triplets", str(tmp_path / "s"), "--format", "things-txt", "--out", str(tmp_path / "t.txt")]) == 0
    assert cli(["import-triplets", str(tmp_path / "t.txt"), "--out", str(tmp_path / "s2")]) == 0
    assert np.array_equal(TripletStore.open(tmp_path / "s2").indices[:], TripletStore.open(tmp_path / "s").indices[:])
    capsys.readouterr()
    assert cli(["import-triplets", str(tmp_path / "a.npz"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastalign import-triplets: error:") and "already exists" in err and "\n" not in err
    assert cli(["export-triplets", str(tmp_path / "nope"), "--format", "alignet-npz", "--out", str(tmp_path / "x.npz")]) == 2


@pytest.mark.parametrize("index", [2 ** 31, 2 ** 40])
def test_import_refuses_indices_beyond_int32_and_writes_nothing(tmp_path, index):
    """Fails before issue 15: import-triplets stored 2**31 as -2**31 and 2**40 as 0."""
    rows = np.array([[0, 1, index], [0, 1, 2]], dtype=np.int64)
    sims = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    np.savez(tmp_path / "big.npz", indices=rows, similarities=sims)
    with pytest.raises(ValueError, match=f"item index {index:,} does not fit the store's int32 indices"):
        import_alignet_npz(tmp_path / "big.npz", tmp_path / "a")
    np.savetxt(tmp_path / "big.txt", rows, fmt="%d")
    with pytest.raises(ValueError, match="int32"):
        import_things_txt(tmp_path / "big.txt", tmp_path / "b")
    np.savez(tmp_path / "u.npz", indices=rows.astype(np.uint64), similarities=sims)
    with pytest.raises(ValueError, match="int32"):
        import_alignet_npz(tmp_path / "u.npz", tmp_path / "c")
    np.savez(tmp_path / "ok.npz", indices=rows[1:], similarities=sims[1:])
    with pytest.raises(ValueError, match="int32"):
        import_alignet_npz(tmp_path / "ok.npz", tmp_path / "d", num_items=2 ** 31 + 1)
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_cli_import_of_a_too_large_index_is_one_line(tmp_path, capsys):
    np.savez(tmp_path / "big.npz", indices=np.array([[0, 1, 2 ** 31]]), similarities=np.array([[3.0, 2.0, 1.0]]))
    assert cli(["import-triplets", str(tmp_path / "big.npz"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "big.npz" in err and "int32" in err and "\n" not in err and not (tmp_path / "s").exists()


def test_an_object_array_npz_is_refused_without_unpickling(tmp_path):
    """Fails before issue 15: the message was numpy's allow_pickle advice; now it says the file holds objects."""
    rows = np.array([[0, 1, 2]])
    np.savez(tmp_path / "obj.npz", indices=rows.astype(object), similarities=np.array([[3.0, 2.0, 1.0]]))
    with pytest.raises(ValueError, match=r"obj.npz: contains Python objects or code \(array 'indices'\)"):
        import_alignet_npz(tmp_path / "obj.npz", tmp_path / "s")
