"""A single-file --out that names a folder (an existing one, or a name ending in a slash) is a
one-line error naming it, before any work (user review, finding 1: evaluate and export-triplets
ended in an IsADirectoryError traceback, and `evaluate --out newdir/` wrote a FILE named newdir)."""

import numpy as np
import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main
from fastalign.io.atomic import atomic_write_json


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_small_inputs(tmp_path_factory.mktemp("outfile"), steps=2, progress=False)


@pytest.fixture(scope="module")
def store(data):
    out = data / "store"
    assert main(["make-triplets", "--embeddings", str(data / "teacher.npy"), "--clusters", "3", "--num", "100",
                 "--kmeans-iters", "2", "--no-histogram", "--quiet", "--out", str(out)]) == 0
    return out


def _evaluate(data, out):
    return ["evaluate", "--features", str(data / "feats.npy"), "--triplets", str(data / "human.txt"), "--quiet",
            "--out", out]


def _export(store, out):
    return ["export-triplets", str(store), "--format", "alignet-npz", "--out", out]


def _split(data, out):
    return ["split-triplets", str(data / "human.txt"), "--train", out, "--heldout", str(data / "held.txt")]


def _embed(data, out):
    return ["embed", "--checkpoint", str(data / "no-run"), "--out", out]


@pytest.mark.parametrize("command, suffix", [(_evaluate, ".json"), (_export, ".npz"), (_split, ".txt"),
                                             (_embed, ".npy")])
@pytest.mark.parametrize("kind", ["existing folder", "trailing slash"])
def test_a_single_file_out_that_names_a_folder_is_refused(data, store, tmp_path, capsys, command, suffix, kind):
    if kind == "existing folder":
        target = tmp_path / "folder"
        target.mkdir()
        out = str(target)
    else:
        target = tmp_path / "newdir"
        out = str(target) + "/"
    base = store if command is _export else data
    rc = main(command(base, out))
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{out} is a folder; give a file name ending in {suffix}" in err
    if kind == "existing folder":
        assert list(target.iterdir()) == []  # nothing written into it
    else:
        assert not target.exists()  # no FILE named newdir


def test_the_atomic_writer_refuses_a_folder_by_name(tmp_path):
    """The depth below the CLI: every single-file writer gets the same one-line error."""
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        atomic_write_json(tmp_path, {"a": 1})
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        atomic_write_json(str(tmp_path / "new") + "/", {"a": 1})
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir()] == []
    atomic_write_json(tmp_path / "ok.json", {"a": np.int64(1)})  # a file name still works
    assert (tmp_path / "ok.json").read_text().strip().startswith("{")
