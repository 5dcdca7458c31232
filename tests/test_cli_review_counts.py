"""Counts of 0 are refused, not run into an empty result (user review, finding 4: `make-triplets
--num 0` exited 0 with an empty store)."""

import pytest
from small_inputs import write_small_inputs

from fastalign.cli.main import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_small_inputs(tmp_path_factory.mktemp("counts"), steps=2, progress=False)


@pytest.mark.parametrize("flag, value, message", [
    ("--num", "0", "num must be an integer >= 1, got 0"),
    ("--num", "-3", "num must be an integer >= 1, got -3"),
    ("--clusters", "0", "clusters must be an integer >= 1, got 0"),
    ("--shard-size", "0", "shard_size must be an integer >= 1, got 0"),
    ("--chunk-size", "0", "chunk_size must be an integer >= 1, got 0"),
    ("--label-batch", "0", "label_batch must be an integer >= 1, got 0"),
])
def test_make_triplets_refuses_a_zero_count(data, tmp_path, capsys, flag, value, message):
    argv = ["make-triplets", "--embeddings", str(data / "teacher.npy"), "--clusters", "3", "--num", "100",
            "--kmeans-iters", "2", "--no-histogram", "--quiet", "--out", str(tmp_path / "s")]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # refused before anything was created
