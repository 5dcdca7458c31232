"""Triplet sources, the triplet-dense sampler, the step stream (resume,
workers, human triplets) and image items (corrupt files)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_distill_fixtures import base_config, feature_matrix, synthetic_source, write_images

from fastalign.distill import ArrayTripletSource, DenseTripletSampler, config_from_dict, distill
from fastalign.distill.data import ImageItems, StepStream, StreamSpec


def test_rank_shards_union_is_the_single_process_batch():
    src = synthetic_source(n_triplets=100)
    single = list(src.stream(20, seed=4, epoch=1))
    r0 = list(src.stream(10, seed=4, epoch=1, rank=0, world_size=2))
    r1 = list(src.stream(10, seed=4, epoch=1, rank=1, world_size=2))
    assert len(single) == len(r0) == len(r1) == 5
    for s, a, b in zip(single, r0, r1):
        rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert rows(s.triplets) == rows(torch.cat([a.triplets, b.triplets]))
    # start_batch resumes inside an epoch; another epoch is another order.
    assert torch.equal(list(src.stream(20, seed=4, epoch=1, start_batch=3))[0].triplets, single[3].triplets)
    assert not torch.equal(list(src.stream(20, seed=4, epoch=2))[0].triplets, single[0].triplets)


def test_array_source_validates():
    with pytest.raises(ValueError, match="shape"):
        ArrayTripletSource(np.zeros((4, 2), dtype=np.int64), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="range"):
        ArrayTripletSource(np.array([[0, 1, 5]]), np.zeros((1, 3)), num_items=3)
    with pytest.raises(ValueError, match="sims or probs"):
        ArrayTripletSource(np.array([[0, 1, 2]]))


def test_dense_sampler_labels_and_structure():
    teacher = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    sampler = DenseTripletSampler(teacher, num_items=12, num_triplets=300)
    tb = sampler.sample(7, seed=1, rank=0)
    trip = tb.triplets.numpy()
    assert trip.shape == (300, 3)
    assert (trip[:, 0] != trip[:, 1]).all() and (trip[:, 0] != trip[:, 2]).all() and (trip[:, 1] != trip[:, 2]).all()
    assert len(np.unique(trip)) <= 12  # several triplets per embedded item
    ref = np.stack([(teacher[trip[:, a]].astype(np.float64) * teacher[trip[:, b]]).sum(1)
                    for a, b in ((0, 1), (0, 2), (1, 2))], 1)
    np.testing.assert_allclose(tb.sims.numpy(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(sampler.sample(7, seed=1).triplets, tb.triplets)  # deterministic
    assert not torch.equal(sampler.sample(8, seed=1).triplets, tb.triplets)
    assert not torch.equal(sampler.sample(7, seed=1, rank=1).triplets, tb.triplets)
    # every position of a triplet is uniform over the 12 items (no slot bias)
    big = DenseTripletSampler(teacher, num_items=12, num_triplets=60000).sample(0)
    items = torch.unique(big.triplets)
    for col in range(3):
        counts = torch.bincount(torch.searchsorted(items, big.triplets[:, col].contiguous()), minlength=12).float()
        assert float(counts.min()) > 0.85 * 5000 and float(counts.max()) < 1.15 * 5000
    with pytest.raises(ValueError):
        DenseTripletSampler(teacher, num_items=2, num_triplets=3)


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_step_stream_resumes_exactly_across_epochs():
    src = synthetic_source(n_triplets=70)  # 70 // 16 = 4 full batches per epoch, remainder dropped
    human = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    spec = StreamSpec(src, 16, seed=2, human=human, human_batch=2)
    full = _take(StepStream(spec), 9)
    assert [b.position["epoch"] for b in full] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    resumed = _take(StepStream(spec, full[5].position), 3)
    for a, b in zip(full[6:], resumed):
        assert torch.equal(a.items[a.triplets], b.items[b.triplets])
        assert torch.equal(a.items[a.human], b.items[b.human])
        assert a.position == b.position
    # local triplets index the unique items: mapping back gives the source rows
    first = list(src.stream(16, seed=2, epoch=0))[0]
    assert torch.equal(full[0].items[full[0].triplets], first.triplets)
    assert torch.equal(full[0].target_sims, first.sims)
    assert set(map(tuple, full[0].items[full[0].human].tolist())) <= set(map(tuple, human.tolist()))


def test_step_stream_refuses_a_source_smaller_than_a_batch():
    with pytest.raises(ValueError, match="no full batch"):
        _take(StepStream(StreamSpec(synthetic_source(n_triplets=10), 16)), 1)


def test_workers_give_the_same_order():
    from torch.utils.data import DataLoader

    spec = StreamSpec(synthetic_source(n_triplets=200), 16, seed=5)
    plain = _take(StepStream(spec), 6)
    loader = DataLoader(StepStream(spec), batch_size=None, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    pooled = _take(loader, 6)
    for a, b in zip(plain, pooled):
        assert torch.equal(a.items[a.triplets], b.items[b.triplets]) and a.position == b.position


def test_corrupt_and_missing_images_are_skipped_counted_logged(tmp_path, caplog):
    names = write_images(tmp_path, 8, corrupt={2}, missing={5})
    images = ImageItems(str(tmp_path), names, size=6)
    img = images.load(0)
    assert img.shape == (3, 6, 6) and torch.isfinite(img).all()
    trip = torch.tensor([[0, 1, 2], [0, 1, 3], [4, 5, 6], [6, 7, 0], [1, 3, 4]])
    src = ArrayTripletSource(trip, torch.randn(5, 3), num_items=8)
    spec = StreamSpec(src, 5, shuffle=False, images=images)
    with caplog.at_level(logging.WARNING, logger="fastalign.distill"):
        batch = _take(StepStream(spec), 1)[0]
    assert batch.skipped_items == 2 and batch.skipped_triplets == 2
    kept = batch.items[batch.triplets]
    assert sorted(map(tuple, kept.tolist())) == [(0, 1, 3), (1, 3, 4), (6, 7, 0)]
    assert batch.inputs.shape == (batch.items.shape[0], 3, 6, 6)
    assert batch.target_sims.shape == (3, 3)
    assert "img2.png" in caplog.text and "img5.png" in caplog.text
    # inputs are the decoded images of the kept items
    for j, item in enumerate(batch.items.tolist()):
        torch.testing.assert_close(batch.inputs[j], images.load(item))


def test_store_item_count_must_match_the_image_list(tmp_path):
    names = write_images(tmp_path, 5)
    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(names))
    cfg = base_config(str(tmp_path / "run"))
    cfg["student"] = {"kind": "module", "module": "test_distill_fixtures:TinyCNN", "head": "none"}
    cfg["data"] = {"items": "images", "image_root": str(tmp_path), "file_names": str(listing), "image_size": 8}
    with pytest.raises(ValueError, match="40 items but the image list has 5"):
        distill(config_from_dict(cfg), train_source=synthetic_source(n_items=40))


def test_feature_count_must_match_the_source(tmp_path):
    cfg = config_from_dict(base_config(str(tmp_path / "run")))
    with pytest.raises(ValueError, match="feature matrix has 30"):
        distill(cfg, train_source=synthetic_source(n_items=40), features=feature_matrix(n_items=30))


def test_image_student_trains_through_the_loop(tmp_path):
    """End to end on image files (one corrupt): the loop runs, counts the skip, checkpoints."""
    names = write_images(tmp_path, 12, corrupt={3})
    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(names))
    gen = np.random.default_rng(0)
    trip = np.array([gen.choice(12, 3, replace=False) for _ in range(64)])
    src = ArrayTripletSource(trip, gen.normal(size=(64, 3)).astype(np.float32), num_items=12)
    cfg = base_config(str(tmp_path / "run"), steps=3, batch_triplets=16, micro_batch=5)
    cfg["student"] = {"kind": "module", "module": "test_distill_fixtures:TinyCNN", "head": "linear", "head_dim": 3}
    cfg["data"] = {"items": "images", "image_root": str(tmp_path), "file_names": str(listing), "image_size": 8}
    res = distill(config_from_dict(cfg), train_source=src)
    assert res.steps == 3 and res.metrics["skipped_items"] >= 1
    assert (res.checkpoint / "model.safetensors").is_file()
    # Decoding in 2 DataLoader workers changes nothing: same batches, same RNG, same weights.
    cfg["data"]["num_workers"] = 2
    cfg["train"]["out_dir"] = str(tmp_path / "run-workers")
    res2 = distill(config_from_dict(cfg), train_source=src)
    from safetensors.torch import load_file

    a = load_file(str(res.checkpoint / "model.safetensors"))
    b = load_file(str(res2.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res2.metrics["skipped_items"] == res.metrics["skipped_items"]
    # fastalign embed --images: the corrupt image gives a zero row and ok=False
    from fastalign.distill import embed_checkpoint

    emb, ok = embed_checkpoint(res.checkpoint, image_root=str(tmp_path), file_names=names, micro_batch=5)
    assert emb.shape == (12, 3) and ok.tolist() == [i != 3 for i in range(12)]
    assert not emb[3].any() and np.isfinite(emb).all()


def test_trains_from_a_triplet_store_with_its_validation_split(tmp_path):
    from fastalign.triplets.store import TripletStoreWriter

    src = synthetic_source(n_items=40, n_triplets=300)
    for path, rows in ((tmp_path / "store", slice(0, 200)), (tmp_path / "store" / "val", slice(200, 300))):
        with TripletStoreWriter(path, num_items=40, sim_dtype="float32", meta={"temperature": 0.5}) as writer:
            writer.write(src.triplets[rows].numpy(), src.sims[rows].numpy())
    cfg = base_config(str(tmp_path / "run"), steps=4, eval_every=2)
    cfg["data"] = {"source": "store", "store": str(tmp_path / "store")}
    cfg["eval"] = {"val_batches": 2, "batch": 50}
    res = distill(config_from_dict(cfg), features=feature_matrix())
    assert res.steps == 4 and 0.0 <= res.metrics["val_acc"] <= 1.0 and res.metrics["val_kl"] >= 0.0
    state = json.loads((res.checkpoint / "state.json").read_text())
    assert state["ranks"][0]["position"]["step"] == 4
    # the store's temperature (meta) is the teacher temperature
    from fastalign.distill import TripletSource
    from fastalign.distill.setup import resolve_teacher_temperature
    from fastalign.triplets.store import TripletStore

    store = TripletStore.open(tmp_path / "store")
    assert isinstance(store, TripletSource) and isinstance(src, TripletSource)  # both feed the loop
    assert resolve_teacher_temperature(config_from_dict(cfg), store) == 0.5
    cfg["student"]["features"] = ""
    np.save(tmp_path / "f30.npy", feature_matrix(n_items=30))
    cfg["student"]["features"] = str(tmp_path / "f30.npy")
    cfg["train"]["out_dir"] = str(tmp_path / "run2")
    with pytest.raises(ValueError, match="40 items but the feature matrix has 30"):
        distill(config_from_dict(cfg))
