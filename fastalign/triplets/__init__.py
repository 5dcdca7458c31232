"""AligNet triplet datasets: k-means, sampling strategies, teacher soft labels, the triplet store."""

from .store import TripletStore, TripletStoreWriter
from .stream import TripletBatch, TripletStreamDataset, stream

__all__ = ["TripletBatch", "TripletStore", "TripletStoreWriter", "TripletStreamDataset", "stream"]
