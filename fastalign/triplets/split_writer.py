"""Sampling and labelling one split into its store: the shards this rank owns, chunk by chunk.

Chunk ``c`` of shard ``h`` of split ``s`` is sampled from ``derive_rng(seed, s, h, c)``
alone and labelled by the teacher, so a shard's bytes depend only on the
options, never on which rank makes it or whether the run was interrupted
(see ``fastalign.triplets.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..common.progress import Progress
from ..common.seeds import derive_rng
from ..common.timing import StageTimer
from ..io.atomic import atomic_save_npy
from .label import LabelOptions, label_triplets
from .options import GenerateOptions
from .report import SplitSummary
from .sampling import TripletSampler, sample_chunk, split_counts
from .store import TripletStoreWriter
from .store.layout import INDEX_DTYPE, PROB_DTYPE, SIM_DTYPES

Mix = Sequence[Tuple[str, float]]


@dataclass
class SplitJob:
    """One split to write: ``index`` (0 train, 1 val) is part of every chunk's seed."""

    index: int
    name: str
    path: Path
    num: int
    sampler: TripletSampler


def _rotation(shard: int, chunk: int) -> int:
    """Which strategy gets the first rounding remainder in a chunk (spreads rounding evenly)."""
    return shard * 7919 + chunk


def _shard_rows(o: GenerateOptions, num: int, shard: int) -> int:
    return min(o.shard_size, num - shard * o.shard_size)


def strategy_counts(o: GenerateOptions, num: int, mix: Mix) -> Dict[str, int]:
    """Triplets per strategy: a pure function of the layout (the sum of the per-chunk splits)."""
    counts = {s: 0 for s, _ in mix}
    for h in range(-(-num // o.shard_size)):
        size = _shard_rows(o, num, h)
        for c_id, a in enumerate(range(0, size, o.chunk_size)):
            for s, c in zip(counts, split_counts(min(o.chunk_size, size - a), mix, _rotation(h, c_id))):
                counts[s] += c
    return counts


def _sample_shard(o: GenerateOptions, job: SplitJob, mix: Mix, shard: int, emb: torch.Tensor, lopts: LabelOptions,
                  timer: StageTimer, bar: Progress) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(indices, sims, probs) of one whole shard, sampled and labelled chunk by chunk."""
    size = _shard_rows(o, job.num, shard)
    idx = np.empty((size, 3), dtype=INDEX_DTYPE)
    sims = np.empty((size, 3), dtype=SIM_DTYPES[o.sim_dtype])
    probs = np.empty((size, 3), dtype=PROB_DTYPE) if o.with_probs else None
    for c, a in enumerate(range(0, size, o.chunk_size)):
        b = min(size, a + o.chunk_size)
        with timer("sample"):
            trip, _ = sample_chunk(job.sampler, mix, b - a, derive_rng(o.seed, job.index, shard, c), _rotation(shard, c))
        with timer("label"):
            lt, ls, lp = label_triplets(emb, trip, lopts)
        idx[a:b] = lt.numpy()
        sims[a:b] = ls.numpy()
        if probs is not None:
            probs[a:b] = lp.numpy()
        bar.update(b - a)
    return idx, sims, probs


def write_split(o: GenerateOptions, job: SplitJob, mix: Mix, emb: torch.Tensor, temperature: float,
                meta: Dict[str, object], rank: int, world: int, timer: StageTimer) -> SplitSummary:
    """Write (or resume) the shards of ``job`` this rank owns; rank 0 also finalises the store."""
    strategies: List[str] = [s for s, _ in mix]
    for s in strategies:
        job.sampler.check(s)
    n_shards = -(-job.num // o.shard_size)
    counts = strategy_counts(o, job.num, mix)
    meta = dict(meta, split=job.name, num=job.num, strategy_counts=counts, items=int(job.sampler.items.size))
    if rank == 0:
        # a .tmp- temp name: the store writer's resume deletes it if this write is killed
        atomic_save_npy(job.path / "items.npy", job.sampler.items, named_tmp=True)
    writer = TripletStoreWriter(job.path, num_items=int(emb.shape[0]), sim_dtype=o.sim_dtype, with_probs=o.with_probs,
                                shard_size=o.shard_size, meta=meta, resume=o.resume, rank=rank, world_size=world,
                                merge_timeout=o.wait_timeout)
    done = set(writer.completed_shard_ids)
    todo = [h for h in range(n_shards) if writer.owns(h) and h not in done]
    mine = sum(_shard_rows(o, job.num, h) for h in range(n_shards) if writer.owns(h))
    lopts = LabelOptions(temperature=temperature, similarity=o.similarity, with_probs=o.with_probs, backend=o.backend,
                         batch_size=o.label_batch)
    desc = f"{job.name} triplets" + (f" [rank {rank}/{world}]" if world > 1 else "")
    initial = mine - sum(_shard_rows(o, job.num, h) for h in todo)
    with Progress(mine, desc, o.progress, initial=initial, unit="trip", unit_scale=True) as bar:
        for h in todo:
            idx, sims, probs = _sample_shard(o, job, mix, h, emb, lopts, timer, bar)
            with timer("write"):
                writer.write_shard(h, idx, sims, probs)
        with timer("write"):
            writer.close()
    return SplitSummary(job.name, str(job.path), job.num, int(job.sampler.items.size), counts,
                        job.sampler.report(strategies), len(todo), len(done))
