"""A row-count mismatch between two inputs names both, their counts, and the THINGS count when one is
bundled (user review, finding 9: "--human-embedding has 1854 rows but the features have 30" named no file)."""

import numpy as np

from fastalign.cli.main import main
from fastalign.io.resolve import rows_mismatch


def test_evaluate_names_both_inputs_and_the_things_count(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.ones((30, 4), np.float32))
    np.savetxt(tmp_path / "t.txt", [[0, 1, 2], [3, 4, 5]], fmt="%d")
    rc = main(["evaluate", "--features", str(tmp_path / "f.npy"), "--triplets", str(tmp_path / "t.txt"),
               "--human-embedding", "things:spose49", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert (f"--human-embedding things:spose49 has 1,854 rows but --features {tmp_path / 'f.npy'} has 30; every "
            f"input must list the same objects in the same order (the bundled THINGS data has 1,854 objects, so "
            f"{tmp_path / 'f.npy'} lists other objects)") in err


def test_two_files_get_no_things_hint():
    msg = rows_mismatch(("student features", "s.npy", 1854), ("teacher features", "t.npy", 1000))
    assert msg.startswith("student features s.npy has 1,854 rows but teacher features t.npy has 1,000;")
    assert "THINGS" not in msg
