"""fastalign.io: atomic writes, feature/triplet/transform files and their errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fastalign.io import (
    atomic_save_npz,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_triplets_fit,
    load_features,
    load_triplets,
    order_rows,
    save_triplets,
    save_triplets_txt,
)
from fastalign.teacher import AffineTransform, load_transform, save_transform


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ atomic


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["f.txt"]


def test_atomic_write_exception_keeps_target(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"new-partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_json_and_npz(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None}
    x = _rng().standard_normal((4, 3))
    atomic_save_npz(tmp_path / "a.npz", x=x)
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["x"], x)
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass


def test_atomic_write_chunks_checksums_the_bytes_it_writes(tmp_path):
    import hashlib

    from fastalign.io.atomic import HASH_NAME, atomic_write_chunks, file_checksum

    parts = [np.arange(6, dtype="<i4").reshape(2, 3), np.ones((2, 3), "<f2"), b"tail"]
    digest = atomic_write_chunks(tmp_path / "f.bin", parts)
    raw = (tmp_path / "f.bin").read_bytes()
    assert raw == b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    # blake2b-256, the checksum every triplet-store manifest records
    assert HASH_NAME == "blake2b" and digest == hashlib.blake2b(raw, digest_size=32).hexdigest()
    assert file_checksum(tmp_path / "f.bin") == digest


def test_named_tmp_uses_the_recognisable_name_and_cleans_up(tmp_path, monkeypatch):
    from fastalign.io.atomic import TMP_PREFIX, atomic_write_chunks, tmp_name

    target = tmp_path / "shard-00000001.bin"
    assert tmp_name(target) == tmp_path / f"{TMP_PREFIX}shard-00000001.bin.{os.getpid()}"
    seen = []

    def chunks():
        seen.extend(p.name for p in tmp_path.iterdir())  # the temp file exists while the data streams
        yield b"abc"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_chunks(target, chunks(), named_tmp=True)
    assert seen == [tmp_name(target).name] and list(tmp_path.iterdir()) == []
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True, named_tmp=True)
    assert (tmp_path / "m.json").read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_read_json_names_a_damaged_file(tmp_path):
    from fastalign.io.atomic import read_json

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


# ------------------------------------------------------------------ features


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz_key", "pt", "pt_dict", "h5", "txt"])
def test_load_features_formats(tmp_path, fmt):
    x = _rng().standard_normal((7, 5)).astype(np.float32)
    key = None
    if fmt == "npy":
        path = tmp_path / "f.npy"
        np.save(path, x)
    elif fmt == "npz":
        path = tmp_path / "f.npz"
        np.savez(path, anything=x)
    elif fmt == "npz_key":
        path = tmp_path / "f.npz"
        np.savez(path, features=x, other=x[:2])
    elif fmt == "pt":
        path = tmp_path / "f.pt"
        torch.save(torch.from_numpy(x), path)
    elif fmt == "pt_dict":
        path = tmp_path / "f.pt"
        torch.save({"emb": torch.from_numpy(x), "ids": torch.arange(7)}, path)
        key = "emb"
    elif fmt == "h5":
        h5py = pytest.importorskip("h5py")
        path = tmp_path / "f.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=x)
    else:
        path = tmp_path / "f.txt"
        np.savetxt(path, x, fmt="%.9g")
    out = load_features(path, key=key)
    assert out.shape == (7, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


def test_load_features_ambiguous_npz_needs_key(tmp_path):
    np.savez(tmp_path / "f.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"pass .*f\.npz:a or .*f\.npz:b"):
        load_features(tmp_path / "f.npz")
    with pytest.raises(ValueError, match="holds no array 'c'"):
        load_features(tmp_path / "f.npz", key="c")


def test_load_features_nan_names_row(tmp_path):
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 1] = np.nan
    np.save(tmp_path / "f.npy", x)
    with pytest.raises(ValueError, match="row 4"):
        load_features(tmp_path / "f.npy")


def test_load_features_unknown_format(tmp_path):
    path = tmp_path / "f.parquet"
    path.write_bytes(b"xx")
    with pytest.raises(ValueError, match=r"f\.parquet.*unknown feature file format.*\.npy"):
        load_features(path)


def test_load_features_missing_and_bad_rank(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "nope.npy")
    np.save(tmp_path / "v.npy", np.zeros(3))
    with pytest.raises(ValueError, match="2-D"):
        load_features(tmp_path / "v.npy")


def test_file_names_count_and_order(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "f.npy", x)
    names = ["zebra/zebra_01b.jpg", "ant/ant_01b.jpg", "ant/ant_02s.jpg", "cat/cat_01b.jpg"]
    (tmp_path / "file_names.txt").write_text("\n".join(names) + "\n")
    out = load_features(tmp_path / "f.npy", file_names=tmp_path / "file_names.txt", order=["ant", "cat", "zebra"])
    np.testing.assert_array_equal(out, x[[1, 3, 0]])
    np.testing.assert_array_equal(order_rows(names, ["cat/cat_01b.jpg", "ant_02s"]), [3, 2])
    with pytest.raises(ValueError, match="'dog'"):
        order_rows(names, ["dog"])
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="lists 2 names but .* 4 feature rows"):
        load_features(tmp_path / "f.npy", file_names=tmp_path / "short.txt")


# ------------------------------------------------------------------ triplets


def test_triplets_text_and_npy_round_trip(tmp_path):
    t = _rng().integers(0, 50, size=(20, 3))
    t = t[(t[:, 0] != t[:, 1]) & (t[:, 0] != t[:, 2]) & (t[:, 1] != t[:, 2])]
    part = np.arange(len(t)) % 3
    save_triplets_txt(tmp_path / "t.txt", t)
    tab = load_triplets(tmp_path / "t.txt")
    assert tab.triplets.dtype == np.int64 and tab.participants is None
    np.testing.assert_array_equal(tab.triplets, t)
    for name in ("p.txt", "p.npy", "p.npz"):
        save_triplets(tmp_path / name, t, part)
        tab = load_triplets(tmp_path / name)
        np.testing.assert_array_equal(tab.triplets, t)
        np.testing.assert_array_equal(tab.participants, part)
    np.save(tmp_path / "three.npy", t.astype(np.int32))
    np.testing.assert_array_equal(load_triplets(tmp_path / "three.npy").triplets, t)


def test_triplets_bad_inputs(tmp_path):
    (tmp_path / "bad.txt").write_text("0 1 2\n3 4\n")
    with pytest.raises(ValueError, match="bad.txt"):
        load_triplets(tmp_path / "bad.txt")
    np.save(tmp_path / "w.npy", np.zeros((3, 5), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(k, 3\) or \(k, 4\)"):
        load_triplets(tmp_path / "w.npy")
    (tmp_path / "rep.txt").write_text("0 1 2\n5 5 6\n")
    with pytest.raises(ValueError, match="line 2 .* repeats"):
        load_triplets(tmp_path / "rep.txt")
    (tmp_path / "neg.txt").write_text("0 1 2\n0 -1 6\n")
    with pytest.raises(ValueError, match="line 2 .* negative"):
        load_triplets(tmp_path / "neg.txt")
    (tmp_path / "frac.txt").write_text("0 1 2.5\n")
    with pytest.raises(ValueError, match="line 1 .* not integer"):
        load_triplets(tmp_path / "frac.txt")
    (tmp_path / "t.json").write_text("[]")
    with pytest.raises(ValueError, match="unknown triplet file format"):
        load_triplets(tmp_path / "t.json")


def test_check_triplets_fit_names_first_bad_row():
    t = np.array([[0, 1, 2], [3, 4, 5], [9, 10, 1], [11, 0, 1]])
    check_triplets_fit(t, 12, "ok")
    with pytest.raises(ValueError, match=r"tr\.txt: row 2 = \[9, 10, 1\] indexes past the 10 feature rows"):
        check_triplets_fit(t, 10, "tr.txt")


# ------------------------------------------------------------------ transforms


def _random_transform(d=6, d_out=None, bias=True, per_dim=False, seed=0, calibrated=False):
    rng = _rng(seed)
    x = rng.standard_normal((30, d)).astype(np.float32) * 3 + 1
    t = AffineTransform.from_features(x, per_dim=per_dim, dim_out=d_out, bias=bias)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(rng.standard_normal(t.weight.shape).astype(np.float32)))
        if bias:
            t.bias.copy_(torch.from_numpy(rng.standard_normal(t.bias.shape).astype(np.float32)))
    if calibrated:
        t.set_temperature(0.731)
    return t, x


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("kind", ["scalar", "per_dim", "rect_nobias", "calibrated"])
def test_transform_round_trip_bit_exact(tmp_path, suffix, kind):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    t, x = _random_transform(
        d_out=4 if kind == "rect_nobias" else None,
        bias=kind != "rect_nobias",
        per_dim=kind == "per_dim",
        calibrated=kind == "calibrated",
    )
    path = tmp_path / f"transform{suffix}"
    save_transform(path, t)
    u = load_transform(path)
    for k, v in t.to_arrays().items():
        w = u.to_arrays()[k]
        assert v.dtype == w.dtype and v.shape == w.shape
        np.testing.assert_array_equal(v, w)
    assert ("temperature" in u.to_arrays()) == (kind == "calibrated")
    xt = torch.from_numpy(x)
    assert torch.equal(t(xt), u(xt))


def test_transform_npz_has_glocal_keys(tmp_path):
    t, _ = _random_transform(calibrated=True)
    save_transform(tmp_path / "transform.npz", t)
    with np.load(tmp_path / "transform.npz") as z:
        assert set(z.files) == {"weights", "bias", "mean", "std", "temperature"}
        assert z["weights"].shape == (6, 6) and z["bias"].shape == (6,)
        assert z["mean"].shape == () and z["std"].shape == ()
    # Loading a directory finds transform.npz.
    assert load_transform(tmp_path).dim_in == 6


def test_load_glocal_style_file(tmp_path):
    """A gLocal transform: weights/bias/mean/std; applying it matches the numpy formula."""
    rng = _rng(3)
    w, b = rng.standard_normal((5, 5)), rng.standard_normal(5)
    mean, std = np.float64(0.3), np.float64(2.5)
    np.savez(tmp_path / "g.npz", weights=w, bias=b, mean=mean, std=std)
    t = load_transform(tmp_path / "g.npz")
    x = rng.standard_normal((8, 5))
    np.testing.assert_allclose(t.transform(x), ((x - mean) / std) @ w + b, rtol=1e-12, atol=1e-12)


def test_transform_dim_mismatch_and_bad_files(tmp_path):
    t, _ = _random_transform(d=6)
    save_transform(tmp_path / "t.npz", t)
    with pytest.raises(ValueError, match="transform expects D=6, features have D=5"):
        load_transform(tmp_path / "t.npz", dim_in=5)
    with pytest.raises(ValueError, match="transform expects D=6, features have D=5"):
        t(torch.zeros(2, 5))
    np.savez(tmp_path / "bad.npz", weights=np.zeros((4, 3)), bias=np.zeros(4))
    with pytest.raises(ValueError, match=r"'bias' must have shape \(3,\)"):
        load_transform(tmp_path / "bad.npz")
    np.savez(tmp_path / "nomat.npz", W=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="missing 'weights'"):
        load_transform(tmp_path / "nomat.npz")
    np.savez(tmp_path / "badstd.npz", weights=np.zeros((4, 4)), std=np.ones(3))
    with pytest.raises(ValueError, match="'std' must be a scalar or shape"):
        load_transform(tmp_path / "badstd.npz")
    (tmp_path / "t.pkl").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown transform file format"):
        load_transform(tmp_path / "t.pkl")
    with pytest.raises(ValueError, match="unknown transform file format"):
        save_transform(tmp_path / "t.pkl", t)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_transform(tmp_path / "junk.npz")


def test_check_features_names_the_first_non_finite_entry_past_the_first_chunk():
    from fastalign.io.features import check_features

    x = np.random.default_rng(0).normal(size=(5000, 300)).astype(np.float32)
    assert check_features(x) is x  # float32 passes through without a copy
    x[4000, 7] = np.inf
    x[4500, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 4000 has a non-finite value \(inf\) in column 7"):
        check_features(x, "feats.npy")


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    from fastalign.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode


# -- untrusted files (issue 15, item 7): one line naming the file, never pickle advice ----------

class _Payload:
    """Unpickling this would create the file named by ``marker``: a test that the code never runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_clear_line(exc, path):
    msg = str(exc)
    assert str(path) in msg and "\n" not in msg
    assert "weights_only=False" not in msg and "allow_pickle=" not in msg and "will likely succeed" not in msg
    return msg


