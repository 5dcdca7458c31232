"""The bundled THINGS data loads, is consistent, and reproduces the data README's figures."""

import numpy as np
import pytest
import torch

import fastalign
from fastalign.datasets import load_things


def test_bundle_shapes_and_order():
    d = load_things()
    assert d.num_objects == 1854 and len(d.names) == 1854
    assert d.categories.shape == (1854, 27) and len(d.category_names) == 27
    assert d.features["clip"].shape == (1854, 512)
    assert d.features["word2vec"].shape == (1854, 300)
    assert d.features["spose49"].shape == (1854, 49)
    assert d.triplets["test_10"].shape == (50000, 3)
    assert d.triplets["train_90_ID_smallsample"].shape == (21616, 3)
    assert set(np.unique(d.participants["test_10_ID_smallsample"])) == set(range(10))
    for t in d.triplets.values():
        assert t.min() >= 0 and t.max() < 1854
        assert (t[:, 0] != t[:, 1]).all() and (t[:, 0] != t[:, 2]).all()
    with pytest.raises(ValueError):
        d.features["clip"][0, 0] = 1.0  # read-only


@pytest.mark.parametrize("key, similarity, expected", [
    ("spose49", "dot", 0.640), ("vice", "dot", 0.636), ("clip", "cosine", 0.484), ("word2vec", "cosine", 0.466),
])
def test_accuracy_matches_data_readme(key, similarity, expected):
    """The data README's reference figures, recomputed with the kernels (within 0.1 points)."""
    d = load_things()
    acc = fastalign.odd_one_out_accuracy(torch.from_numpy(d.features[key].copy()),
                                         torch.from_numpy(d.triplets["test_10"]), similarity=similarity)
    assert abs(acc - expected) < 1e-3
