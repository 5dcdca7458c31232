"""make-triplets end to end: labels vs float64, splits, resume after SIGKILL, ranks == one process, bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_triplets_io import cli, ref_sims

from fastalign.triplets import TripletStore
from fastalign.triplets.generate import GenerateOptions, generate
from fastalign.triplets.label import softmax_np

REPO = Path(__file__).resolve().parents[1]
N, D = 240, 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(N, D)).astype(np.float32)
    np.save(d / "emb.npy", feats)
    np.save(d / "labels.npy", rng.integers(0, 6, N))
    from fastalign.teacher import save_transform
    from fastalign.teacher.transform import AffineTransform

    tr = AffineTransform.from_features(feats)
    with torch.no_grad():
        tr.weight.copy_(torch.from_numpy(rng.normal(size=(D, D)).astype(np.float32) * 0.3))
    tr.set_temperature(0.8, calibrated=True)
    save_transform(d / "t.npz", tr)
    return d


def opts(inputs, out, **kw):
    base = dict(embeddings=str(inputs / "emb.npy"), out=str(out), num=2500, strategy="cluster_border:0.7,random:0.3",
                clusters=8, transform=str(inputs / "t.npz"), val_num=400, shard_size=600, chunk_size=250,
                kmeans_iters=5, progress=False, histogram=False)
    base.update(kw)
    return GenerateOptions(**base)


def tree_bytes(root: Path):
    out = {}
    for sub in ("", "val"):
        p = root / sub
        out[f"{sub}/manifest.json"] = (p / "manifest.json").read_bytes()
        for f in sorted((p / "shards").iterdir()):
            out[f"{sub}/shards/{f.name}"] = f.read_bytes()
    return out


def teacher(inputs):
    from fastalign.teacher import load_transform

    tr = load_transform(inputs / "t.npz")
    return tr.transform(np.load(inputs / "emb.npy")).astype(np.float64), float(tr.temperature)


def test_generate_end_to_end(inputs, tmp_path):
    s = generate(opts(inputs, tmp_path / "s", histogram=True))
    emb, t = teacher(inputs)
    clusters = np.load(tmp_path / "s" / "clusters.npy")
    train, val = TripletStore.open(tmp_path / "s"), TripletStore.open(tmp_path / "s" / "val")
    assert len(train) == 2500 and len(val) == 400 and s.temperature == pytest.approx(0.8)
    assert train.manifest["meta"]["strategy_counts"] == {"cluster_border": 1750, "random": 750}
    for st in (train, val):
        idx = st.indices[:].astype(np.int64)
        assert ((idx[:, 0] != idx[:, 1]) & (idx[:, 0] != idx[:, 2]) & (idx[:, 1] != idx[:, 2])).all()
        ref = ref_sims(emb, idx)
        # fp16 storage of the float64-recomputed sims; item 2 is the teacher's odd one out
        np.testing.assert_allclose(st.sims[:].astype(np.float64), ref, rtol=2e-3, atol=2e-3)
        assert (ref[:, 0] >= ref[:, 1:].max(1) - 1e-5).all()
        np.testing.assert_allclose(st.probs[:], softmax_np(ref, t), atol=1e-4)
        # at least 70 % of rows are cluster_border: two share a cluster, one does not (in some order)
        c = clusters[idx]
        border = ((c[:, 0] == c[:, 1]) & (c[:, 2] != c[:, 0])) | ((c[:, 0] == c[:, 2]) & (c[:, 1] != c[:, 0])) | \
                 ((c[:, 1] == c[:, 2]) & (c[:, 0] != c[:, 1]))
        assert border.mean() >= 0.7
    # item-disjoint splits
    tr_items, va_items = np.load(tmp_path / "s" / "items.npy"), np.load(tmp_path / "s" / "val" / "items.npy")
    assert not np.intersect1d(tr_items, va_items).size
    assert np.isin(train.indices[:], tr_items).all() and np.isin(val.indices[:], va_items).all()
    png = tmp_path / "s" / "teacher_entropy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert sum(summary["entropy_hist"]["train"]["counts"]) == 2500
    assert set(summary["seconds"]) >= {"kmeans", "sample", "label", "write"}


def test_class_strategies_use_labels(inputs, tmp_path):
    generate(opts(inputs, tmp_path / "s", strategy="within_class:1,between_class:1,class_border:1",
                  labels=str(inputs / "labels.npy"), val_num=0, transform=None, num=900))
    lab = np.load(inputs / "labels.npy")
    st = TripletStore.open(tmp_path / "s")
    counts = st.manifest["meta"]["strategy_counts"]
    assert sum(counts.values()) == 900 and all(abs(c - 300) <= 4 for c in counts.values())  # rounding per chunk
    l = lab[st.indices[:]]
    n_same = (l[:, 0] == l[:, 1]).astype(int) + (l[:, 0] == l[:, 2]) + (l[:, 1] == l[:, 2])
    got = np.bincount(n_same, minlength=4)  # 0 equal pairs: between, 1: border, 3: within
    assert got[2] == 0 and got[0] == counts["between_class"] and got[1] == counts["class_border"]
    assert got[3] == counts["within_class"]


def test_ranks_equal_one_process(inputs, tmp_path):
    generate(opts(inputs, tmp_path / "one"))
    world, errors = 3, []

    def rank(r):
        try:
            generate(opts(inputs, tmp_path / "multi", rank=r, world_size=world, wait_timeout=120))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "multi")


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import fastalign.triplets.store.writer as writer
    from fastalign.io.atomic import tmp_name
    from fastalign.triplets.generate import GenerateOptions, generate
    real, calls = writer.atomic_write_chunks, [0]
    def slow(final, chunks, **kw):
        calls[0] += 1
        if calls[0] == 3:  # the third shard: write half of it, then hang until killed
            data = b"".join(bytes(memoryview(c).cast("B")) for c in chunks)
            with open(tmp_name(final), "wb") as fh:
                fh.write(data[: len(data) // 2]); fh.flush()
            print("PAUSED", flush=True)
            time.sleep(600)
        return real(final, chunks, **kw)
    writer.atomic_write_chunks = slow
    kw = eval(sys.argv[1])
    generate(GenerateOptions(**kw))
    """
)


