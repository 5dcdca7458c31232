"""Teacher soft labels against an independent float64 numpy recomputation."""

import numpy as np
import pytest
import torch

from fastalign.triplets.label import LabelOptions, entropy, label_triplets, reorder_by_odd, softmax_np


def ref_sims(emb, trip, cosine):
    e = emb.astype(np.float64)
    if cosine:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-8)
    a, b, c = e[trip[:, 0]], e[trip[:, 1]], e[trip[:, 2]]
    return np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)


def random_triplets(rng, n, b):
    t = np.stack([rng.choice(n, 3, replace=False) for _ in range(b)])
    return t.astype(np.int64)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("batch", [1, 17, 1000])
def test_labels_match_float64_and_item2_is_odd(similarity, batch):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    trip = random_triplets(rng, 50, 300)
    t = 0.7
    out_t, out_s, out_p = label_triplets(torch.from_numpy(emb), trip,
                                         LabelOptions(temperature=t, similarity=similarity, with_probs=True, batch_size=batch))
    out_t, out_s, out_p = out_t.numpy(), out_s.numpy(), out_p.numpy()
    # same item set per row
    assert (np.sort(out_t, 1) == np.sort(trip, 1)).all()
    # stored sims are the float64 sims of the *reordered* rows
    ref = ref_sims(emb, out_t, similarity == "cosine")
    np.testing.assert_allclose(out_s, ref, rtol=1e-5, atol=1e-5)
    # item 2 is the teacher's odd one out: s01 is the largest similarity of the row
    assert (ref[:, 0] >= ref[:, 1:].max(1) - 1e-5).all()
    # the odd one out of the original row, computed independently, is the new item 2
    orig = ref_sims(emb, trip, similarity == "cosine")
    odd_pos = 2 - orig.argmax(1)
    assert (out_t[:, 2] == trip[np.arange(len(trip)), odd_pos]).all()
    np.testing.assert_allclose(out_p, softmax_np(ref, t), rtol=1e-5, atol=1e-6)


def test_reorder_table_each_case():
    trip = torch.tensor([[10, 11, 12]] * 3)
    sims = torch.tensor([[3.0, 2.0, 1.0], [2.0, 3.0, 1.0], [2.0, 1.0, 3.0]])
    t, s = reorder_by_odd(trip, sims)
    assert t.tolist() == [[10, 11, 12], [10, 12, 11], [11, 12, 10]]
    # new sims: s(new0,new1), s(new0,new2), s(new1,new2) from the original pair sims
    assert s.tolist() == [[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]


def test_labels_without_probs_and_errors():
    emb = torch.randn(10, 4)
    trip = torch.tensor([[0, 1, 2], [3, 4, 5]])
    _, _, p = label_triplets(emb, trip, LabelOptions())
    assert p is None
    with pytest.raises(ValueError, match="temperature"):
        label_triplets(emb, trip, LabelOptions(temperature=0.0))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        label_triplets(emb, torch.zeros(2, 2, dtype=torch.long))


def test_entropy_reference():
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(entropy(p), [0.0, np.log(3), -(0.5 * np.log(0.5) + 0.5 * np.log(0.25))])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_labels_on_cuda_match_float64(dtype):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    trip = random_triplets(rng, 200, 5000)
    e = torch.from_numpy(emb).cuda().to(dtype)
    out_t, out_s, out_p = label_triplets(e, trip, LabelOptions(temperature=0.5, with_probs=True, batch_size=1024))
    ref = ref_sims(e.float().cpu().numpy(), out_t.numpy(), False)  # the values the device held
    np.testing.assert_allclose(out_s.numpy(), ref, rtol=1e-4, atol=1e-4)
    assert (ref[:, 0] >= ref[:, 1:].max(1) - 1e-4).all()
    np.testing.assert_allclose(out_p.numpy(), softmax_np(ref, 0.5), atol=1e-4)