def test_a_pt_file_with_code_is_refused_as_such(tmp_path):
    """Fails before issue 15: torch's 'Weights only load failed ... re-running with weights_only=False
    will likely succeed' reached the user."""
    marker = tmp_path / "ran"
    torch.save({"features": torch.ones(3, 2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError) as err:
        load_features(tmp_path / "evil.pt")
    assert "contains Python objects or code" in _one_clear_line(err.value, tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_truncated_pt_file_is_named(tmp_path):
    torch.save(torch.ones(4, 2), tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:60])
    with pytest.raises(ValueError, match="not a readable torch file") as err:
        load_features(tmp_path / "cut.pt")
    _one_clear_line(err.value, tmp_path / "cut.pt")


@pytest.mark.parametrize("reader", ["features", "triplets"])
def test_object_dtype_npy_and_npz_are_refused(tmp_path, reader):
    """Fails before issue 15: numpy's 'Object arrays cannot be loaded when allow_pickle=False', no file name."""
    load = load_features if reader == "features" else load_triplets
    arr = np.array([[0, 1, 2], [1, 2, 3]], dtype=object)
    np.save(tmp_path / "obj.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "obj.npz", features=arr, triplets=arr)
    for name in ("obj.npy", "obj.npz"):
        with pytest.raises(ValueError, match="contains Python objects or code") as err:
            load(tmp_path / name)
        _one_clear_line(err.value, tmp_path / name)


def test_a_pickle_or_junk_under_an_npy_name(tmp_path):
    import pickle

    marker = tmp_path / "ran"
    (tmp_path / "p.npy").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="contains Python objects or code") as err:
        load_features(tmp_path / "p.npy")
    _one_clear_line(err.value, tmp_path / "p.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="not a .npy file") as err:
        load_triplets(tmp_path / "junk.npy")
    _one_clear_line(err.value, tmp_path / "junk.npy")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["header too large", "truncated", "junk"])
def test_a_damaged_safetensors_file_is_named(tmp_path, damage):
    """Fails before issue 15 (no such reader): SafetensorError 'header too large' came out raw."""
    import struct

    from safetensors.numpy import save_file

    from fastalign.io.untrusted import UnreadableFileError, read_safetensors

    f = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(f))
    assert read_safetensors(f)["w"].shape == (4, 4) and read_safetensors(f, as_torch=True)["w"].dtype == torch.float32
    data = f.read_bytes()
    bad = {"header too large": struct.pack("<Q", 1 << 60) + data[8:], "truncated": data[: len(data) - 20],
           "junk": b"\x01\x02"}[damage]
    f.write_bytes(bad)
    with pytest.raises(UnreadableFileError, match="not a readable .safetensors file") as err:
        read_safetensors(f)
    _one_clear_line(err.value, f)


def test_triplet_tables_refuse_indices_an_int64_cast_would_wrap(tmp_path):
    """Fails before issue 15: 1e20 in a text table and 2**63 as uint64 came out as negative indices."""
    np.savetxt(tmp_path / "f.txt", np.array([[0, 1, 1e20]]))
    with pytest.raises(ValueError, match="too large to be an item index"):
        load_triplets(tmp_path / "f.txt")
    np.save(tmp_path / "u.npy", np.array([[0, 1, 2 ** 63]], dtype=np.uint64))
    with pytest.raises(ValueError, match="too large to be an item index"):
        load_triplets(tmp_path / "u.npy")


def test_fault_points_kill_only_when_named(tmp_path):
    """FASTALIGN_FAULT=NAME:N SIGKILLs at the N-th hit; unset or another name does nothing."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from fastalign.io.atomic import atomic_write\n"
            "for i in range(3):\n"
            "    with atomic_write(sys.argv[1] + f'/f{i}', 'w', fault='t') as fh: fh.write('x')\n")
    env = dict(os.environ, FASTALIGN_FAULT="t.before_rename:2")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True)
    assert p.returncode == -9
    assert (tmp_path / "f0").exists() and not (tmp_path / "f1").exists()
    assert any(f.name.startswith(".f1.") for f in tmp_path.iterdir())  # the fsynced temp file, not renamed
    env["FASTALIGN_FAULT"] = "other.point"
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env).returncode == 0
    assert (tmp_path / "f2").exists()


@pytest.mark.parametrize("kind", ["labels", "categories"])
def test_object_dtype_labels_and_categories_are_refused_naming_the_file(tmp_path, kind):
    """Before the resolver used the untrusted-file readers, numpy's own error came without the file."""
    from fastalign.io.resolve import resolve_categories, resolve_labels

    path = tmp_path / f"{kind}.npy"
    np.save(path, np.array([object(), 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=rf"{kind}\.npy.*refused"):
        (resolve_labels if kind == "labels" else resolve_categories)(str(path))


def test_one_based_triplets_get_a_hint(tmp_path):
    """Before: a 1-based file that reached index N said only 'indexes past', and one that stayed in range
    scored chance silently."""
    from fastalign.io import check_triplets_fit

    rng = np.random.default_rng(0)
    zero_based = np.stack([rng.permutation(10)[:3] for _ in range(200)])
    with pytest.raises(ValueError, match="looks 1-based"):
        check_triplets_fit(zero_based + 1, 10, "t.txt")
    in_range = np.stack([rng.permutation(9)[:3] + 1 for _ in range(200)])  # 1..9 of 10 rows
    with pytest.warns(UserWarning, match="index 0 never appears"):
        check_triplets_fit(in_range, 10, "t.txt")


def test_empty_triplet_file_is_an_empty_table_without_warnings(tmp_path):
    import warnings

    path = tmp_path / "empty.txt"
    path.write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_triplets(path)) == 0


def test_alignet_npz_export_reads_as_triplets(tmp_path):
    """Before: evaluate --triplets could not read fastalign's own export-triplets --format alignet-npz."""
    path = tmp_path / "export.npz"
    idx = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int32)
    np.savez(path, indices=idx, similarities=np.zeros((2, 3), np.float32), filenames=np.array(["a"] * 6))
    assert load_triplets(path).triplets.tolist() == idx.tolist()
