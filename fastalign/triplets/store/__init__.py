"""The on-disk triplet store: sharded, memory-mapped, checksummed, crash-safe.

- ``layout``: the bytes on disk (dtypes, column order, file names, manifest schema);
- ``writer``: ``TripletStoreWriter`` (crash-safe shards, resume, one rank of several);
- ``merge``: rank 0 merging the ranks' part files into the final manifest;
- ``reader``: ``TripletStore`` (memory maps, checks, random access);
- ``verify``: the reader's checks of a manifest against the layout and its digest.
"""

from .layout import (
    FORMAT,
    INDEX_DTYPE,
    INDEX_LIMIT,
    MANIFEST,
    PART_DIR,
    PROB_DTYPE,
    SHARD_DIR,
    SIM_DTYPES,
    VERSION,
    columns,
    row_bytes,
    shard_file,
)
from .merge import merge_parts
from .reader import Shard, ShardedArray, TripletStore
from .verify import LegacyStoreWarning
from .writer import TripletStoreWriter

__all__ = [
    "FORMAT",
    "INDEX_DTYPE",
    "INDEX_LIMIT",
    "LegacyStoreWarning",
    "MANIFEST",
    "PART_DIR",
    "PROB_DTYPE",
    "SHARD_DIR",
    "SIM_DTYPES",
    "Shard",
    "ShardedArray",
    "TripletStore",
    "TripletStoreWriter",
    "VERSION",
    "columns",
    "merge_parts",
    "row_bytes",
    "shard_file",
]
