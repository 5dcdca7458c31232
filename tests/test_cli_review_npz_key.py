"""`FILE.npz:KEY` names one array of a features file that holds several, wherever a features path is
taken (user review, finding 3: evaluate said "pass key= to choose one", which only fit-teacher could)."""

import numpy as np
import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main
from fastalign.io import load_features
from fastalign.io.resolve import feature_path, resolve_features


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = write_small_inputs(tmp_path_factory.mktemp("npzkey"), steps=2, progress=False)
    rng = np.random.default_rng(1)
    np.savez(root / "two.npz", a=rng.normal(size=(30, 6)).astype(np.float32),
             b=rng.normal(size=(30, 4)).astype(np.float32))
    return root


def test_the_loader_reads_file_colon_key(data):
    with np.load(data / "two.npz") as z:
        a, b = z["a"], z["b"]
    assert np.array_equal(load_features(f"{data / 'two.npz'}:b"), b)
    assert np.array_equal(resolve_features(f"{data / 'two.npz'}:a"), a)
    assert np.array_equal(resolve_features(str(data / "two.npz"), key="a"), a)  # key= still works
    assert feature_path(f"{data / 'two.npz'}:a") == data / "two.npz"  # the file a cache key hashes


def test_errors_name_the_file_colon_key_form(data):
    two = data / "two.npz"
    with pytest.raises(ValueError, match=rf"holds several arrays \['a', 'b'\]; pass {two}:a or {two}:b"):
        load_features(two)
    with pytest.raises(ValueError, match=rf"holds no array 'c'; its arrays: {two}:a, {two}:b"):
        load_features(f"{two}:c")
    with pytest.raises(ValueError, match="names the array 'a' but key='b'"):
        load_features(f"{two}:a", key="b")
    with pytest.raises(FileNotFoundError, match="nope.npz: features file not found"):
        resolve_features(str(data / "nope.npz:a"))


def _rc(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_evaluate_and_make_triplets_take_file_colon_key(data, tmp_path, capsys):
    rc, err = _rc(capsys, "evaluate", "--features", data / "two.npz", "--triplets", data / "human.txt", "--quiet")
    assert rc == 2 and f"pass {data / 'two.npz'}:a or {data / 'two.npz'}:b" in err
    rc, err = _rc(capsys, "evaluate", "--features", f"{data / 'two.npz'}:b", "--triplets", data / "human.txt",
                  "--quiet", "--out", tmp_path / "r.json")
    assert rc == 0, err
    rc, err = _rc(capsys, "make-triplets", "--embeddings", f"{data / 'two.npz'}:b", "--clusters", "3", "--num", "100",
                  "--kmeans-iters", "2", "--no-histogram", "--quiet", "--out", tmp_path / "s")
    assert rc == 0, err


def test_fit_teacher_and_embed_take_file_colon_key(data, tmp_path, capsys):
    fit = ["fit-teacher", "--triplets", data / "human.txt", "--lambdas", "0.1", "--max-iter", "5", "--quiet"]
    rc, err = _rc(capsys, *fit, "--features", f"{data / 'two.npz'}:a", "--out", tmp_path / "t1")
    assert rc == 0, err
    rc, err = _rc(capsys, *fit, "--features", data / "two.npz", "--key", "a", "--out", tmp_path / "t2")
    assert rc == 0, err
    rc, err = _rc(capsys, *fit, "--features", f"{data / 'two.npz'}:a", "--key", "b", "--out", tmp_path / "t3")
    assert rc == 2 and "give one" in err
    rc, err = _rc(capsys, "distill", "--config", data / "distill.toml", "--out", tmp_path / "d", "--quiet")
    assert rc == 0, err
    rc, err = _rc(capsys, "embed", "--checkpoint", tmp_path / "d", "--features", f"{data / 'two.npz'}:a",
                  "--out", tmp_path / "e.npy", "--quiet")
    assert rc == 0, err
    assert np.load(tmp_path / "e.npy").shape[0] == 30
