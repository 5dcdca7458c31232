"""Fault injection for make-triplets: SIGKILL at named points, resume, compare byte for byte (issue 15).

Each run is killed by ``FASTALIGN_FAULT=POINT:N`` (``fastalign.io.faults``) at
an exact moment: after k-means saved its labels but before ``kmeans.json``,
with a shard's temp file written but not fsynced, fsynced but not renamed,
renamed but not yet in the manifest, half-way through a manifest's temp file,
before and after a manifest's rename, in the training and in the validation
store. The run is then resumed with the same options and every file it wrote
must equal an uninterrupted run's, with no temp file left behind.

Before issue 15 there were no fault points, so no test could stop a run at
most of these moments (the older test could pause only inside a shard write).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastalign.triplets import TripletStore
from fastalign.triplets.generate import GenerateOptions, generate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "import sys\nfrom fastalign.triplets.generate import GenerateOptions, generate\ngenerate(GenerateOptions(**eval(sys.argv[1])))\n"

# Train: 5 shards of 100 (manifest writes 1 = start, 2..6 = shards, 7 = complete); val: 1 shard
# (shard write 6; manifest writes 8 = start, 9 = shard, 10 = complete). N counts hits per process.
POINTS = [
    "kmeans.saved",
    "shard.written:1",
    "shard.before_rename:3",
    "shard.renamed:5",
    "manifest.partial:4",
    "manifest.before_rename:7",
    "manifest.renamed:7",
    "shard.before_rename:6",
    "manifest.partial:10",
]


def options(inputs: Path, out: Path) -> dict:
    return dict(embeddings=str(inputs / "emb.npy"), transform=str(inputs / "t.npz"), file_names=str(inputs / "names.txt"),
                out=str(out), num=500, val_num=100, val_fraction=0.2, shard_size=100, chunk_size=50, clusters=4,
                kmeans_iters=3, strategy="cluster_border:0.7,random:0.3", sim_dtype="float16", progress=False,
                histogram=False)


def _without_timings(doc):
    """A k-means report with its wall-clock fields (``seconds``, ``init_seconds``) removed, at any depth."""
    if isinstance(doc, dict):
        return {k: _without_timings(v) for k, v in doc.items() if not k.endswith("seconds")}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


def tree(root: Path) -> dict:
    """Every file a run leaves, by relative path; timings (summary.json, kmeans.json seconds) left out."""
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or f.name == "summary.json":
            continue
        if f.name == "kmeans.json":
            out[rel] = _without_timings(json.loads(f.read_text()))
        else:
            out[rel] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The inputs, an uninterrupted run, and one run killed at each point (the kills run concurrently)."""
    from fastalign.teacher import save_transform
    from fastalign.teacher.transform import AffineTransform

    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 4)).astype(np.float32)
    np.save(d / "emb.npy", feats)
    tr = AffineTransform.from_features(feats)
    tr.set_temperature(0.7, calibrated=True)
    save_transform(d / "t.npz", tr)
    (d / "names.txt").write_text("".join(f"img{i}.jpg\n" for i in range(60)))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = {}
    for i, point in enumerate(POINTS):
        out = d / f"killed{i}"
        procs[point] = (out, subprocess.Popen([sys.executable, "-c", SCRIPT, repr(options(d, out))],
                                              env=dict(env, FASTALIGN_FAULT=point), stderr=subprocess.PIPE))
    generate(GenerateOptions(**options(d, d / "ref")))
    rcs = {point: (out, p.wait(timeout=300), p.stderr.read().decode()[-2000:]) for point, (out, p) in procs.items()}
    return d, tree(d / "ref"), rcs


@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_a_point_resumes_to_the_same_bytes(runs, point):
    d, ref, rcs = runs
    out, rc, err = rcs[point]
    assert rc == -9, f"the run was not killed at {point} (rc {rc}): {err}"
    assert not (out / "summary.json").exists()  # written last: the run did not finish
    generate(GenerateOptions(**options(d, out), resume=True))
    got = tree(out)
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if got[k] != ref[k]] == []
    assert not [f for f in out.rglob("*") if f.name.startswith(".tmp-") or f.name.endswith(".tmp")]
    for store in (out, out / "val"):
        TripletStore.open(store)  # verified: checksums, layout, digest, temperature
