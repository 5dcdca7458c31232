"""Streaming reader: exactly-once coverage across ranks and workers, shuffling, resume, DataLoader."""

import numpy as np
import pytest
import torch

from fastalign.triplets import TripletStore, TripletStoreWriter, TripletStreamDataset
from fastalign.triplets.stream import num_batches


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "s"
    n = 2345
    # row r holds (r, r, r) mod items in column 0 and its id in the sims, so coverage is checkable
    idx = np.stack([np.arange(n) % 1000, np.arange(n) % 997, np.arange(n) % 991], axis=1)
    sims = np.stack([np.arange(n), -np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    probs = np.tile(np.array([[0.5, 0.25, 0.25]], np.float32), (n, 1))
    with TripletStoreWriter(path, num_items=1000, sim_dtype="float32", with_probs=True, shard_size=500, meta={}) as w:
        w.write(idx, sims, probs)
    return TripletStore.open(path)


def row_ids(batches):
    return torch.cat([b.sims[:, 0] for b in batches]).to(torch.int64).numpy()


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (1, 3), (2, 3), (4, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_triplet_exactly_once_per_epoch(store, world, workers, shuffle):
    seen = []
    for r in range(world):
        for w in range(workers):
            batches = list(store.stream(64, seed=3, epoch=2, shuffle=shuffle, rank=r, world_size=world, worker_id=w,
                                        num_workers=workers, buffer_size=300, block_size=50))
            assert len(batches) == num_batches(store, 64, rank=r, world_size=world, worker_id=w, num_workers=workers,
                                               seed=3, epoch=2, shuffle=shuffle, block_size=50)
            for b in batches:
                assert b.triplets.dtype == torch.int64 and b.sims.dtype == torch.float32
                assert b.probs.dtype == torch.float32 and b.triplets.shape == b.sims.shape == b.probs.shape
                # rows stay intact: indices agree with the row id carried in the sims
                rid = b.sims[:, 0].to(torch.int64)
                assert torch.equal(b.triplets[:, 0], rid % 1000) and torch.equal(b.triplets[:, 2], rid % 991)
            seen.append(row_ids(batches))
    allr = np.concatenate(seen)
    assert np.array_equal(np.sort(allr), np.arange(len(store)))


def test_shuffle_depends_on_seed_and_epoch_and_is_deterministic(store):
    kw = dict(buffer_size=400, block_size=40)
    a = row_ids(store.stream(100, seed=1, epoch=0, **kw))
    assert np.array_equal(a, row_ids(store.stream(100, seed=1, epoch=0, **kw)))
    assert not np.array_equal(a, row_ids(store.stream(100, seed=1, epoch=1, **kw)))
    assert not np.array_equal(a, row_ids(store.stream(100, seed=2, epoch=0, **kw)))
    assert not np.array_equal(a, np.arange(len(store)))
    assert np.array_equal(row_ids(store.stream(100, shuffle=False)), np.arange(len(store)))


@pytest.mark.parametrize("batch,buffer", [(37, 300), (500, 120), (64, 10_000)])
def test_resume_from_start_batch(store, batch, buffer):
    kw = dict(seed=5, epoch=1, rank=1, world_size=2, buffer_size=buffer, block_size=40)
    full = list(store.stream(batch, **kw))
    for start in (0, 1, len(full) // 2, len(full) - 1, len(full), len(full) + 3):
        part = list(store.stream(batch, start_batch=start, **kw))
        assert len(part) == max(0, len(full) - start)
        for x, y in zip(full[start:], part):
            assert torch.equal(x.triplets, y.triplets) and torch.equal(x.sims, y.sims) and torch.equal(x.probs, y.probs)


def test_drop_last_and_batch_sizes(store):
    b = list(store.stream(1000, shuffle=False))
    assert [len(x) for x in b] == [1000, 1000, 345]
    b = list(store.stream(1000, shuffle=False, drop_last=True))
    assert [len(x) for x in b] == [1000, 1000]


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(batch_size=4, rank=2, world_size=2),
                                dict(batch_size=4, worker_id=1, num_workers=1), dict(batch_size=4, start_batch=-1),
                                dict(batch_size=4, seed=-1)])
def test_stream_bad_arguments(store, kw):
    with pytest.raises(ValueError):
        store.stream(**kw)


def test_dataloader_workers_cover_the_epoch(store):
    ds = TripletStreamDataset(store.path, 100, seed=0, rank=0, world_size=1, buffer_size=300, block_size=50)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    ids = row_ids(list(loader))
    assert np.array_equal(np.sort(ids), np.arange(len(store)))
    ds.set_epoch(1)
    ids1 = row_ids(list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)))
    assert np.array_equal(np.sort(ids1), np.arange(len(store)))
    assert not np.array_equal(ids1, ids)


def test_store_stream_method_equals_stream_function(store):
    from fastalign.triplets import stream

    a = list(store.stream(64, seed=2, epoch=1, rank=1, world_size=2, start_batch=1))
    b = list(stream(store, 64, seed=2, epoch=1, rank=1, world_size=2, start_batch=1))
    assert len(a) == len(b) > 0 and all(torch.equal(x.triplets, y.triplets) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="batch_size"):
        store.stream(0)
    with pytest.raises(TypeError, match="TripletStore"):
        stream(object(), 4)


def test_store_does_not_import_stream():
    """The reader serves ``TripletStore.stream`` through ``epoch``; nothing in the store imports ``stream``."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("fastalign")
    for mod in ("layout", "writer", "reader", "merge"):
        assert graph.find_shortest_chain(importer=f"fastalign.triplets.store.{mod}",
                                         imported="fastalign.triplets.stream") is None
