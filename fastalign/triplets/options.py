"""Options of ``fastalign make-triplets`` (``generate``) and their checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .sampling import CATEGORY_STRATEGIES, parse_strategy, strategy_weights
from .store.layout import SIM_DTYPES

EMB_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Options that cannot change a byte of the stores, so a resume may change them: where the run
# writes (out), whether it resumes, what it prints or draws (progress, histogram: the figure is
# no store file), how long a rank waits, and the rank layout (a shard's bytes depend on its id
# only: tests/test_triplets_generate.py checks ranks == one process).
RUNTIME_OPTIONS = ("out", "resume", "progress", "rank", "world_size", "wait_timeout", "histogram")
# Options that can change bytes but are no content of the store: recorded by their effect
# (the resolved backend, the device type) in the run's fingerprint (``fingerprint``), not in its meta.
EXECUTION_OPTIONS = ("device", "backend", "label_batch")


@dataclass
class GenerateOptions:
    """Options of ``generate``; the CLI ``fastalign make-triplets`` fills them.

    Attributes:
        embeddings: the (N, D) teacher features: ``things:KEY`` or a file (any format
            ``fastalign.io.load_features`` reads), resolved by ``fastalign.io.resolve``.
        out: store directory to create (the training split).
        num: number of training triplets (>= 1).
        strategy: a strategy or a mix, e.g. ``"cluster_border"`` or ``"cluster_border:0.8,random:0.2"``;
            the weights are relative (normalised to shares; ``share_note`` says so when they do not sum to 1).
        clusters: k for k-means on the teacher embeddings (needed by ``cluster_border``).
        labels: optional per-item class labels: ``things`` (THINGS objects in one category) or a file
            (.npy/.npz/.txt, one label per item; negative = none), see ``fastalign.io.resolve_labels``.
        categories: optional (N, K) 0/1 multi-label category matrix for the category strategies
            (``within_category``, ``between_category``, ``category_border``): ``things`` (the 27 THINGS
            categories) or a file, read by ``fastalign.io.resolve_categories`` (the flag ``evaluate`` uses).
        transform: optional teacher transform (``fastalign.teacher.load_transform``); its calibrated
            temperature is the default ``temperature``.
        file_names: optional ``file_names.txt`` naming the N items, or ``things`` (copied into the store).
        val_num: number of validation triplets (0: no validation store).
        val_fraction: fraction of items held out for validation (item-disjoint splits).
        seed: the seed of everything random.
        resume: continue an interrupted run in ``out`` (the options must match).
        shard_size: triplets per store shard.
        chunk_size: triplets sampled and labelled at a time (bounds working memory).
        label_batch: triplets per similarity call (the kernel gathers 3 * label_batch * D values).
        sim_dtype: "float16" or "float32" storage of the similarities.
        with_probs: also store ``softmax(s / T)``.
        temperature: T for the probabilities (None: the transform's, else 1).
        similarity: "dot" or "cosine".
        weighting: label weighting of the strategies, "size" or "uniform".
        kmeans_iters: Lloyd iterations.
        kmeans_normalize: L2-normalise the teacher embeddings before clustering.
        device: torch device for k-means and labelling (None: cuda if available, else cpu).
        emb_dtype: dtype the teacher embeddings are held in on the device: "float32", "bfloat16"
            or "float16" (half the memory; k-means and similarities still accumulate in float32).
        backend: kernel backend for the similarities (None: default dispatch).
        histogram: write the teacher-entropy histogram PNG.
        progress: show a progress bar on stderr.
        rank, world_size: None reads ``$RANK``/``$WORLD_SIZE`` (torchrun), else 0/1.
        wait_timeout: seconds a rank waits for another's files (None = forever).
    """

    embeddings: str
    out: str
    num: int
    strategy: str = "cluster_border"
    clusters: int = 500
    labels: Optional[str] = None
    categories: Optional[str] = None
    transform: Optional[str] = None
    file_names: Optional[str] = None
    val_num: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    resume: bool = False
    shard_size: int = 1_000_000
    chunk_size: int = 65536
    label_batch: int = 4096
    sim_dtype: str = "float16"
    with_probs: bool = True
    temperature: Optional[float] = None
    similarity: str = "dot"
    weighting: str = "size"
    kmeans_iters: int = 25
    kmeans_normalize: bool = False
    device: Optional[str] = None
    emb_dtype: str = "float32"
    backend: Optional[str] = None
    histogram: bool = True
    progress: bool = True
    rank: Optional[int] = None
    world_size: Optional[int] = None
    wait_timeout: Optional[float] = 24 * 3600.0


def _int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_options(o: GenerateOptions) -> List[Tuple[str, float]]:
    """Validate options that need no file access; returns the parsed strategy mix."""
    _int("num", o.num, 1)
    _int("val_num", o.val_num, 0)
    _int("shard_size", o.shard_size, 1)
    _int("chunk_size", o.chunk_size, 1)
    _int("label_batch", o.label_batch, 1)
    _int("seed", o.seed, 0)
    _int("kmeans_iters", o.kmeans_iters, 0)
    mix = parse_strategy(o.strategy)
    if uses_clusters(mix):
        _int("clusters", o.clusters, 1)
    if any(n in ("between_class", "within_class", "class_border") for n, _ in mix) and not o.labels:
        raise ValueError(f"strategy {o.strategy!r} needs per-item class labels (--labels)")
    if uses_categories(mix) and not o.categories:
        raise ValueError(f"strategy {o.strategy!r} needs a category matrix (--categories FILE|things)")
    if o.sim_dtype not in SIM_DTYPES:
        raise ValueError(f"sim_dtype must be float16 or float32, got {o.sim_dtype!r}")
    if o.emb_dtype not in EMB_DTYPES:
        raise ValueError(f"emb_dtype must be one of {sorted(EMB_DTYPES)}, got {o.emb_dtype!r}")
    if o.similarity not in ("dot", "cosine"):
        raise ValueError(f"similarity must be dot or cosine, got {o.similarity!r}")
    if o.val_num and not 0 < o.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {o.val_fraction!r}")
    if o.temperature is not None and not (o.temperature > 0 and math.isfinite(o.temperature)):
        raise ValueError(f"temperature must be finite and > 0, got {o.temperature!r}")
    return mix


def share_note(strategy: str) -> Optional[str]:
    """A one-line note of the shares a mix's relative weights become when they do not sum to 1, else None."""
    weights = strategy_weights(strategy)
    total = sum(weights.values())
    if len(weights) < 2 or abs(total - 1.0) <= 1e-6:
        return None
    shares = ", ".join(f"{name} {w / total:.4g}" for name, w in weights.items())
    return f"note: strategy {strategy}: the weights sum to {total:g}, not 1; they are relative, so the shares are {shares}"


def content_options(o: GenerateOptions) -> Dict[str, Any]:
    """The options that determine the stores' content (recorded in ``run.json`` and every manifest)."""
    return {k: v for k, v in asdict(o).items() if k not in RUNTIME_OPTIONS + EXECUTION_OPTIONS}


def uses_clusters(mix: List[Tuple[str, float]]) -> bool:
    return any(s == "cluster_border" for s, _ in mix)


def uses_categories(mix: List[Tuple[str, float]]) -> bool:
    return any(s in CATEGORY_STRATEGIES for s, _ in mix)
