"""`fastalign evaluate --calibration-triplets`: the temperature fitted as `fastalign run`'s report fits it
for every representation (a review: evaluate scored raw features at T = 1, so its NLL and ECE could not
be compared with the report's), never on the triplets it is then scored on."""

import json

import numpy as np

from fastalign.eval import fit_temperature
from fastalign.io.resolve import resolve_features, resolve_triplets


def test_temperature_is_fitted_on_the_calibration_triplets(tmp_path, run_cli):
    trip = resolve_triplets("things:test_10")
    np.savetxt(tmp_path / "test.txt", trip[:4000], fmt="%d")
    np.savetxt(tmp_path / "calib.txt", trip[4000:8000], fmt="%d")
    rc, _, err = run_cli("--features", "things:clip", "--similarity", "cosine", "--triplets", tmp_path / "test.txt",
                         "--calibration-triplets", tmp_path / "calib.txt", "--quiet", "--out", tmp_path / "r.json")
    assert rc == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    want = fit_temperature(resolve_features("things:clip"), trip[4000:8000], "cosine").temperature
    assert abs(report["temperature"] - want) < 1e-9 and want < 0.5
    assert report["temperature_source"].startswith("fitted on 4,000 calibration triplets")
    # an explicit --temperature still wins
    rc, _, err = run_cli("--features", "things:clip", "--similarity", "cosine", "--triplets", tmp_path / "test.txt",
                         "--calibration-triplets", tmp_path / "calib.txt", "--temperature", "0.3", "--quiet",
                         "--out", tmp_path / "r2.json")
    assert rc == 0 and json.loads((tmp_path / "r2.json").read_text())["temperature"] == 0.3


def test_calibration_triplets_must_be_other_triplets(tmp_path, run_cli):
    trip = resolve_triplets("things:test_10")
    np.savetxt(tmp_path / "test.txt", trip[:2000], fmt="%d")
    np.savetxt(tmp_path / "copy.txt", trip[:1000], fmt="%d")
    rc, _, err = run_cli("--features", "things:clip", "--triplets", tmp_path / "test.txt",
                         "--calibration-triplets", tmp_path / "test.txt")
    assert rc == 2 and "is the calibration triplets file" in err, err
    rc, _, err = run_cli("--features", "things:clip", "--triplets", tmp_path / "test.txt",
                         "--calibration-triplets", tmp_path / "copy.txt")
    assert rc == 2 and "are also calibration triplets" in err, err