def test_resume_after_sigkill_equals_uninterrupted(inputs, tmp_path):
    generate(opts(inputs, tmp_path / "ref"))
    crashed = opts(inputs, tmp_path / "crash")
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, str(script), repr(crashed.__dict__)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "PAUSED"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    doc = json.loads((tmp_path / "crash" / "manifest.json").read_text())
    assert not doc["complete"] and len(doc["shards"]) == 2
    with pytest.raises(ValueError, match="incomplete"):
        TripletStore.open(tmp_path / "crash")
    with pytest.raises(FileExistsError, match="--resume"):
        generate(crashed)
    with pytest.raises(ValueError, match="options differ.*seed"):
        generate(replace(crashed, resume=True, seed=1))
    s = generate(replace(crashed, resume=True))
    assert s.splits[0].shards_resumed == 2 and s.splits[0].shards_written == 3
    assert tree_bytes(tmp_path / "ref") == tree_bytes(tmp_path / "crash")
    # resuming a finished run changes nothing
    generate(replace(crashed, resume=True))
    assert tree_bytes(tmp_path / "ref") == tree_bytes(tmp_path / "crash")


def no_complete_store(root: Path) -> bool:
    for m in root.rglob("manifest.json") if root.exists() else []:
        if json.loads(m.read_text()).get("complete"):
            return False
    return True


