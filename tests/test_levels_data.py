"""The Levels dataset: restricted unpickling, the released format, and scoring against a plain reference."""

import json
import os
import pickle
from collections import Counter, defaultdict

import numpy as np
import pytest

from fastalign.datasets.levels import load_levels, load_plain_pickle, match_images
from fastalign.eval.levels_data import LevelsOptions, levels_report

PNG = b"\x89PNG\r\n\x1a\n"
WNIDS = [f"n0{1000000 + 7 * c}" for c in range(6)]
IMAGES = [f"{w}_{k}" for w in WNIDS for k in range(4)]  # 6 classes x 4 images


def trial(a, b, c, chosen, kind="exp_trial", **extra):
    """One trial dict exactly as in the released levels.pkl."""
    paths = [f"{x}.JPEG" for x in (a, b, c)]
    sel = paths[chosen] if chosen >= 0 else "No image selected"
    return {"rt": 1234.5, "image1Path": paths[0], "image2Path": paths[1], "image3Path": paths[2],
            "selected_image": sel, "exp_trial_type": kind, **extra}


def write(tmp_path, data, name="levels.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data))
    return path


def plan(seed=0, n_trip=40, lo=3, hi=8, n_people=9):
    """Triplets of every level, each answered by a random number of participants."""
    rng = np.random.default_rng(seed)
    trips, seen = [], set()
    while len(trips) < n_trip:
        kind = rng.integers(3)
        cls = rng.choice(6, 3 - kind if kind < 2 else 3, replace=False)
        if kind == 0:  # fine: one class
            imgs = [IMAGES[cls[0] * 4 + k] for k in rng.choice(4, 3, replace=False)]
        elif kind == 1:  # class boundary: two classes
            imgs = [IMAGES[cls[0] * 4 + k] for k in rng.choice(4, 2, replace=False)] + [IMAGES[cls[1] * 4]]
        else:
            imgs = [IMAGES[c * 4 + rng.integers(4)] for c in cls]
        if tuple(sorted(imgs)) not in seen:
            seen.add(tuple(sorted(imgs)))
            trips.append(imgs)
    data = defaultdict(list)  # the notebook builds a defaultdict(list)
    for imgs in trips:
        people = rng.choice(n_people, rng.integers(lo, hi + 1), replace=False)
        bias = rng.dirichlet([0.5, 0.5, 0.5])
        for p in people:
            order = rng.permutation(3)  # each participant sees the images in their own order
            data[f"sub_{p}"].append(trial(*[imgs[i] for i in order], int(np.argmax(order == rng.choice(3, p=bias)))))
    data["sub_0"].append(trial(IMAGES[0], IMAGES[1], IMAGES[5], 2, kind="catch_trial"))
    data["sub_1"].append(trial(IMAGES[0], IMAGES[5], IMAGES[9], -1))
    return data


def features(seed=1):
    rng = np.random.default_rng(seed)
    names = [f"train/{i.split('_')[0]}/{i}.JPEG" for i in IMAGES]
    return rng.normal(size=(len(IMAGES), 5)), names


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalPayload:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["os_system", "eval", "numpy", "object"])
def test_restricted_unpickler_refuses_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = {"os_system": {"p": [Evil(marker)]}, "eval": {"p": EvalPayload()},
           "numpy": {"p": np.arange(3)}, "object": {"p": [tmp_path]}}[payload]
    path = write(tmp_path, obj)
    with pytest.raises(ValueError, match="refused to load") as info:
        load_plain_pickle(str(path))
    assert "\n" not in str(info.value)
    assert not marker.exists(), "the payload ran"


