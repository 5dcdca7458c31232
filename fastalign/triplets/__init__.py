"""AligNet triplet datasets: k-means, sampling strategies, teacher soft labels, the triplet store.

- ``kmeans`` / ``KMeansOptions``: chunked, seeded k-means in torch (CPU or GPU).
- ``TripletSampler`` / ``parse_strategy``: vectorised random / between_class /
  within_class / class_border / cluster_border sampling over an item subset.
- ``label_triplets``: teacher similarities, rows reordered so item 2 is the odd one out.
- ``TripletStoreWriter`` / ``TripletStore`` / ``stream`` / ``TripletStreamDataset``:
  the crash-safe sharded store (``store/``: layout, writer, reader, merge) and its
  sharded, shuffled, resumable reader (``epoch`` orders an epoch, ``stream`` checks and serves it).
- ``TripletBatch``: the one batch type (triplets, sims, optional probs).
- ``generate`` / ``GenerateOptions``: the whole stage (``fastalign make-triplets``):
  ``options``, ``ranks`` (file-based rank coordination), ``split_writer``, ``report``.
- ``import_store`` / ``export_store``: AligNet ``.npz`` and THINGS text.
"""

from .alignet_io import export_store, import_store
from .batch import TripletBatch
from .generate import GenerateOptions, generate
from .kmeans import KMeansOptions, KMeansResult, kmeans
from .label import LabelOptions, label_triplets, reorder_by_odd
from .sampling import STRATEGIES, TripletSampler, parse_strategy, sample_chunk
from .store import TripletStore, TripletStoreWriter
from .stream import TripletStreamDataset, stream

__all__ = [
    "GenerateOptions",
    "KMeansOptions",
    "KMeansResult",
    "LabelOptions",
    "STRATEGIES",
    "TripletBatch",
    "TripletSampler",
    "TripletStore",
    "TripletStoreWriter",
    "TripletStreamDataset",
    "export_store",
    "generate",
    "import_store",
    "kmeans",
    "label_triplets",
    "parse_strategy",
    "reorder_by_odd",
    "sample_chunk",
    "stream",
]