def test_cli_make_triplets_and_bad_input(inputs, tmp_path, capsys):
    emb = str(inputs / "emb.npy")
    out = tmp_path / "ok"
    base = ["make-triplets", "--embeddings", emb, "--clusters", "5", "--num", "300", "--shard-size", "100", "--quiet",
            "--no-histogram", "--kmeans-iters", "3"]
    assert cli(base + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == f"{out}\n"  # --quiet: the store's path, no summary
    assert len(TripletStore.open(out)) == 300
    bad_nan = np.load(inputs / "emb.npy")
    bad_nan[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad_nan)
    np.save(tmp_path / "short.npy", np.zeros(N - 1, np.int64))
    cases = [
        (["--labels", str(tmp_path / "short.npy"), "--strategy", "class_border"], "labels but the embeddings have"),
        (["--clusters", str(N + 1)], "exceeds the number of items"),
        (["--num", "-5"], "num must be"),
        (["--strategy", "odd_strategy"], "unknown strategy"),
        (["--embeddings", str(tmp_path / "nan.npy")], "non-finite"),
        (["--strategy", "class_border"], "needs per-item class labels"),
    ]
    for i, (extra, msg) in enumerate(cases):
        target = tmp_path / f"bad{i}"
        assert cli(base + ["--out", str(target)] + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("fastalign make-triplets: error:") and msg in err and "\n" not in err, err
        assert no_complete_store(target)
    # an existing output path without --resume
    assert cli(base + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err
    assert cli(base + ["--out", str(out), "--resume"]) == 0


def test_bfloat16_teacher_embeddings(inputs, tmp_path):
    generate(opts(inputs, tmp_path / "s", transform=None, val_num=0, num=500, emb_dtype="bfloat16", sim_dtype="float32"))
    emb = torch.from_numpy(np.load(inputs / "emb.npy")).to(torch.bfloat16).double().numpy()
    st = TripletStore.open(tmp_path / "s")
    ref = ref_sims(emb, st.indices[:].astype(np.int64))
    np.testing.assert_allclose(st.sims[:], ref, rtol=1e-4, atol=1e-4)
    assert (ref[:, 0] >= ref[:, 1:].max(1) - 1e-4).all()
    with pytest.raises(ValueError, match="emb_dtype"):
        generate(opts(inputs, tmp_path / "t", emb_dtype="int8"))
    assert not (tmp_path / "t").exists()


def test_torchrun_style_processes_equal_one_process(inputs, tmp_path):
    """Two OS processes with $RANK/$WORLD_SIZE (as torchrun sets them) running the CLI == one process."""
    args = ["--embeddings", str(inputs / "emb.npy"), "--transform", str(inputs / "t.npz"), "--clusters", "6",
            "--num", "1500", "--val-num", "300", "--shard-size", "400", "--chunk-size", "200", "--kmeans-iters", "4",
            "--strategy", "cluster_border:0.5,random:0.5", "--quiet", "--no-histogram"]
    assert cli(["make-triplets", "--out", str(tmp_path / "one")] + args) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="test-run")
    procs = [subprocess.Popen([sys.executable, "-m", "fastalign", "make-triplets", "--out", str(tmp_path / "multi")] + args,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "multi")
    assert not (tmp_path / "multi" / "parts").exists() and not (tmp_path / "multi" / "val" / "parts").exists()


def test_without_matplotlib_the_figure_is_skipped_and_the_summary_written(inputs, tmp_path, monkeypatch, capsys):
    import fastalign.io.figures as figures

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a core install: `import matplotlib` fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(figures, "_warned", False)
    generate(opts(inputs, tmp_path / "s", histogram=True, val_num=0, num=300, transform=None))
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "fastalign[report]" in line] == [
        "note: teacher-entropy histogram skipped (matplotlib is not installed; pip install 'fastalign[report]')"]
    assert not (tmp_path / "s" / "teacher_entropy.png").exists()
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert sum(summary["entropy_hist"]["train"]["counts"]) == 300


def test_cli_takes_bundled_things_inputs(tmp_path, capsys):
    """``--embeddings things:KEY``, ``--labels things`` and ``--file-names things`` go through fastalign.io.resolve."""
    from fastalign.datasets.things import load_things
    from fastalign.io.resolve import resolve_labels

    out = tmp_path / "things"
    assert cli(["make-triplets", "--embeddings", "things:spose49", "--labels", "things", "--file-names", "things",
                "--strategy", "class_border", "--num", "200", "--shard-size", "100", "--chunk-size", "100",
                "--out", str(out), "--quiet", "--no-histogram"]) == 0, capsys.readouterr().err
    st = TripletStore.open(out)
    assert len(st) == 200 and st.num_items == 1854 and st.item_names == list(load_things().unique_id)
    lab = resolve_labels("things")[0][st.indices[:].astype(np.int64)]
    assert (lab >= 0).all()
    same = (lab[:, 0] == lab[:, 1]).astype(int) + (lab[:, 0] == lab[:, 2]) + (lab[:, 1] == lab[:, 2])
    assert (same == 1).all()  # class_border: exactly one pair shares a class
    assert cli(["make-triplets", "--embeddings", "things:nope", "--num", "10", "--out", str(tmp_path / "bad"),
                "--quiet", "--strategy", "random"]) == 2
    assert "unknown bundled features" in capsys.readouterr().err


# -- the content fingerprint of a resumable run (issue 15, item 1) ------------------------------

def small(inputs, out, **kw):
    return opts(inputs, out, **dict(dict(num=300, val_num=0, shard_size=100, chunk_size=100, clusters=4,
                                         kmeans_iters=2), **kw))


def copy_inputs(inputs, d):
    d.mkdir()
    for name in ("emb.npy", "t.npz", "labels.npy"):
        (d / name).write_bytes((inputs / name).read_bytes())
    return d


@pytest.mark.parametrize("changed", ["embeddings", "transform", "labels"])
def test_resume_refuses_an_input_whose_content_changed(inputs, tmp_path, changed):
    """Fails before issue 15: only path and shape were compared, so the store mixed two teachers."""
    src = copy_inputs(inputs, tmp_path / "in")
    o = small(src, tmp_path / "s", labels=str(src / "labels.npy"))
    generate(o)
    if changed == "embeddings":
        np.save(src / "emb.npy", np.load(src / "emb.npy") * 1.01)  # same path, same shape
    elif changed == "transform":
        from fastalign.teacher import load_transform, save_transform

        tr = load_transform(src / "t.npz")
        tr.set_temperature(0.9, calibrated=True)
        save_transform(src / "t.npz", tr)
    else:
        np.save(src / "labels.npy", np.load(src / "labels.npy")[::-1].copy())
    fname = {"embeddings": "emb.npy", "transform": "t.npz", "labels": "labels.npy"}[changed]
    with pytest.raises(ValueError, match=rf"cannot resume: {changed}: the content of \S*{fname} changed \(blake2b"):
        generate(replace(o, resume=True))


def test_resume_refuses_another_backend_or_label_batch(inputs, tmp_path):
    """Fails before issue 15: backend and label_batch were runtime knobs (cpu -> torch changed fp16 sims)."""
    from fastalign.ops import backends

    if not backends()["backends"]["cpu"]["available"]:
        pytest.skip("the compiled cpu backend is not built here")
    o = small(inputs, tmp_path / "s", backend="torch", sim_dtype="float16")
    generate(o)
    with pytest.raises(ValueError, match="cannot resume: backend: 'torch' -> 'cpu'"):
        generate(replace(o, resume=True, backend="cpu"))
    with pytest.raises(ValueError, match="label_batch: 4096 -> 64"):
        generate(replace(o, resume=True, label_batch=64))
    before = tree_bytes_one(tmp_path / "s")
    generate(replace(o, resume=True, progress=True, wait_timeout=5.0))  # runtime options: accepted, nothing changes
    assert tree_bytes_one(tmp_path / "s") == before


def tree_bytes_one(p: Path):
    return {f.relative_to(p).as_posix(): f.read_bytes() for f in sorted(p.rglob("*"))
            if f.is_file() and (f.name == "manifest.json" or f.suffix in (".bin", ".npy"))}


def test_resume_refuses_a_run_from_before_fingerprints(inputs, tmp_path):
    o = small(inputs, tmp_path / "s")
    generate(o)
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    run.pop("fingerprint")
    (tmp_path / "s" / "run.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="recorded no input fingerprint.*start a new --out"):
        generate(replace(o, resume=True))


def test_the_fingerprint_is_recorded_and_label_batch_cannot_change_bytes_on_cpu(inputs, tmp_path):
    """run.json holds the fingerprint, the store's meta the input digests; a different label_batch
    (refused on resume because an autotuned GPU kernel could depend on it) gives the same bytes on CPU."""
    from fastalign.io.atomic import file_checksum

    generate(small(inputs, tmp_path / "a"))
    generate(small(inputs, tmp_path / "b", label_batch=37))
    assert tree_bytes_one(tmp_path / "a") == tree_bytes_one(tmp_path / "b")
    fp = json.loads((tmp_path / "a" / "run.json").read_text())["fingerprint"]
    assert fp["inputs"]["embeddings"]["blake2b"] == file_checksum(inputs / "emb.npy")
    assert fp["execution"]["device"] == "cpu" and fp["execution"]["torch"] == torch.__version__
    meta = TripletStore.open(tmp_path / "a").meta
    assert meta["inputs"] == {"embeddings": file_checksum(inputs / "emb.npy"), "transform": file_checksum(inputs / "t.npz")}


def test_bundled_inputs_hash_their_bundled_files():
    from fastalign.datasets.things import ROOT
    from fastalign.io.atomic import file_checksum
    from fastalign.io.resolve import feature_path
    from fastalign.triplets.fingerprint import run_fingerprint

    o = GenerateOptions(embeddings="things:clip", out="unused", num=1, labels="things", file_names="things")
    fp = run_fingerprint(o, torch.device("cpu"))["inputs"]
    assert fp["embeddings"]["blake2b"] == file_checksum(feature_path("things:clip"))
    assert fp["labels"]["file"] == str(ROOT / "concepts/category_mat_manual.tsv")
    assert fp["file_names"]["blake2b"] == file_checksum(ROOT / "concepts/unique_id.txt")


def test_kmeans_progress_is_a_summary_per_restart(inputs, tmp_path):
    """A review: make-triplets printed ~55 per-iteration k-means lines for the bundled data. Now the
    iteration lines come at most every KMEANS_LINE_SECONDS, and each restart ends in one summary."""
    lines = []
    generate(opts(inputs, tmp_path / "s", kmeans_iters=25, progress=True), say=lines.append)
    iteration = [s for s in lines if "iter " in s and s.startswith("kmeans")]
    summaries = [s for s in lines if s.startswith("k-means restart")]
    assert 1 <= len(iteration) <= 2  # the first line, and one more only if the run took over 10 s
    assert len(summaries) == 3 and sum("(best)" in s for s in summaries) == 1
    assert all("iterations" in s and "inertia" in s for s in summaries)
