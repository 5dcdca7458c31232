"""The store reader verifies its manifest against the layout (issue 15, item 2), and old stores stay readable.

Every attack test fails on the code before issue 15: its reader trusted
``manifest.json`` as long as each listed shard had the listed size and checksum.
"""

import hashlib
import json
import warnings

import numpy as np
import pytest

from fastalign.triplets.store import MANIFEST, LegacyStoreWarning, TripletStore, TripletStoreWriter
from fastalign.triplets.store.layout import DIGEST_KEY, manifest_digest

N, SHARD, T = 250, 60, 0.5


def softmax32(sims, t):
    """float32 softmax(s / T) the way ``label.label_triplets`` makes the stored probabilities."""
    z = sims.astype(np.float32) / np.float32(t)
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def make_store(d, sim_dtype="float32", scale=1.0, t=T, num_items=40, n=N):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, num_items - 1, (n, 3))
    idx[0, 0] = num_items - 1  # the largest index is used
    sims = (rng.normal(size=(n, 3)) * scale).astype(np.float32)
    with TripletStoreWriter(d, num_items=num_items, sim_dtype=sim_dtype, with_probs=True, shard_size=SHARD,
                            meta={"num": n, "temperature": t, "seed": 0}) as w:
        w.write(idx, sims, softmax32(sims, t))
    return idx


def edit(d, change, redigest=False):
    """Apply ``change`` to the parsed manifest; ``redigest`` also recomputes the digest (an edit that
    hides itself from the digest, so the layout checks alone must catch it)."""
    mf = d / MANIFEST
    doc = json.loads(mf.read_text())
    change(doc)
    if redigest:
        doc[DIGEST_KEY] = manifest_digest(doc)
    mf.write_text(json.dumps(doc, indent=1, sort_keys=True))


def drop_last(doc):
    doc["count"] -= doc["shards"].pop()["count"]


def drop_middle(doc):
    doc["count"] -= doc["shards"].pop(1)["count"]


def swap(doc):
    s = doc["shards"]
    s[0], s[1] = s[1], s[0]


def swap_files(doc):
    s = doc["shards"]
    s[0]["file"], s[1]["file"] = s[1]["file"], s[0]["file"]
    s[0]["checksum"], s[1]["checksum"] = s[1]["checksum"], s[0]["checksum"]


def duplicate(doc):
    doc["shards"].insert(1, dict(doc["shards"][0]))
    doc["count"] += doc["shards"][0]["count"]


def temperature(doc):
    doc["meta"]["temperature"] = 0.1


def fewer_items(doc):
    doc["num_items"] = 20


def tamper(doc):
    doc["meta"]["seed"] = 7


ATTACKS = {
    "dropped last entry": (drop_last, "meta.num"),
    "dropped middle entry": (drop_middle, "missing from the list"),
    "swapped entries": (swap, "out of order"),
    "swapped files": (swap_files, "names file"),
    "duplicated entry": (duplicate, "listed twice"),
    "changed temperature": (temperature, "temperature"),
    "smaller num_items": (fewer_items, "num_items"),
    "tampered manifest": (tamper, "digest mismatch"),
}


@pytest.mark.parametrize("redigest", [False, True], ids=["plain", "redigested"])
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_manifest_attack_is_refused_naming_the_store(tmp_path, attack, redigest):
    """Fails before issue 15: every one of these opened (the store read 250 - 60 rows, reordered
    rows, a shard twice, T = 0.1 for probabilities made at 0.5, num_items below an index)."""
    change, what = ATTACKS[attack]
    if redigest and attack == "tampered manifest":
        pytest.skip("a recomputed digest makes a consistent edit of an unchecked field undetectable (no signature)")
    d = tmp_path / "s"
    make_store(d)
    TripletStore.open(d)
    edit(d, change, redigest)
    with pytest.raises(ValueError, match=what) as err:
        TripletStore.open(d, verify=False)
    assert str(d / MANIFEST) in str(err.value) and "\n" not in str(err.value)


def test_a_dropped_last_entry_without_meta_num_is_found_by_its_shard_file(tmp_path):
    """Fails before issue 15: the unlisted last shard file was not noticed."""
    d = tmp_path / "s"
    make_store(d)
    edit(d, lambda doc: (drop_last(doc), doc["meta"].pop("num")), redigest=True)
    with pytest.raises(ValueError, match="shard-00000004.bin is on disk but not in the manifest"):
        TripletStore.open(d)