def test_restricted_unpickler_admits_plain_data(tmp_path):
    obj = {"a": [1, 2.5, "x", None, True, (1, 2), {3}, frozenset({4})], 7: defaultdict(list, {"k": [1]})}
    for protocol in (0, 2, 3, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert load_plain_pickle(str(path)) == obj


def test_load_released_format(tmp_path):
    data = plan()
    lv = load_levels(str(write(tmp_path, data)))
    n = sum(len(v) for v in data.values())
    assert lv.n_trials == n and lv.catch.sum() == 1 and (lv.chosen < 0).sum() == 1
    assert set(lv.level[~lv.catch]) <= {"fine", "class_boundary", "coarse"}
    # levels derived from WordNet ids agree with a given triplet_type
    first = data["sub_0"][0]
    a, b, c = (first[f"image{i}Path"].split("_")[0] for i in (1, 2, 3))
    kinds = {1: "within_class", 2: "class_border", 3: "between_class"}
    given = {"sub_0": [dict(first, triplet_type=kinds[len({a, b, c})])]}
    assert load_levels(str(write(tmp_path, given, "g.pkl"))).level[0] == lv.level[0]


@pytest.mark.parametrize("case,match", [
    ("unknown_field", "unknown field"), ("trial_type", "unknown exp_trial_type"),
    ("selected", "not one of the trial's three images"), ("not_dict", "dict participant"),
    ("triplet_type", "unknown triplet_type"), ("missing_field", "missing field")])
def test_bad_levels_files(tmp_path, case, match):
    t = trial(IMAGES[0], IMAGES[4], IMAGES[8], 0)
    if case == "unknown_field":
        t["worker_id"] = "x"
    elif case == "trial_type":
        t["exp_trial_type"] = "practice"
    elif case == "selected":
        t["selected_image"] = "n099_1.JPEG"
    elif case == "triplet_type":
        t["triplet_type"] = "odd"
    elif case == "missing_field":
        del t["exp_trial_type"]
    data = [t] if case == "not_dict" else {"p": [t]}
    with pytest.raises(ValueError, match=match) as info:
        load_levels(str(write(tmp_path, data)))
    assert "\n" not in str(info.value)


def majority_reference(choices):
    """The notebook's majority vote of a list of choices: one answer, or the set of tied answers."""
    counts = Counter(choices).most_common()
    top = [c for c, k in counts if k == counts[0][1]]
    return top


def reference(lv, emb, names, min_resp=4):
    """Plain-Python scoring of triplets with exactly ``min_resp`` responses (no subsampling):
    majority accuracy (ties: 1/k credit), leave-one-out ceiling, agreement, per-trial accuracy."""
    stem_row = {n.split("/")[-1].split(".")[0]: i for i, n in enumerate(names)}
    groups = defaultdict(list)
    per_trial = defaultdict(list)
    for imgs, ch, level, catch in zip(lv.images, lv.chosen, lv.level, lv.catch):
        if catch or ch < 0:
            continue
        rows = [stem_row[s] for s in imgs]
        e = emb[rows]
        s = [e[0] @ e[1], e[0] @ e[2], e[1] @ e[2]]
        odd_row = rows[[2, 1, 0][int(np.argmax(s))]]
        groups[tuple(sorted(rows))].append((rows[ch], level, odd_row))
        per_trial[level].append(odd_row == rows[ch])
    out = defaultdict(lambda: defaultdict(list))
    for resp in groups.values():
        if len(resp) != min_resp:
            continue
        choices = [r[0] for r in resp]
        level, odd = resp[0][1], resp[0][2]
        top = majority_reference(choices)
        out[level]["acc"].append((odd in top) / len(top))
        loo = []
        for i, c in enumerate(choices):
            t = majority_reference(choices[:i] + choices[i + 1:])
            loo.append((c in t) / len(t))
        out[level]["ceiling"].append(np.mean(loo))
        out[level]["agreement"].append(Counter(choices).most_common(1)[0][1] / min_resp)
    return out, {k: float(np.mean(v)) for k, v in per_trial.items()}


def test_scoring_matches_plain_reference(tmp_path):
    data = plan(seed=3, n_trip=60, lo=4, hi=4)  # exactly 4 responses: the draws keep them all
    lv = load_levels(str(write(tmp_path, data)))
    emb, names = features()
    rep = levels_report(emb, lv, names, options=LevelsOptions(n_seeds=3))
    ref, ref_trial = reference(lv, emb, names)
    for level, d in ref.items():
        m = rep["majority"][level]
        assert m["n_triplets"] == len(d["acc"])
        assert m["accuracy"]["mean"] == pytest.approx(np.mean(d["acc"]))
        assert m["accuracy"]["std"] == pytest.approx(0.0)
        assert m["noise_ceiling"]["mean"] == pytest.approx(np.mean(d["ceiling"]))
        assert m["human_agreement"]["mean"] == pytest.approx(np.mean(d["agreement"]))
        assert rep["per_trial"][level]["accuracy"] == pytest.approx(ref_trial[level])
    assert rep["counts"]["catch_trials"] == 1 and rep["counts"]["no_response"] == 1
    assert any(d["tie_rate"]["mean"] > 0 for d in rep["majority"].values())
    json.dumps(rep)


def test_subsampling_is_seeded_and_spread_is_reported(tmp_path):
    lv = load_levels(str(write(tmp_path, plan(seed=4, n_trip=50, lo=3, hi=9))))
    emb, names = features()
    a = levels_report(emb, lv, names, options=LevelsOptions(n_seeds=6, seed=1))
    b = levels_report(emb, lv, names, options=LevelsOptions(n_seeds=6, seed=1))
    c = levels_report(emb, lv, names, options=LevelsOptions(n_seeds=6, seed=2))
    assert a == b and a["majority"] != c["majority"]
    acc = a["majority"]["all"]["accuracy"]
    assert len(acc["per_seed"]) == 6 and acc["std"] > 0 and acc["min"] <= acc["mean"] <= acc["max"]
    assert a["majority"]["all"]["n_triplets"] < a["counts"]["unique_triplets"]  # triplets with < 4 answers
    excl = levels_report(emb, lv, names, options=LevelsOptions(n_seeds=2, ties="exclude"))
    assert excl["majority"]["all"]["n_triplets_scored"] <= excl["majority"]["all"]["n_triplets"]


def test_missing_images_error_or_counted(tmp_path):
    lv = load_levels(str(write(tmp_path, plan(seed=5))))
    emb, names = features()
    with pytest.raises(ValueError, match="have no feature row.*--allow-missing"):
        levels_report(emb[1:], lv, names[1:])
    rep = levels_report(emb[1:], lv, names[1:], options=LevelsOptions(allow_missing=True, n_seeds=2))
    assert rep["counts"]["missing_images"] == 1 and rep["counts"]["trials_with_missing_images"] > 0
    rows, missing = match_images(lv.images, names[1:])
    assert missing == [IMAGES[0]] and (rows == -1).any()



def test_cli_levels_data(run_cli, tmp_path):
    pytest.importorskip("matplotlib")
    path = write(tmp_path, plan(seed=6, n_trip=50, lo=4, hi=7))
    emb, names = features()
    np.save(tmp_path / "f.npy", emb.astype(np.float32))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    np.savetxt(tmp_path / "t.txt", [[0, 1, 5], [2, 9, 13]], fmt="%d")
    base = ["--features", tmp_path / "f.npy", "--triplets", tmp_path / "t.txt", "--levels-data", path]
    rc, _, err = run_cli(*base)
    assert rc == 2 and "--file-names" in err.strip().splitlines()[-1]
    out = tmp_path / "r.json"
    rc, stdout, err = run_cli(*base, "--file-names", tmp_path / "names.txt", "--levels-seeds", "3",
                              "--figures", tmp_path / "figs", "--out", out)
    assert rc == 0, err
    rep = json.loads(out.read_text())["levels_dataset"]
    assert set(rep["majority"]) == {"fine", "class_boundary", "coarse", "all"}
    assert len(rep["majority"]["all"]["accuracy"]["per_seed"]) == 3
    assert "Levels dataset [coarse]" in stdout
    assert (tmp_path / "figs" / "levels_dataset.png").read_bytes().startswith(PNG)
    evil = write(tmp_path, {"p": [Evil(tmp_path / "pwned")]}, "evil.pkl")
    rc, _, err = run_cli("--features", tmp_path / "f.npy", "--triplets", tmp_path / "t.txt", "--levels-data", evil,
                         "--file-names", tmp_path / "names.txt")
    assert rc == 2 and "refused to load" in err and not (tmp_path / "pwned").exists()


def test_things_category_levels_are_named(run_cli, tmp_path):
    out = tmp_path / "r.json"
    rc, stdout, err = run_cli("--features", "things:spose49", "--triplets", "things:test_10_ID_smallsample",
                              "--categories", "things", "--out", out)
    assert rc == 0, err
    assert json.loads(out.read_text())["levels"]["name"] == "THINGS category levels"
    assert "THINGS category levels" in stdout