def test_an_edited_count_is_refused(tmp_path):
    d = tmp_path / "s"
    make_store(d)
    edit(d, lambda doc: doc.update(count=doc["count"] - 1), redigest=True)
    with pytest.raises(ValueError, match="count is 249 but the shard entries hold 250"):
        TripletStore.open(d)


def test_new_manifests_record_index_statistics_and_a_digest(tmp_path):
    """Fails before issue 15: no index_min/index_max, no digest, version 1."""
    d = tmp_path / "s"
    idx = make_store(d)
    doc = json.loads((d / MANIFEST).read_text())
    assert doc["version"] == 2 and doc[DIGEST_KEY] == manifest_digest(doc)
    for e in doc["shards"]:
        rows = idx[e["id"] * SHARD: e["id"] * SHARD + e["count"]]
        assert (e["index_min"], e["index_max"]) == (rows.min(), rows.max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new store opens without the legacy note
        assert np.array_equal(TripletStore.open(d).indices[:], idx)


@pytest.mark.parametrize("sim_dtype", ["float16", "float32"])
@pytest.mark.parametrize("scale,t", [(0.1, 0.05), (1.0, 1.0), (10.0, 0.5), (100.0, 10.0), (30.0, 0.07)])
def test_the_temperature_check_never_refuses_a_store_as_written(tmp_path, sim_dtype, scale, t):
    """No false alarm across similarity scales, temperatures and storage dtypes (float16 rounding)."""
    make_store(tmp_path / "s", sim_dtype=sim_dtype, scale=scale, t=t)
    TripletStore.open(tmp_path / "s")


@pytest.mark.parametrize("factor", [0.9, 1.05, 2.0])
def test_a_slightly_changed_temperature_is_refused_even_with_a_recomputed_digest(tmp_path, factor):
    d = tmp_path / "s"
    make_store(d, sim_dtype="float16")
    edit(d, lambda doc: doc["meta"].update(temperature=T * factor), redigest=True)
    with pytest.raises(ValueError, match=r"made at T = 0\.50\d*: .*teacher_temperature"):
        TripletStore.open(d)


def test_probabilities_that_are_no_softmax_are_not_judged(tmp_path):
    """Hand-written probabilities with a temperature in meta (no single T fits them) still open."""
    rng = np.random.default_rng(0)
    d = tmp_path / "s"
    with TripletStoreWriter(d, num_items=40, with_probs=True, shard_size=100, meta={"temperature": 0.3}) as w:
        w.write(rng.integers(0, 40, (200, 3)), rng.normal(size=(200, 3)), rng.dirichlet(np.ones(3), 200))
    TripletStore.open(d)


# -- stores written before issue 15 (format version 1) ----------------------------------------

# The manifest of test_store.py's golden float16 store exactly as the writer before issue 15 wrote it
# (sha256 5e6114e1..., the GOLDEN entry of that test before this change); its shards are unchanged.
OLD_MANIFEST_SHA256 = "5e6114e19a7d06cee4a4f0c2cc659e8bd17efce0aa716a0312db0d0fe5ac962a"
OLD_SHARDS = [("e3c1f853ae3d9ccf863c11ce00b380bf7dab2f14da3bcec22e462bddc35258e3", 20),
              ("7958dd706d294c57eeacea7ee1babe91c16c0f5a8d2050f6a183be9cc498efb1", 20),
              ("9ec1afb7d99cdac29ae58aea30349c6d59647facd0bb8d8ce8792b5225492bec", 10)]


def old_manifest_text():
    shards = [{"bytes": c * 30, "checksum": h, "count": c, "file": f"shards/shard-{i:08d}.bin", "id": i}
              for i, (h, c) in enumerate(OLD_SHARDS)]
    doc = {"checksum": "blake2b", "complete": True, "count": 50, "format": "fastalign-triplet-store",
           "index_dtype": "int32", "meta": {"name": "golden", "seed": 3}, "num_items": 17, "prob_dtype": "float32",
           "shard_size": 20, "shards": shards, "sim_dtype": "float16", "version": 1, "with_probs": True}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def old_store(d):
    """The golden store in format version 1: today's shards (byte-identical) under the old manifest."""
    from test_store import golden_data

    idx, sims, probs = golden_data()
    with TripletStoreWriter(d, num_items=17, sim_dtype="float16", with_probs=True, shard_size=20,
                            meta={"seed": 3, "name": "golden"}) as w:
        w.write(idx, sims, probs)
    text = old_manifest_text()
    assert hashlib.sha256(text.encode()).hexdigest() == OLD_MANIFEST_SHA256
    (d / MANIFEST).write_text(text)
    return idx, sims


def test_a_version_1_store_opens_with_one_note(tmp_path):
    """Nobody's data becomes unreadable: the pre-change golden store reads back, noted once."""
    d = tmp_path / "old"
    idx, sims = old_store(d)
    with pytest.warns(LegacyStoreWarning, match="format version 1.*no manifest digest"):
        st = TripletStore.open(d)
    assert np.array_equal(st.indices[:], idx) and np.array_equal(st.sims[:], sims.astype(np.float16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TripletStore.open(d, verify=False)  # the note is given once per store and process


def test_a_version_1_store_is_verified_as_far_as_its_manifest_allows(tmp_path):
    """Fails before issue 15 (each edit opened): the layout rules hold for old manifests too, and
    num_items is checked against the indices scanned from the shards."""
    cases = {"swapped": (swap, "out of order"), "duplicated": (duplicate, "listed twice"),
             "dropped": (drop_last, "is on disk but not in the manifest"),
             "num_items": (lambda doc: doc.update(num_items=10), "holds item indices in")}
    for name, (change, what) in cases.items():
        d = tmp_path / name
        old_store(d)
        edit(d, change)
        with pytest.raises(ValueError, match=what), warnings.catch_warnings():
            warnings.simplefilter("ignore", LegacyStoreWarning)
            TripletStore.open(d)


def test_a_version_1_store_with_a_changed_temperature_is_refused(tmp_path):
    """No digest to catch it: the stored probabilities themselves contradict the edited temperature."""
    d = tmp_path / "s"
    make_store(d, sim_dtype="float16")

    def downgrade(doc):  # what the writer before issue 15 wrote: no statistics, no digest
        doc["version"] = 1
        doc.pop(DIGEST_KEY)
        for e in doc["shards"]:
            e.pop("index_min"), e.pop("index_max")

    edit(d, downgrade)
    with pytest.warns(LegacyStoreWarning):
        TripletStore.open(d)
    edit(d, temperature)
    with pytest.raises(ValueError, match="temperature"):
        TripletStore.open(d)


def test_the_writer_resumes_a_version_1_store(tmp_path):
    """An interrupted write from before issue 15 resumes; the finished store is version 2 with statistics."""
    from test_store import golden_data

    idx, sims, probs = golden_data()
    d = tmp_path / "s"
    w = TripletStoreWriter(d, num_items=17, sim_dtype="float16", with_probs=True, shard_size=20, meta={"seed": 3})
    w.write(idx[:40], sims[:40], probs[:40])  # two shards, never closed

    def downgrade(doc):
        doc["version"] = 1
        doc.pop(DIGEST_KEY)
        for e in doc["shards"]:
            e.pop("index_min"), e.pop("index_max")

    edit(d, downgrade)
    w = TripletStoreWriter(d, num_items=17, sim_dtype="float16", with_probs=True, shard_size=20, meta={"seed": 3},
                           resume=True)
    assert w.completed_shard_ids == [0, 1]
    w.write(idx[40:], sims[40:], probs[40:])
    w.close()
    doc = json.loads((d / MANIFEST).read_text())
    assert doc["version"] == 2 and all("index_max" in e for e in doc["shards"])
    assert np.array_equal(TripletStore.open(d).indices[:], idx)


def test_resume_refuses_an_edited_progress_manifest(tmp_path):
    d = tmp_path / "s"
    w = TripletStoreWriter(d, num_items=40, shard_size=10, meta={"seed": 1})
    w.write(np.zeros((20, 3), dtype=np.int64) + [0, 1, 2], np.ones((20, 3)))
    edit(d, lambda doc: doc["shards"][0].update(count=9))
    with pytest.raises(ValueError, match="digest mismatch"):
        TripletStoreWriter(d, num_items=40, shard_size=10, meta={"seed": 1}, resume=True)
